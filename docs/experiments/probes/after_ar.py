"""Probe (lab material): block-16 images of two checkpoints, each timed right after an AR-SSM image and again
back to back, in one process, by turns.

docs/experiments/rounds-and-serving.md, thirty-third session.  The benchmark times each VSSM image right after an
AR-SSM image (medians of interleaved runs); this splits what that order costs from the image itself.  Batch 1 and
32, one thread, served settings, medians of REPS rounds; the ratios are the AR-SSM's median over each::

    PYTHONPATH=. .venv/bin/python docs/experiments/probes/after_ar.py NEW_CKPT OLD_CKPT [REPS]
"""

from __future__ import annotations

import gc
import statistics
import sys
import time

import torch

from vssm import model


def timed(m: model.SequenceModel, state: model.GenState) -> float:
    """Seconds for one unresumable image of ``m`` from ``state``."""
    t = time.perf_counter()
    m.generate(state, 784, resumable=False)
    return time.perf_counter() - t


@torch.no_grad()
def main(new: str, old: str, reps: int) -> None:
    torch.set_num_threads(1)
    ar = model.load_checkpoint("checkpoints/mnist-ar-ssm.safetensors").freeze()
    vssms = {"new": model.load_checkpoint(new).freeze(), "old": model.load_checkpoint(old).freeze()}
    for B in (1, 32):
        empty, seeds = torch.zeros(B, 0, dtype=torch.long), list(range(B))
        ar_start = ar.start(empty, seeds)
        starts = {k: m.start(empty, seeds) for k, m in vssms.items()}
        times: dict[str, list[float]] = {"ar": []}
        for k, m in vssms.items():
            m.generate(starts[k], 784, resumable=False)  # warm-up
            times[k] = []
            times[f"{k} back to back"] = []
        gc.collect()
        gc.disable()
        for _ in range(reps):
            for k, m in vssms.items():
                times["ar"].append(timed(ar, ar_start))
                times[k].append(timed(m, starts[k]))
                times[f"{k} back to back"].append(timed(m, starts[k]))
        gc.enable()
        med = {k: 1e3 * statistics.median(v) for k, v in times.items()}
        ms = ", ".join(f"{k} {v:.2f}" for k, v in med.items())
        ratios = ", ".join(f"{k} {med['ar'] / v:.2f}x" for k, v in med.items() if k != "ar")
        print(f"batch {B}: medians ms: {ms}; AR-SSM over each: {ratios}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 11)
