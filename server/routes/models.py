"""``/v1/models`` in the OpenAI list shape, with our fields beside (the block size dial among them)."""

from __future__ import annotations

import dataclasses

from fastapi import APIRouter

from ..deps import OwnerDep, RegistryDep
from ..openapi import errors
from ..registry import ServedModel
from ..schemas import Modality, ModelCard, ModelCardDetails, ModelList

router = APIRouter(prefix="/v1", tags=["models"])


def card(s: ServedModel) -> ModelCard:
    return ModelCard(
        id=s.id,
        created=s.created,
        family=s.model.family,
        vocab_size=s.model.vocab_size,
        max_position=s.model.max_position,
        text=s.text,
        state_bytes=s.state_bytes,
        fingerprint=s.fingerprint,
        parameters=s.model.num_parameters(generation_only=True),
        default_block_size=s.model.default_block_size,
        observation_temperature=s.model.observation_temperature,
        block_curve=s.block_curve,
        modality=Modality.model_validate(dataclasses.asdict(s.model.modality)),
        card=ModelCardDetails.model_validate(s.card),
    )


@router.get("/models", responses=errors(401, 503))
async def list_models(registry: RegistryDep, owner: OwnerDep) -> ModelList:
    return ModelList(data=[card(s) for s in registry.models.values()])


@router.get("/models/{model_id}", responses=errors(401, 404, 503))
async def get_model(model_id: str, registry: RegistryDep, owner: OwnerDep) -> ModelCard:
    return card(registry.get(model_id))
