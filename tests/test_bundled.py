"""The bundled checkpoints load, match their eval JSON, and the required models are there."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vssm.model import load_checkpoint
from vssm.model.checkpoint import read_metadata

CKPT = Path(__file__).resolve().parents[1] / "checkpoints"
BUNDLED = sorted(CKPT.glob("*.safetensors"))
REQUIRED = {"mnist-vssm", "shakespeare-vssm", "mnist-ar-ssm", "mnist-ar-transformer", "mnist-ar-gru"}


def test_required_models_are_bundled():
    assert {p.stem for p in BUNDLED} >= REQUIRED


@pytest.mark.parametrize("path", BUNDLED, ids=lambda p: p.stem)
def test_bundled_checkpoint_loads_and_matches_its_eval(path):
    m = load_checkpoint(path)
    meta = read_metadata(path)
    result = json.loads(path.with_suffix(".json").read_text())
    assert result["fingerprint"] == m.fingerprint and result["family"] == m.family
    assert result["dataset"] == meta["dataset"] and int(meta["train_steps"]) == result["training"]["steps"]
    assert path.stat().st_size < 5 * 1024 * 1024  # small enough to bundle
    family, dataset = m.family, meta["dataset"]
    # DATASET-FAMILY, or DATASET-FAMILY-VARIANT for a second recipe of one family (mnist-vssm-split)
    assert path.stem == f"{dataset}-{family}" or path.stem.startswith(f"{dataset}-{family}-")


@pytest.mark.parametrize("path", BUNDLED, ids=lambda p: p.stem)
def test_bundled_checkpoint_knows_what_its_tokens_are(path):
    """Saved before the modality field: the loader derives it from the dataset they record."""
    m = load_checkpoint(path)
    if path.stem.startswith("mnist"):
        assert (m.modality.kind, m.modality.shape) == ("image", (28, 28))
    else:
        assert (m.modality.kind, m.modality.encoding) == ("text", "utf-8")
