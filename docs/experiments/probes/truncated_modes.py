"""Probe (lab material): what fewer SSM modes would buy in speed, before training a model that has them.

docs/experiments/blocks.md, thirty-third session.  Writes copies of a VSSM checkpoint whose every S4D layer keeps
only its first N modes (``A_log``, ``A_imag`` and ``C`` cut to N; ``state_size`` N), with the same served block
and observation temperature, for ``patch_speed.py`` to time beside the AR-SSM.  The copies draw other images than
the checkpoint (their weights are cut, not trained), so they stand for a model with N modes in time only; the
share of rounds that skip the pass over absorbed latents, which depends on the weights, is printed beside each::

    PYTHONPATH=. .venv/bin/python docs/experiments/probes/truncated_modes.py CKPT OUT_DIR 16 8
    PYTHONPATH=.:docs/experiments/probes .venv/bin/python docs/experiments/probes/patch_speed.py CKPT OUT_DIR/n*
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

from vssm import model
from vssm.model.checkpoint import build_model, save_checkpoint

MODE_AXIS_PARAMS = ("ssm.A_log", "ssm.A_imag", "ssm.C")  # (H, N) twice and (H, N, 2): modes on axis 1


def main(src: str, out_dir: str, sizes: list[int]) -> None:
    full = model.load_checkpoint(src)
    for N in sizes:
        if not 2 <= N <= full.config.state_size:
            raise SystemExit(f"N must be in 2..{full.config.state_size}, got {N}")
        cut = build_model(full.family, {**dataclasses.asdict(full.config), "state_size": N})
        weights = {k: v[:, :N].clone() if k.endswith(MODE_AXIS_PARAMS) else v for k, v in full.state_dict().items()}
        cut.load_state_dict(weights, strict=True)
        cut.default_block_size = full.default_block_size
        cut.observation_temperature = full.observation_temperature
        cut.modality = full.modality
        path = save_checkpoint(cut, Path(out_dir) / f"n{N}.safetensors")
        print(f"{path}: {N} modes, {cut.num_parameters(generation_only=True):,} generation parameters")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], [int(a) for a in sys.argv[3:]])
