"""Probe (lab material): a whole MNIST image from pixel-latent VSSMs' shapes beside the AR-SSM's.

docs/experiments/blocks.md, twentieth session.  Random weights (they time as trained ones do), one
thread, batch 1, unprompted; each block size timed right after the AR-SSM, best of 7 each::

    .venv/bin/python docs/experiments/probes/pixel_prior_speed.py
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from vssm import model
from vssm.model.presets import preset_config

# one latent of 2 classes (the pixel), a 1-block decoder that copies it, the latent prior's widths
PIXEL = dict(dec_layers=1, n_latents=1, n_classes=2, posterior="smoothing")
VARIANTS = {
    "par 4, R 128, M 64": dict(PIXEL, par_layers=4, prior_width=128, prior_hidden=64),
    "par 5, R 64, M 256": dict(PIXEL, par_layers=5, prior_width=64, prior_hidden=256),
    "par 6, R 64, M 128": dict(PIXEL, par_layers=6, prior_width=64, prior_hidden=128),
    "par 4, R 64, M 256": dict(PIXEL, par_layers=4, prior_width=64, prior_hidden=256),
    "par 4, R 64, M 384": dict(PIXEL, par_layers=4, prior_width=64, prior_hidden=384),
}


def best_ms(fn: Callable[[], object], repeats: int = 7) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best * 1e3


@torch.no_grad()
def main() -> None:
    torch.set_num_threads(1)
    base = preset_config("mnist", "vssm", "small")
    ar = model.build_model("ar-ssm", preset_config("mnist", "ar-ssm", "small")).eval()
    ar_start = ar.start(torch.zeros(1, 0, dtype=torch.long), [0])
    print(f"AR-SSM: {ar.num_parameters(generation_only=True):,} generation parameters")
    for name, overrides in VARIANTS.items():
        m = model.build_model("vssm", {**base, **overrides}).eval()
        m.observation_temperature = 0.0  # as served: the decoder copies its latents
        start = m.start(torch.zeros(1, 0, dtype=torch.long), [0])
        print(f"{name}: {m.num_parameters(generation_only=True):,} generation parameters")
        for c in (28, 112, 784):
            m.generate(start, 784, resumable=False, block_size=c)  # warm-up
            a = best_ms(lambda: ar.generate(ar_start, 784, resumable=False))
            b = best_ms(lambda c=c, m=m, s=start: m.generate(s, 784, resumable=False, block_size=c))
            print(f"  block {c}: AR-SSM {a:.2f} ms, VSSM {b:.2f} ms, speed-up {a / b:.2f}x")


if __name__ == "__main__":
    main()
