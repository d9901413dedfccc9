"""The models this replica serves: every checkpoint in a directory, loaded once at start-up."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from model import GenState, SequenceModel, load_checkpoint
from model.checkpoint import read_metadata

from .errors import APIError, bad_request, not_found

log = logging.getLogger(__name__)

TEXT_DATASETS = {"shakespeare"}  # byte-level text: prompts and completions are UTF-8 at the API


@dataclass
class ServedModel:
    id: str  # the checkpoint's file stem, e.g. "mnist-vssm"
    model: SequenceModel
    text: bool  # whether the API speaks text (UTF-8 bytes) for this model
    created: int  # checkpoint file mtime, unix seconds
    state_bytes: int  # serialised size of one session's state at position 0
    fingerprint: str = ""  # the weights' hash, taken once at load: served weights never change

    def __post_init__(self) -> None:
        # hashing is cached by the model, but even its cache check walks every parameter
        # (~0.2 ms): too much to pay on the event loop for every request
        self.fingerprint = self.fingerprint or self.model.fingerprint

    def check_state(self, state: GenState) -> None:
        """``model.check_state`` against the fingerprint taken at load."""
        self.model.check_state(state, self.fingerprint)

    def encode(self, prompt: str | list[int], param: str = "prompt") -> list[int]:
        """Prompt -> token ids, validated against the vocabulary."""
        if isinstance(prompt, str):
            if not self.text:
                if prompt == "":
                    return []
                raise bad_request("text_not_supported", f"model {self.id} takes token lists, not text", param)
            return list(prompt.encode("utf-8"))
        V = self.model.vocab_size
        bad = next((t for t in prompt if t >= V), None)
        if bad is not None:
            raise bad_request("invalid_token", f"token {bad} is outside 0..{V - 1} for model {self.id}", param)
        return list(prompt)

    def decode(self, tokens: list[int]) -> str:
        return bytes(tokens).decode("utf-8", errors="replace") if self.text else ""

    def check_room(self, position: int, n: int, param: str = "max_tokens") -> None:
        limit = self.model.max_position
        if limit is not None and position + n > limit:
            raise bad_request(
                "max_position_exceeded",
                f"position {position} + {n} tokens exceeds model {self.id}'s maximum position {limit}",
                param,
            )


class Registry:
    def __init__(self, models: dict[str, ServedModel]) -> None:
        self.models = models

    @classmethod
    def load(cls, directory: Path, device: str = "auto") -> Registry:
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        models = {}
        paths = sorted(Path(directory).glob("*.safetensors"))
        if not paths:
            log.warning("no checkpoints in %s", directory)
        for path in paths:
            m = load_checkpoint(path, device=device)
            text = read_metadata(path).get("dataset") in TEXT_DATASETS
            empty = m.start(torch.zeros(1, 0, dtype=torch.long), 0)
            models[path.stem] = ServedModel(path.stem, m, text, int(path.stat().st_mtime), len(empty.to_bytes()))
            log.info("serving %s (%s on %s)", path.stem, m.family, device)
        return cls(models)

    def get(self, model_id: str) -> ServedModel:
        try:
            return self.models[model_id]
        except KeyError:
            raise not_found("model_not_found", f"model {model_id!r} is not served here") from None

    def for_session(self, model_id: str, fingerprint: str) -> ServedModel:
        """The model a stored session needs; 409 when this replica cannot resume it faithfully."""
        served = self.models.get(model_id)
        if served is None:
            raise APIError(409, "state_incompatible", f"model {model_id!r} of this session is not served here")
        if served.fingerprint != fingerprint:
            raise APIError(
                409,
                "state_incompatible",
                f"session state was made by weights {fingerprint}, model {model_id} now has {served.fingerprint}",
            )
        return served
