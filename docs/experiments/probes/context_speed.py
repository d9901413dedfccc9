"""Probe (lab material): what the latent prior's context features cost a served image, side by side.

docs/experiments/blocks.md, twenty-first session.  Two checkpoints of the same shape but for
``prior_context`` (run e without, run g with 16 features), each a whole unprompted image at
block 28, batch 1, one thread, beside the AR-SSM; the three alternate, best of 9 each::

    .venv/bin/python docs/experiments/probes/context_speed.py runs/s21/px-e/model.safetensors \\
        checkpoints/mnist-vssm-prior.safetensors
"""

from __future__ import annotations

import sys
import time

import torch

from vssm.model.checkpoint import load_checkpoint


def main(paths: list[str]) -> None:
    torch.set_num_threads(1)
    models = {"AR-SSM": load_checkpoint("checkpoints/mnist-ar-ssm.safetensors").eval()}
    models.update({p: load_checkpoint(p).eval() for p in paths})
    starts = {n: m.start(torch.zeros(1, 0, dtype=torch.long), [0]) for n, m in models.items()}
    best = dict.fromkeys(models, float("inf"))
    with torch.no_grad():
        for _ in range(9):
            for name, m in models.items():
                t0 = time.perf_counter()
                m.generate(starts[name], 784, resumable=False, block_size=28)
                best[name] = min(best[name], time.perf_counter() - t0)
    for name, s in best.items():
        print(f"{name}: {s * 1e3:.2f} ms an image, {best['AR-SSM'] / s:.2f}x the AR-SSM")


if __name__ == "__main__":
    main(sys.argv[1:])
