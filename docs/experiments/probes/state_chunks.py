"""Probe (lab material): does a session's state after T tokens depend on how its calls cut them?

docs/experiments/rounds-and-serving.md, thirty-ninth session.  A bundled checkpoint, ROWS unprompted rows (seeds
1000, 1001, ...), T tokens in one kept call, in 64-token calls, and in calls of 3, 61, 5, 100, 2 and 9 tokens (three
times) then the rest; per state tensor, the largest difference from the one call and whether it is bit for bit
the same (docs/api.md: chunks do not change tokens)::

    .venv/bin/python docs/experiments/probes/state_chunks.py mnist-vssm 784 8
    .venv/bin/python docs/experiments/probes/state_chunks.py mnist-vssm-prior 784 8 28
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from vssm import model

CHECKPOINTS = Path(__file__).resolve().parents[3] / "checkpoints"


def main() -> None:
    torch.set_num_threads(1)
    name, T, rows = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    block = int(sys.argv[4]) if len(sys.argv) > 4 else None
    m = model.load_checkpoint(CHECKPOINTS / f"{name}.safetensors").freeze()

    def run(chunks: list[int]) -> model.GenState:
        s = m.start(torch.zeros(rows, 0, dtype=torch.long), list(range(1000, 1000 + rows)))
        for n in chunks:
            _, s = m.generate(s, n, block_size=block)
        return s

    mixed = [3, 61, 5, 100, 2, 9] * 3
    with torch.inference_mode():
        one = run([T])
        cut = {"64s": run([64] * (T // 64) + ([T % 64] if T % 64 else [])), "mixed": run([*mixed, T - sum(mixed)])}
    for k, v in one.tensors.items():
        if v.is_floating_point() or v.is_complex():
            parts = [f"{c}: max|d| {(s[k] - v).abs().max():.3g} bitwise {torch.equal(s[k], v)}" for c, s in cut.items()]
            print(k, "; ".join(parts))


if __name__ == "__main__":
    main()
