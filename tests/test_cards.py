"""docs/models.md is the bundled models' cards (model/card.py), regenerated, never hand-edited."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_model_cards_page_is_fresh_and_has_every_bundled_model():
    spec = importlib.util.spec_from_file_location("model_cards", ROOT / "scripts" / "model_cards.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    text = module.render(ROOT / "checkpoints")
    assert (ROOT / "docs" / "models.md").read_text() == text, "run scripts/model_cards.py"
    for path in (ROOT / "checkpoints").glob("*.safetensors"):
        assert f"## `{path.stem}`" in text and f"--preset {path.stem}`" in text


def test_the_served_temperature_note_says_what_the_judged_samples_show():
    """Below observation temperature 1 the card says samples are cleaner than the model's own, unless the
    eval judged the served samples and the same seeds at temperature 1 alike (a decoder that copies)."""
    from vssm.model.card import model_card

    judged = {"confident_share": 0.7, "class_entropy_nats": 2.2, "ar_judge_nats": 70.0}
    meta = {"observation_temperature": "0"}

    def note(own: dict) -> str:
        row = {
            "block_size": 28,
            "nll": {"bound": "iw", "samples": 8, "nats_per_sequence": 60.0, "bits_per_token": 0.11},
            "generation_seconds": {"length": 784, "batch_1": 0.006, "batch_32": 0.2},
            "samples": {**judged, "images": 1000, "observation_temperature": 0.0},
        }
        evaluation = {"family": "vssm", "block_curve": [{**row, "samples_observation_temperature_1": own}]}
        card = model_card("x", meta, evaluation, 28)
        return next(x for x in card["limitations"] if x.startswith("Served at observation temperature 0"))

    assert "judge exactly as the model's own" in note({**judged, "images": 1000})
    assert "cleaner and less varied" in note({**judged, "images": 1000, "ar_judge_nats": 90.0})
