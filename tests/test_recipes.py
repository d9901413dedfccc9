"""The shipped recipes (model/recipes.py): each bundled checkpoint was trained by its preset."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from vssm.model.checkpoint import build_model, current_config, load_checkpoint, read_metadata
from vssm.model.cli import build_parser, train_config
from vssm.model.recipes import RECIPES
from vssm.model.train import TrainConfig, model_config

CKPT = Path(__file__).resolve().parents[1] / "checkpoints"
BUNDLED = sorted(CKPT.glob("*.safetensors"))

# TrainConfig fields a recorded config may differ in from its preset, and why each cannot change
# the weights: where the run was written, where the same data files were read from, the device
# ("auto": every bundled run was on the CPU), and the preset's own name (runs made before presets
# existed do not record it).  Everything else, validation and checkpoint cadence included (a
# validation draws from the global RNG that training's Gumbel noise also uses), must be equal.
IGNORED = {"out", "data_dir", "device", "preset"}
# Options removed from the trainer (docs/experiments/README.md, "Removed options") with their off
# value: a recorded config must have them off, or the checkpoint was not made by any preset.
REMOVED = {"free_bits": 0.0, "rao_samples": 0, "estimator": "gumbel", "estimates_grad": "all", "unprompted": 0.0}


def recorded_config(path: Path) -> dict:
    """A bundled checkpoint's ``train_config``, as TrainConfig fields: removed options checked off
    and dropped, and fields added to TrainConfig after the run at their default (the code of the
    run behaved as that default: no average, no block training, no CPU budget)."""
    raw = json.loads(read_metadata(path)["train_config"])
    for name, off in REMOVED.items():
        assert raw.pop(name, off) == off, f"{path.stem} used the removed option {name}"
    defaults = dataclasses.asdict(TrainConfig())
    assert set(raw) <= set(defaults), set(raw) - set(defaults)
    return {**defaults, **raw}


def comparable(fields: dict) -> dict:
    out = {k: v for k, v in fields.items() if k not in IGNORED}
    out["overrides"] = json.loads(out["overrides"] or "{}")  # JSON text: key order is not the recipe
    return out


def test_every_bundled_checkpoint_has_a_recipe_and_every_recipe_a_checkpoint():
    assert {p.stem for p in BUNDLED} == set(RECIPES)


@pytest.mark.parametrize("path", BUNDLED, ids=lambda p: p.stem)
def test_recorded_training_config_equals_the_preset(path):
    preset = TrainConfig.from_preset(path.stem)
    assert comparable(recorded_config(path)) == comparable(dataclasses.asdict(preset))
    # and the architecture the preset builds is the checkpoint's
    meta = read_metadata(path)
    built = dataclasses.asdict(build_model(preset.family, model_config(preset)).config)
    assert built == current_config(meta["family"], json.loads(meta["config"]))


def test_preset_flag_gives_the_recipe_and_explicit_flags_override_it():
    parser, _ = build_parser()
    cfg = train_config(parser.parse_args(["train", "--preset", "mnist-vssm-blocks"]))
    assert cfg == TrainConfig.from_preset("mnist-vssm-blocks")
    assert (cfg.out, cfg.budget_cpu_minutes, cfg.lr) == ("runs/mnist-vssm-blocks", 39.0, 2e-2)
    args = ["train", "--preset", "mnist-vssm", "--out", "runs/x", "--lr", "3e-3", "--overrides", '{"width": 32}']
    cfg = train_config(parser.parse_args(args))
    assert (cfg.preset, cfg.out, cfg.lr, cfg.tau, cfg.grad_clip) == ("mnist-vssm", "runs/x", 3e-3, 0.5, 1000.0)
    assert json.loads(cfg.overrides) == {"posterior": "smoothing", "width": 32}  # merged into the recipe's
    # a flag given at its default value still overrides the recipe
    assert train_config(parser.parse_args(["train", "--preset", "mnist-vssm", "--tau", "1.0"])).tau == 1.0
    # without a preset, the TrainConfig defaults
    assert train_config(parser.parse_args(["train"])) == TrainConfig()
    with pytest.raises(SystemExit, match="preset must be one of"):
        train_config(parser.parse_args(["train", "--preset", "mnist-vsm"]))


def test_recipes_name_their_serving_block_size():
    for path in BUNDLED:
        assert load_checkpoint(path).default_block_size == RECIPES[path.stem].default_block_size, path.stem
