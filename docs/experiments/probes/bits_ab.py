"""Probe (lab material): hashes of what two builds must agree on bit for bit, printed to compare by eye or diff.

docs/experiments/rounds-and-serving.md, forty-first session.  Run it under two builds (an older one a worktree on
PYTHONPATH, the lab notes' way) and diff the output:

- ``models``: tokens, states and an append of bundled checkpoints in configurations that reach the products' tiles
  and rows, the draws, blocks and patches (batches of 2 to 33 rows, one pass and blocks);
- ``draws``: 172,800 categorical draws (csrc/categorical.c) over 1 to 1,500 categories, both precisions, six
  temperatures, ties, -inf, +inf, NaN and signed zeros.

    PYTHONPATH=. .venv/bin/python docs/experiments/probes/bits_ab.py models
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import torch

from vssm import model
from vssm.model import native

CHECKPOINTS = Path(__file__).resolve().parents[3] / "checkpoints"
CONFIGS = [  # checkpoint, tokens, rows, block size (None: the served default)
    ("mnist-vssm", 700, 7, None),
    ("mnist-vssm-prior16", 700, 5, None),
    ("mnist-vssm-prior", 300, 3, None),
    ("shakespeare-vssm", 256, 3, None),
    ("shakespeare-vssm-prior", 200, 2, None),
    ("mnist-ar-ssm", 200, 9, None),
    ("shakespeare-ar-ssm", 100, 13, None),
    ("mnist-vssm-blocks", 300, 7, 16),
    ("mnist-vssm", 200, 33, 8),
]


def models() -> None:
    total = hashlib.sha256()
    for name, T, B, block in CONFIGS:
        m = model.load_checkpoint(CHECKPOINTS / f"{name}.safetensors").freeze()
        with torch.inference_mode():
            s = m.start(torch.zeros(B, 0, dtype=torch.long), list(range(B)))
            tokens, s = m.generate(s, T, block_size=block)
            more, s = m.generate(s, 37, block_size=block)
            appended = m.append(s, more[:, :20])
        h = hashlib.sha256()
        for part in (tokens.numpy().tobytes(), more.numpy().tobytes(), s.to_bytes(), appended.to_bytes()):
            h.update(part)
        total.update(h.digest())
        print(f"{name:24s} T {T:4d} B {B:2d} block {block}: {h.hexdigest()[:16]}", flush=True)
    print("all", total.hexdigest())


def draws() -> None:
    draw = native.categorical()
    assert draw is not None, "no compiled kernels here"
    g = torch.Generator().manual_seed(0)
    total, n = hashlib.sha256(), 0
    for dtype in (torch.float32, torch.float64):
        for V in (1, 2, 5, 15, 16, 17, 33, 256, 257, 1000, 1024, 1500):
            for t in (1.0, 0.0, 0.5, 2.0, 1e-9, 0.7):
                for kind in range(6):
                    x = torch.randn(200, V, generator=g, dtype=torch.float64)
                    if kind == 1:  # ties
                        x = (x * 4).round() / 4
                    elif kind == 2:
                        x[torch.rand(200, V, generator=g) < 0.1] = -torch.inf
                    elif kind == 3:
                        x[torch.rand(200, V, generator=g) < 0.05] = torch.nan
                    elif kind == 4:  # signed zeros only
                        x = torch.where(torch.rand(200, V, generator=g) < 0.5, 0.0, -0.0).to(torch.float64)
                        x[:, V // 2] = 0.0
                    elif kind == 5:
                        x[torch.rand(200, V, generator=g) < 0.02] = torch.inf
                        x = x * 30
                    u = torch.rand(200, generator=g, dtype=torch.float64).to(dtype)
                    u[:3], u[3:5] = 1.0, 0.0
                    out = draw(x.to(dtype).contiguous(), u, t)
                    total.update(out.numpy().tobytes())
                    n += out.numel()
    print(f"{n} draws: {total.hexdigest()}")


if __name__ == "__main__":
    torch.set_num_threads(1)
    {"models": models, "draws": draws}[sys.argv[1]]()
