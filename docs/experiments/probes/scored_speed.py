"""Probe (lab material): a scored call (log-probabilities wanted) against the same call unscored, for the bundled
models at their served block sizes, batch 1, unprompted, one thread; best of 15 each, and whether the tokens agree.

docs/experiments/rounds-and-serving.md, forty-fifth session.  Run it under two builds (a worktree of the older code
on PYTHONPATH for one of them, as the lab notes do)::

    PYTHONPATH=. .venv/bin/python docs/experiments/probes/scored_speed.py
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from vssm import model

CHECKPOINTS = Path(__file__).resolve().parents[3] / "checkpoints"
NAMES = ("mnist-vssm", "mnist-vssm-prior16", "mnist-vssm-prior", "shakespeare-vssm", "shakespeare-vssm-prior")


def best(call, runs: int = 15) -> float:
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        call()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    torch.set_num_threads(1)
    for name in (*NAMES, "mnist-ar-ssm"):
        m = model.load_checkpoint(CHECKPOINTS / f"{name}.safetensors").freeze()
        T = 784 if name.startswith("mnist") else 256
        start = m.start(torch.zeros(1, 0, dtype=torch.long), [0])
        with torch.inference_mode():
            plain = lambda m=m, s=start, T=T: m.generate(s, T, resumable=False)  # noqa: E731
            scored = lambda m=m, s=start, T=T: m.generate_scored(s, T, resumable=False)  # noqa: E731
            for _ in range(3):
                plain(), scored()
            a, b = best(plain), best(scored)
            same = torch.equal(plain()[0], scored()[0])
        print(f"{name:24s} unscored {1e3 * a:6.2f} ms, scored {1e3 * b:6.2f} ms ({b / a:.1f}x); tokens equal: {same}")


if __name__ == "__main__":
    main()
