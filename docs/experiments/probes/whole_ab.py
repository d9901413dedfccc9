"""Probe (lab material): whole sequences of bundled checkpoints, interleaved, medians of 15 calls, one thread.

docs/experiments/rounds-and-serving.md, thirty-ninth session.  Each argument is ``NAME:T:B[:BLOCK]`` (a bundled
checkpoint, the tokens, the batch, the block size; none: its served default), an unprompted call that keeps no
state.  Run it under two builds by turns, a worktree of the older code on PYTHONPATH for one of them (the lab
notes' way), e.g.::

    .venv/bin/python docs/experiments/probes/whole_ab.py mnist-vssm:784:1 mnist-ar-ssm:784:1 shakespeare-vssm:256:1
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from vssm import model

CHECKPOINTS = Path(__file__).resolve().parents[3] / "checkpoints"


def main() -> None:
    torch.set_num_threads(1)
    loaded: dict[str, model.SequenceModel] = {}
    calls: dict[str, Callable[[], object]] = {}
    for spec in sys.argv[1:]:
        name, T, B, *rest = spec.split(":")
        block = int(rest[0]) if rest else None
        m = loaded.setdefault(name, model.load_checkpoint(CHECKPOINTS / f"{name}.safetensors").freeze())
        start = m.start(torch.zeros(int(B), 0, dtype=torch.long), list(range(int(B))))
        calls[spec] = lambda m=m, s=start, n=int(T), c=block: m.generate(s, n, resumable=False, block_size=c)
    times: dict[str, list[float]] = {k: [] for k in calls}
    with torch.inference_mode():
        for f in calls.values():
            f(), f()
        for _ in range(15):
            for k, f in calls.items():
                t0 = time.perf_counter()
                f()
                times[k].append(time.perf_counter() - t0)
    for k, v in times.items():
        print(f"{k:32s} median {1e3 * statistics.median(v):8.3f} ms")


if __name__ == "__main__":
    main()
