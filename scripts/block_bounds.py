"""Block-sampling bounds of VSSM checkpoints side by side: the quick comparison of training runs.

Glossary of axis letters:
    N  test sequences   T  sequence length   c  block size   S  importance samples

For each checkpoint and block size c, on the first N test sequences: the importance-weighted bound
of what block sampling at c samples (``VSSM.nll(x, samples=S, block_size=c)``, as ``vssm eval
--block-sizes`` measures it), and the negative ELBO split into its reconstruction and KL terms
(the training loss at c, one Gumbel draw with a fixed seed).  A cheaper look than the full curve
of ``vssm eval`` (no timings, no samples), for choosing between runs.

    .venv/bin/python scripts/block_bounds.py checkpoints/mnist-vssm-blocks.safetensors \\
        runs/x/model.safetensors --blocks 1,28 --limit 500 --samples 8
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from torch import Tensor

from vssm.model import VSSM, load_checkpoint
from vssm.model.base import parse_block_sizes
from vssm.model.checkpoint import read_metadata
from vssm.model.data import Dataset, eval_sequences, load_dataset
from vssm.model.evaluate import _score


@torch.no_grad()
def bounds(model: VSSM, x: Tensor, c: int, samples: int, batch: int) -> dict[str, float]:
    """Mean over the sequences ``x`` ``(N, T)`` of the IW-``samples`` bound and the ELBO's terms at block ``c``."""
    iw = _score(model, x, batch, f"block {c}", samples=samples, block_size=c) / len(x)  # as vssm eval sums it
    return {"iw": iw, **elbo_terms(model, x, c, batch)}


@torch.no_grad()
def elbo_terms(model: VSSM, x: Tensor, c: int, batch: int) -> dict[str, float]:
    """Mean over ``x`` ``(N, T)`` of the negative ELBO's terms at block ``c``: the training loss,
    one Gumbel draw from seed 0 (docs/experiments/probes/latent_ar.py uses it for its own prior)."""
    rec, kl = [], []
    torch.manual_seed(0)
    for i in range(0, len(x), batch):
        terms = model.loss(x[i : i + batch], block_size=c)
        rec.append(terms.reconstruction)
        kl.append(terms.kl)
    return {"rec": float(torch.cat(rec).mean()), "kl": float(torch.cat(kl).mean())}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoints", nargs="+")
    p.add_argument("--blocks", default="1,28", help="block sizes, e.g. 1,8,16,28,56,784")
    p.add_argument("--limit", type=int, default=500, help="the first N test sequences")
    p.add_argument("--samples", type=int, default=8, help="importance samples of the bound")
    p.add_argument("--batch", type=int, default=50)
    p.add_argument("--seq-len", type=int, default=256, help="text window length")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--json", default=None, help="also write the figures here")
    args = p.parse_args()
    torch.set_num_threads(1)
    blocks = parse_block_sizes(args.blocks)
    rows: dict[str, dict[int, dict[str, float]]] = {}
    datasets: dict[str, Dataset] = {}  # read once, however many checkpoints share one
    for path in args.checkpoints:
        model = load_checkpoint(path).eval()
        if not isinstance(model, VSSM):
            raise SystemExit(f"{path} is a {model.family} model, not a VSSM")
        name = read_metadata(path)["dataset"]
        if name not in datasets:
            datasets[name] = load_dataset(name, args.data_dir)
        x = eval_sequences(datasets[name].test, args.seq_len)[: args.limit]  # (N, T)
        rows[path] = {c: bounds(model, x, c, args.samples, args.batch) for c in blocks}
    print(f"IW-{args.samples} bound, and the negative ELBO as reconstruction + KL (nats), first {args.limit} test rows")
    print()
    print("| checkpoint | " + " | ".join(f"c = {c}" for c in blocks) + " |")
    print("| --- |" + " ---: |" * len(blocks))
    for path, by_c in rows.items():
        cells = [f"{r['iw']:.2f} ({r['rec']:.1f} + {r['kl']:.1f})" for r in by_c.values()]
        print(f"| {Path(path).parent.name}/{Path(path).name} | " + " | ".join(cells) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps({"limit": args.limit, "samples": args.samples, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
