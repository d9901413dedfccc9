"""Probe (lab material): microseconds per row-token of a large unprompted VSSM call against the rows x
steps of each pass (``VSSM.row_block_tokens`` per thread), with the recurrence kernel and without.

docs/experiments/rounds-and-serving.md, twenty-fifth session.  32 rows of the benchmark's one-pass VSSM
(the MNIST ``small`` preset, random weights), 784 and 1,024 tokens, best of two calls, two rounds::

    PYTHONPATH=. .venv/bin/python docs/experiments/probes/row_groups.py [threads]
"""

from __future__ import annotations

import sys
import time

import torch

from bench.common import build_models, matched_configs
from vssm.model.ssm import S4D

B, LENGTHS, BUDGETS = 32, (784, 1024), (1024, 2048, 4096, 8192)


def main() -> None:
    threads = int(sys.argv[1]) if len(sys.argv) > 1 else 1
    torch.set_num_threads(threads)
    m = build_models(matched_configs(), max(LENGTHS))["vssm"]
    best: dict[tuple[bool, int, int], float] = {}
    with torch.inference_mode():
        for _ in range(2):
            for kernel in (True, False):
                S4D.scan_max_tokens = None if kernel else 0  # 0: every pass on the matrices or the FFT
                for budget in BUDGETS:
                    m.row_block_tokens = budget // threads  # the model scales it by the thread count
                    for T in LENGTHS:
                        for _ in range(2):
                            s = m.start(torch.zeros(B, 0, dtype=torch.long), list(range(B)))
                            t0 = time.perf_counter()
                            m.generate(s, T, resumable=False)
                            key = (kernel, budget, T)
                            best[key] = min(best.get(key, 1e9), time.perf_counter() - t0)
    print(f"{threads} thread(s), {B} rows: us per row-token, by rows x steps per pass")
    for kernel in (True, False):
        for budget in BUDGETS:
            cells = "  ".join(f"T={T} {best[kernel, budget, T] / T / B * 1e6:.1f}" for T in LENGTHS)
            print(f"{'kernel' if kernel else 'no kernel':>9} {budget:>5}  {cells}")


if __name__ == "__main__":
    main()
