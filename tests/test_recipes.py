"""The shipped recipes (model/recipes.py): each bundled checkpoint was trained by its preset."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from vssm.model.checkpoint import build_model, current_config, load_checkpoint, read_metadata
from vssm.model.cli import build_parser, train_config
from vssm.model.recipes import IGNORED, RECIPES, comparable, recipe_of
from vssm.model.train import TrainConfig, model_config

CKPT = Path(__file__).resolve().parents[1] / "checkpoints"
BUNDLED = sorted(CKPT.glob("*.safetensors"))


def recorded_config(path: Path) -> dict:
    return json.loads(read_metadata(path)["train_config"])


def test_every_bundled_checkpoint_has_a_recipe_and_every_recipe_a_checkpoint():
    assert {p.stem for p in BUNDLED} == set(RECIPES)


@pytest.mark.parametrize("path", BUNDLED, ids=lambda p: p.stem)
def test_recorded_training_config_equals_the_preset(path):
    """Fields that cannot change the weights (model/recipes.py IGNORED, with the reasons) are left
    out; fields added to TrainConfig after the run count at their default; removed options must be off."""
    preset = TrainConfig.from_preset(path.stem)
    assert comparable(recorded_config(path)) == comparable(dataclasses.asdict(preset))
    assert recipe_of(recorded_config(path)) is RECIPES[path.stem]
    # and the architecture the preset builds is the checkpoint's
    meta = read_metadata(path)
    model = build_model(preset.family, model_config(preset))
    built = dataclasses.asdict(model.config)
    # model fields added after a run (e.g. decoder_tokens) count at their default, as loading reads them
    recorded = dataclasses.asdict(type(model.config)(**current_config(meta["family"], json.loads(meta["config"]))))
    assert built == recorded


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
        recipe_ratio = RECIPES[path.stem].observation_temperature
        assert load_checkpoint(path).observation_temperature == recipe_ratio, path.stem


def test_a_run_is_matched_to_its_recipe_only_if_it_is_that_recipe():
    cfg = dataclasses.asdict(TrainConfig.from_preset("mnist-ar-gru", out="elsewhere", device="cpu"))
    assert recipe_of({**cfg, "preset": ""}) is RECIPES["mnist-ar-gru"]  # IGNORED fields differ: still it
    assert {"out", "device"} <= IGNORED
    assert recipe_of({**cfg, "lr": 1e-3}) is None
    assert recipe_of({**cfg, "free_bits": 0.1}) is None  # a removed option was on
    assert recipe_of(dataclasses.asdict(TrainConfig())) is None  # the defaults are no shipped recipe
    # started from one preset, with flags that make it another recipe: that recipe
    other = dataclasses.asdict(TrainConfig.from_preset("mnist-ar-ssm", out="elsewhere"))
    assert recipe_of({**other, "preset": "mnist-ar-gru"}) is RECIPES["mnist-ar-ssm"]
