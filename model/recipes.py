"""The shipped recipes: one per bundled checkpoint, architecture and training settings together.

``vssm train --preset NAME --out runs/NAME`` reproduces ``checkpoints/NAME.safetensors`` (flags given
beside ``--preset`` override its values; ``--overrides`` merges into its model overrides).  Each
recipe is a set of :class:`model.train.TrainConfig` fields; what it leaves out keeps the
TrainConfig default.  ``tests/test_recipes.py`` checks every bundled checkpoint's recorded
``train_config`` against its recipe, so the two cannot drift apart.

How the recipes were chosen is in docs/experiments/ (the one-pass campaign for the one-pass
VSSMs and the baselines, blocks.md for ``mnist-vssm-blocks``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

__all__ = ["RECIPES", "Recipe", "recipe_fields"]

# Every bundled model was trained with these: batch 16, one thread on the project's shared 2-core
# machine (the budgets are wall-clock or CPU minutes of that thread), a 200-step KL warm-up
# (read by the VSSM only), validation and a resumable checkpoint every 250 steps.
COMMON: dict[str, Any] = dict(
    size="small", batch_size=16, threads=1, kl_warmup_steps=200, val_every=250, ckpt_every=250
)
# The VSSM's tuning (docs/experiments/, the one-pass campaign): a fixed Gumbel temperature of 0.5
# (tau = tau_min), a gradient clip of 1,000 (a clip at 1 rescaled every step) and a high learning rate.
VSSM_TUNING: dict[str, Any] = dict(family="vssm", tau=0.5, grad_clip=1000.0)


@dataclass(frozen=True)
class Recipe:
    name: str  # the checkpoint it reproduces: checkpoints/NAME.safetensors
    summary: str  # one line: what the model is for
    train: dict[str, Any]  # TrainConfig fields besides COMMON (model overrides as a dict under "overrides")
    default_block_size: int | None = None  # `vssm set-block-size` after training (None: one pass)
    note: str = ""  # how the bundled file's run differs from running the recipe once, if it does


def recipe_fields(recipe: Recipe) -> dict[str, Any]:
    """The TrainConfig fields of ``recipe`` (``overrides`` as its JSON string)."""
    fields = {**COMMON, **recipe.train}
    if isinstance(fields.get("overrides"), dict):
        fields["overrides"] = json.dumps(fields["overrides"])
    return fields


_RECIPES = [
    Recipe(
        "mnist-vssm",
        "VSSM for binarised MNIST with the best unprompted likelihood (smoothing posterior)",
        dict(dataset="mnist", **VSSM_TUNING, lr=2e-2, budget_minutes=40.0, overrides={"posterior": "smoothing"}),
    ),
    Recipe(
        "mnist-vssm-split",
        "VSSM for binarised MNIST trained for prompted completions (split posterior)",
        dict(dataset="mnist", **VSSM_TUNING, lr=2e-2, budget_minutes=40.0, overrides={"posterior": "split"}),
        default_block_size=28,
    ),
    Recipe(
        "mnist-vssm-blocks",
        "VSSM for binarised MNIST trained for block sampling, served at block 28",
        dict(
            dataset="mnist",
            **VSSM_TUNING,
            lr=2e-2,
            budget_minutes=0.0,
            budget_cpu_minutes=39.0,
            block_sizes="2,4,8,16,16,28,28,56,56,112,784",
            overrides={"posterior": "smoothing", "dec_layers": 4, "par_layers": 3},
        ),
        default_block_size=28,
        note=(
            "The bundled file was trained in two runs: 40 wall-clock minutes (--budget-minutes 40), of which "
            "the shared machine gave 21 CPU minutes, then resumed with --budget-minutes 0 --budget-cpu-minutes 39 "
            "to the CPU time the baselines had; the resume restarted the cosine schedule "
            "(docs/experiments/blocks.md). Its recorded train_config is the resumed run's, which this recipe "
            "is; run once from scratch, it spends the same 39 CPU minutes on one cosine schedule."
        ),
    ),
    Recipe(
        "mnist-ar-ssm",
        "Autoregressive S4D baseline for binarised MNIST (exact likelihood, token by token)",
        dict(dataset="mnist", family="ar-ssm", lr=6e-3, budget_minutes=40.0, ema_decay=0.999),
    ),
    Recipe(
        "mnist-ar-transformer",
        "Autoregressive transformer baseline for binarised MNIST",
        dict(dataset="mnist", family="ar-transformer", lr=6e-3, budget_minutes=40.0),
    ),
    Recipe(
        "mnist-ar-gru",
        "Autoregressive GRU baseline for binarised MNIST",
        dict(dataset="mnist", family="ar-gru", lr=6e-3, budget_minutes=40.0),
    ),
    Recipe(
        "shakespeare-vssm",
        "VSSM for tiny Shakespeare bytes (smoothing posterior)",
        dict(dataset="shakespeare", **VSSM_TUNING, lr=1e-2, budget_minutes=15.0, overrides={"posterior": "smoothing"}),
    ),
    Recipe(
        "shakespeare-ar-ssm",
        "Autoregressive S4D baseline for tiny Shakespeare bytes",
        dict(dataset="shakespeare", family="ar-ssm", lr=6e-3, budget_minutes=15.0),
    ),
    Recipe(
        "shakespeare-ar-transformer",
        "Autoregressive transformer baseline for tiny Shakespeare bytes (256-byte context)",
        dict(dataset="shakespeare", family="ar-transformer", lr=6e-3, budget_minutes=15.0),
    ),
    Recipe(
        "shakespeare-ar-gru",
        "Autoregressive GRU baseline for tiny Shakespeare bytes",
        dict(dataset="shakespeare", family="ar-gru", lr=6e-3, budget_minutes=15.0),
    ),
]
RECIPES: dict[str, Recipe] = {r.name: r for r in _RECIPES}
