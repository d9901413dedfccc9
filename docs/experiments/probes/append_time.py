"""Probe (lab material): how long a 256-token append takes for the bundled patch models, at batch 1 and 8.

docs/experiments/rounds-and-serving.md, fortieth session (logs/s40-patch-append-ab.txt).  Medians of 30 after 5
warm-up calls, one thread, the model frozen as the server holds it.  Run it under two builds by turns (an older
build's worktree on PYTHONPATH first) for a side-by-side comparison::

    PYTHONPATH=. .venv/bin/python docs/experiments/probes/append_time.py
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import torch

from vssm import model

CHECKPOINTS = Path(__file__).resolve().parents[3] / "checkpoints"


def main() -> None:
    torch.set_num_threads(1)
    for name in ("mnist-vssm-prior16", "mnist-vssm-prior"):
        m = model.load_checkpoint(CHECKPOINTS / f"{name}.safetensors").freeze()
        for B in (1, 8):
            x = torch.randint(0, 2, (B, 256), generator=torch.Generator().manual_seed(0))
            with torch.inference_mode():
                s = m.start(torch.zeros(B, 0, dtype=torch.long), list(range(B)))
                for _ in range(5):
                    m.append(s, x)
                times = []
                for _ in range(30):
                    t = time.perf_counter()
                    m.append(s, x)
                    times.append(time.perf_counter() - t)
            print(f"{name} append 256 B={B}: {statistics.median(times) * 1e3:.2f} ms", flush=True)


if __name__ == "__main__":
    main()
