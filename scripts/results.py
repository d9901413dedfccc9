"""Training curves (PNG) and the side-by-side NLL table for docs/results.md.

    .venv/bin/python scripts/results.py --runs runs --checkpoints checkpoints --img docs/img

Prints the markdown tables; the plots go to ``--img``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

FAMILIES = ("vssm", "ar-ssm", "ar-transformer", "ar-gru")


def curves(runs: Path, dataset: str, out: Path) -> Path | None:
    fig, ax = plt.subplots(figsize=(7, 4.2))
    plotted = False
    for fam in FAMILIES:
        f = runs / f"{dataset}-{fam}" / "metrics.jsonl"
        if not f.exists():
            continue
        rows = [json.loads(x) for x in f.read_text().splitlines()]
        rows = [r for r in rows if "val_nll" in r]
        if not rows:
            continue
        x = [r["elapsed_s"] / 60 for r in rows]
        y = [r["val_nll"] for r in rows] if dataset == "mnist" else [r["val_nll_per_token"] / math.log(2) for r in rows]
        ax.plot(x, y, marker="o", ms=3, label=fam + (" (negative ELBO)" if fam == "vssm" else ""))
        if fam == "vssm":
            ax.plot(
                x,
                [r["val_kl"] * (1 if dataset == "mnist" else 1 / 256 / math.log(2)) for r in rows],
                ls="--",
                color=ax.lines[-1].get_color(),
                label="vssm KL",
            )
        plotted = True
    if not plotted:
        plt.close(fig)
        return None
    ax.set_xlabel("training minutes (1 CPU thread)")
    ax.set_ylabel("validation NLL, nats per image" if dataset == "mnist" else "validation bits per byte")
    ax.set_title(f"{dataset}: validation during training")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if dataset == "mnist":
        ax.set_ylim(0, 260)
    fig.tight_layout()
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"curves_{dataset}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def table(checkpoints: Path, dataset: str) -> str:
    rows = []
    for f in sorted(checkpoints.glob(f"{dataset}-*.json")):
        r = json.loads(f.read_text())
        nll = r["nll"]
        unit = "nats_per_sequence" if dataset == "mnist" else "bits_per_token"
        fmt = (lambda v: f"{v:.1f}") if dataset == "mnist" else (lambda v: f"{v:.3f}")
        bound = fmt(nll[unit]) + (f" (IW-{nll['samples']} bound)" if nll["bound"] == "iw" else " (exact)")
        elbo = fmt(nll["elbo"][unit]) if "elbo" in nll else "-"
        kl = f"{nll['kl_nats_per_sequence']:.1f}" if "kl_nats_per_sequence" in nll else "-"
        p = r["prompted_nll"]
        prompted = " / ".join(fmt(p[k][unit]) for k in ("0.25", "0.5", "0.75"))
        g = r["generation_seconds"]
        rows.append(
            f"| {f.stem} | {r['parameters']['generation']:,} | {r['parameters']['total']:,} | "
            f"{r['training']['minutes']:.0f} | {r['training']['steps']:,} | {bound} | {elbo} | {kl} | "
            f"{prompted} | {g['batch_1']:.3f} / {g['batch_32']:.3f} |"
        )
    unit_name = "nats/image" if dataset == "mnist" else "bits/byte"
    head = (
        f"| model | params (generation) | params (total) | train min | steps | test NLL, {unit_name} | "
        f"ELBO bound | KL nats/seq | prompted NLL 25/50/75% | gen s, batch 1 / 32 |\n"
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    )
    return head + "\n" + "\n".join(rows)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--runs", type=Path, default=Path("runs"))
    p.add_argument("--checkpoints", type=Path, default=Path("checkpoints"))
    p.add_argument("--img", type=Path, default=Path("docs/img"))
    args = p.parse_args()
    for ds in ("mnist", "shakespeare"):
        path = curves(args.runs, ds, args.img)
        sys.stdout.write(f"\n## {ds}\n\n{table(args.checkpoints, ds)}\n\ncurves: {path}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
