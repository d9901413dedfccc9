"""Where does a VSSM spend its nats on MNIST, pixel by pixel, against an autoregressive model?

    .venv/bin/python scripts/nats_map.py checkpoints/mnist-vssm.safetensors \
        checkpoints/mnist-ar-ssm.safetensors --limit 500 --out docs/img/nats_map.png

Averages over the first ``--limit`` test images, as 28 x 28 maps: the VSSM's reconstruction
``-log p(x_t | z_1:t)`` and KL of z_t (one keyed posterior draw; their sum is its negative ELBO),
the autoregressive model's ``-log p(x_t | x_<t)``, and the excess of the VSSM's bound over it.
Prints the totals per image and per band of rows, so the figure's story is in numbers too.
"""

from __future__ import annotations

import argparse
import logging
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch

from vssm.model import VSSM, load_checkpoint
from vssm.model.autoregressive import ARModel
from vssm.model.data import load_dataset

log = logging.getLogger("nats_map")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("vssm")
    p.add_argument("ar")
    p.add_argument("--limit", type=int, default=500)
    p.add_argument("--batch-size", type=int, default=50)
    p.add_argument("--data-dir")
    p.add_argument("--out", required=True, help="PNG path")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(1)

    vssm, ar = load_checkpoint(args.vssm), load_checkpoint(args.ar)
    if not isinstance(vssm, VSSM) or not isinstance(ar, ARModel):
        p.error("give a VSSM checkpoint, then an autoregressive one")
    x = load_dataset("mnist", args.data_dir).test[: args.limit]  # (B, 784)
    rec, kl, nll = [], [], []
    with torch.no_grad():
        for i in range(0, len(x), args.batch_size):
            xb = x[i : i + args.batch_size]
            r, k = vssm.step_terms(xb)
            rec.append(r)
            kl.append(k)
            nll.append(ar.token_nll(xb))
    maps = {
        "VSSM reconstruction": torch.cat(rec).mean(0),
        "VSSM KL": torch.cat(kl).mean(0),
        "AR NLL": torch.cat(nll).mean(0),
    }
    maps["VSSM bound - AR NLL"] = maps["VSSM reconstruction"] + maps["VSSM KL"] - maps["AR NLL"]

    rows = [("rows 1-7", 0, 7), ("rows 8-14", 7, 14), ("rows 15-21", 14, 21), ("rows 22-28", 21, 28)]
    print("| nats per image | total | " + " | ".join(r[0] for r in rows) + " |")
    print("| --- | ---: |" + " ---: |" * len(rows))
    for name, m in maps.items():
        img = m.reshape(28, 28)
        bands = " | ".join(f"{img[a:b].sum().item():.1f}" for _, a, b in rows)
        print(f"| {name} | {m.sum().item():.1f} | {bands} |")

    fig, axes = plt.subplots(1, 4, figsize=(14, 3.8))
    for ax, (name, m) in zip(axes, maps.items(), strict=True):
        diff = name.startswith("VSSM bound")
        lim = m.abs().max().item()
        im = ax.imshow(
            m.reshape(28, 28).numpy(), cmap="RdBu_r" if diff else "viridis", vmin=-lim if diff else 0, vmax=lim
        )
        ax.set_title(f"{name}\n{m.sum().item():.1f} nats per image", fontsize=10)
        ax.axis("off")
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.suptitle(f"nats per pixel, mean over the first {len(x)} test images", fontsize=11)
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    log.info("wrote %s", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
