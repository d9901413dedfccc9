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
