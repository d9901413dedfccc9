"""Probe (lab material): does a prompt appended in pieces leave the state one append leaves?

docs/experiments/rounds-and-serving.md, fortieth session.  For each bundled checkpoint named, 3 rows, a prompt of
300 random tokens appended at once and in pieces (100 + 200, 64-token pieces, 3 + 29 + 1 + 40 + 17 + 210,
256 + 44: a server reads prompts in 256-token windows); per piece list, the state tensors that are not bit for bit
the one append's, and their largest difference::

    PYTHONPATH=. .venv/bin/python docs/experiments/probes/append_pieces.py mnist-vssm mnist-ar-ssm
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from vssm import model

CHECKPOINTS = Path(__file__).resolve().parents[3] / "checkpoints"
PIECES = ([100, 200], [64] * 4 + [44], [3, 29, 1, 40, 17, 210], [256, 44])


def main() -> None:
    torch.set_num_threads(1)
    for name in sys.argv[1:]:
        m = model.load_checkpoint(CHECKPOINTS / f"{name}.safetensors").freeze()  # as the server holds it
        x = torch.randint(0, m.vocab_size, (3, 300), generator=torch.Generator().manual_seed(0))

        def run(pieces: list[int], m: model.SequenceModel = m, x: torch.Tensor = x) -> model.GenState:
            state, at = m.start(torch.zeros(3, 0, dtype=torch.long), [1, 2, 3]), 0
            for n in pieces:
                state, at = m.append(state, x[:, at : at + n]), at + n
            return state

        with torch.inference_mode():
            one = run([300])
            for pieces in PIECES:
                other = run(pieces)
                differ = {
                    k: f"{float((one[k].to(torch.complex128) - other[k].to(torch.complex128)).abs().max()):.1e}"
                    for k in one.tensors
                    if not torch.equal(one[k], other[k])
                }
                print(name, pieces, differ or "bit for bit", flush=True)


if __name__ == "__main__":
    main()
