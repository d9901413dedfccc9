"""Size presets per dataset, with baselines matched to the VSSM's generation-time parameters.

The fair comparison (issue: same budget, parameters within 10%) counts for the VSSM only the
networks it runs at generation time: decoder + partial encoder.  Each baseline keeps its own
depth and gets the width whose parameter count is closest to that target.
"""

from __future__ import annotations

from typing import Any

from .checkpoint import build_model

__all__ = ["LATENT_SHAPE", "PRESETS", "matched_width", "preset_config"]

# VSSM configs per (dataset, size); baselines are derived by matching.  The small presets spend
# the generation-time budget on the decoder (6 blocks) rather than the partial encoder (1): for
# one-pass sampling the decoder must rebuild the past from latents alone, and at equal parameters
# this beat 4 + 3 by 5 nats in a 10-minute MNIST ablation (docs/experiments/, the one-pass
# campaign).  The encoder is not run at generation time; one block of it trains 25% more steps in
# a budget and won a second ablation by 2.6 nats.
PRESETS: dict[tuple[str, str], dict[str, Any]] = {
    ("mnist", "tiny"): dict(width=16, state_size=8, enc_layers=1, dec_layers=2, par_layers=1, n_latents=2, n_classes=8),
    ("mnist", "small"): dict(
        width=64, state_size=32, enc_layers=1, dec_layers=6, par_layers=1, n_latents=2, n_classes=32
    ),
    ("shakespeare", "tiny"): dict(
        width=16, state_size=8, enc_layers=1, dec_layers=2, par_layers=1, n_latents=2, n_classes=8
    ),
    ("shakespeare", "small"): dict(
        width=96, state_size=32, enc_layers=1, dec_layers=6, par_layers=1, n_latents=2, n_classes=32
    ),
}
DATA_FIELDS = {
    "mnist": dict(vocab_size=2, max_position=784),
    "mnist8": dict(vocab_size=256, max_position=784),
    "cifar10": dict(vocab_size=256, max_position=3072),
    "shakespeare": dict(vocab_size=256, max_position=None),
}
# Depth of each baseline; width is matched.  (layers, width step)
BASELINE_SHAPE = {"ar-ssm": (6, 4), "ar-gru": (2, 2), "ar-transformer": (3, 8)}
# The latent-variable baselines keep the VSSM's latent space (Z, K) and these fields; width is
# matched.  (fixed fields, width step)  The TVAE spends its depth on the decoder as the VSSM does
# (3 blocks + 1 in the partial encoder); its learned positions are a large share of its count at
# T = 784 (2 x 784 x H), which leaves it narrow.  The VRNN has one GRU and MLPs of one hidden
# layer; every one of its parameters runs when serving (model/vrnn.py), so all of them count.
LATENT_SHAPE: dict[str, tuple[dict[str, Any], int]] = {
    "tvae": (dict(heads=4, enc_layers=1, dec_layers=3, par_layers=1), 4),
    "vrnn": ({}, 2),
}


def _count(family: str, config: dict[str, Any]) -> int:
    return build_model(family, config).num_parameters(generation_only=True)


def matched_width(family: str, fixed: dict[str, Any], target: int) -> dict[str, Any]:
    """``fixed`` plus the ``width`` (on the family's grid) whose parameter count is closest to ``target``."""
    _, step = BASELINE_SHAPE[family] if family in BASELINE_SHAPE else LATENT_SHAPE[family]
    best = None
    for width in range(step, 1025, step):
        n = _count(family, {**fixed, "width": width})
        if best is None or abs(n - target) < abs(best[1] - target):
            best = (width, n)
        if n > target:
            break
    assert best is not None
    return {**fixed, "width": best[0]}


def preset_config(dataset: str, family: str, size: str, seq_len: int | None = None) -> dict[str, Any]:
    """The config dict of ``family`` at ``size`` for ``dataset``; text models need ``seq_len``."""
    key = ("mnist" if dataset in ("mnist", "mnist8", "cifar10") else dataset, size)
    if key not in PRESETS:
        known = ", ".join(sorted({s for _, s in PRESETS}))
        raise ValueError(f"no preset {size!r} for {dataset} (known sizes: {known})")
    data = dict(DATA_FIELDS[dataset])
    vssm = {**PRESETS[key], **data}
    if family == "vssm":
        return vssm
    target = _count("vssm", vssm)
    if family in LATENT_SHAPE:
        latent = {**data, **LATENT_SHAPE[family][0], "n_latents": vssm["n_latents"], "n_classes": vssm["n_classes"]}
        if family == "tvae":  # learned positions: the data's length, or the training window for text
            latent["max_position"] = data["max_position"] or seq_len or 256
        return matched_width(family, latent, target)
    layers, _ = BASELINE_SHAPE[family]
    fixed: dict[str, Any] = {**data, "layers": layers}
    if family == "ar-ssm":
        fixed["state_size"] = vssm["state_size"]
    if family == "ar-transformer":
        fixed["heads"] = 4
        # a transformer needs a finite context: the data's length, or the training window for text
        fixed["max_position"] = data["max_position"] or seq_len or 256
    return matched_width(family, fixed, target)
