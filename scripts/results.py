"""Training curves (PNG) and the side-by-side NLL table for docs/results.md.

    .venv/bin/python scripts/results.py --runs runs --checkpoints checkpoints --img docs/img
    .venv/bin/python scripts/results.py --ablations runs/abl --img docs/img
    .venv/bin/python scripts/results.py --ablations runs/long --bundled mnist-vssm mnist-ar-ssm

Prints the markdown tables; the plots go to ``--img``.  ``--ablations DIR`` summarises every run
directory under DIR (what differs from the first run, steps, CPU minutes, validation curve) into
``docs/ablations.json`` (small, committed: the raw figures outlive ``runs/``), prints the table and
draws ``ablations_<DIR name>.png``.  A curve's ``nelbo`` is the validation negative ELBO for the
VSSM and the exact validation NLL for an autoregressive family (whose ``kl`` is null).
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


def _val_curve(rows: list[dict], dataset: str) -> list[dict]:
    """Validation points of a metrics.jsonl: minutes, NLL (nats/image or bits/byte), VSSM KL."""
    per = 1 if dataset == "mnist" else 1 / math.log(2)
    out = []
    for r in rows:
        if "val_nll" not in r:
            continue
        # a run with a weight average validates it and its raw weights: the raw ones show training
        # progress (the average starts at the initial weights and lags them early on)
        v = "val_raw_" if "val_raw_nll" in r else "val_"
        point = {
            "minutes": r["elapsed_s"] / 60,
            "nll": r[f"{v}nll"] if dataset == "mnist" else r[f"{v}nll_per_token"] * per,
        }
        if f"{v}kl" in r:  # per image, or per byte for text (256-byte windows)
            point["kl"] = r[f"{v}kl"] * (1 if dataset == "mnist" else per / 256)
        out.append(point)
    return out


def curves(runs: Path, checkpoints: Path, dataset: str, out: Path, store: Path) -> Path | None:
    """Validation curves of every family's run, with each bundled model's test NLL as a dotted line.

    Curves are read from ``runs/<dataset>-<family>/metrics.jsonl`` and kept in ``store`` (small,
    committed), so the figure can be redrawn after ``runs/`` is gone.
    """
    kept = json.loads(store.read_text()) if store.exists() else {}
    fig, ax = plt.subplots(figsize=(7, 4.2))
    plotted = False
    for i, fam in enumerate(FAMILIES):
        name = f"{dataset}-{fam}"
        f = runs / name / "metrics.jsonl"
        if f.exists():
            kept[name] = _val_curve([json.loads(x) for x in f.read_text().splitlines()], dataset)
        pts = kept.get(name)
        color = None
        if pts:
            label = fam + (" (negative ELBO)" if fam == "vssm" else "")
            (line,) = ax.plot([p["minutes"] for p in pts], [p["nll"] for p in pts], marker="o", ms=3, label=label)
            color = line.get_color()
            if fam == "vssm":
                ax.plot([p["minutes"] for p in pts], [p["kl"] for p in pts], ls="--", color=color, label="vssm KL")
            plotted = True
        result = checkpoints / f"{name}.json"
        if result.exists():
            r = json.loads(result.read_text())["nll"]
            y = r["nats_per_sequence"] if dataset == "mnist" else r["bits_per_token"]
            ax.axhline(y, ls=":", color=color or "gray", lw=1)
            ax.annotate(
                f"{fam} test {y:.3g}", (0.01 + 0.25 * i, y), xycoords=("axes fraction", "data"), fontsize=7, va="bottom"
            )
            plotted = True
    if not plotted:
        plt.close(fig)
        return None
    store.write_text(json.dumps(kept, indent=1) + "\n")
    ax.set_xlabel("training minutes (1 CPU thread)")
    ax.set_ylabel("validation NLL, nats per image" if dataset == "mnist" else "validation bits per byte")
    ax.set_title(f"{dataset}: validation during training; dotted: bundled models' test NLL")
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
        t = r["training"]
        cpu = f"{t['cpu_minutes']:.0f}" if t.get("cpu_minutes") else "-"
        recipe = f"{t['config']['batch_size']} / {t['config']['lr']:g}"
        rows.append(
            f"| {f.stem} | {r['parameters']['generation']:,} | {r['parameters']['total']:,} | "
            f"{t['minutes']:.0f} | {cpu} | {t['steps']:,} | {recipe} | {bound} | {elbo} | {kl} | "
            f"{prompted} | {g['batch_1']:.3f} / {g['batch_32']:.3f} |"
        )
    unit_name = "nats/image" if dataset == "mnist" else "bits/byte"
    head = (
        f"| model | params (generation) | params (total) | train min | CPU min | steps | batch / lr | "
        f"test NLL, {unit_name} | ELBO bound | KL nats/seq | prompted NLL 25/50/75% | gen s, batch 1 / 32 |\n"
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    )
    return head + "\n" + "\n".join(rows)


def _differs(cfg: dict, base: dict) -> str:
    keys = sorted(k for k in cfg if k not in ("out", "overrides") and cfg.get(k) != base.get(k))
    return ", ".join(f"{k}={cfg[k]}" for k in keys) or "(control)"


def ablations(root: Path, out_json: Path, img: Path, bundled: dict[str, list[dict]] | None = None) -> str:
    """Summarise the run directories under ``root`` (sorted by name; the first is the control).

    ``bundled``: curves of bundled models (from ``docs/curves.json``, by name) drawn beside the runs,
    dotted, against minutes; for runs with a longer budget than the bundled ones."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import dataclasses

    from vssm.model.checkpoint import FAMILIES, read_metadata
    from vssm.model.train import TrainConfig

    def defaults(cls: type) -> dict:
        return {f.name: f.default for f in dataclasses.fields(cls)}

    runs = []
    for d in sorted(p for p in root.iterdir() if (p / "model.safetensors").exists()):
        meta = read_metadata(d / "model.safetensors")
        # fields added after a run was made read as their defaults, which that run used
        cfg = {
            **defaults(TrainConfig),
            **defaults(FAMILIES[meta["family"]].config_class),
            **json.loads(meta["train_config"]),
            **json.loads(meta["config"]),
        }
        rows = [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]
        val = [r for r in rows if "val_nll" in r]
        runs.append(
            {
                "name": d.name,
                "config": cfg,
                "steps": int(meta["train_steps"]),
                "train_minutes": float(meta["train_seconds"]) / 60,
                "cpu_minutes": float(meta.get("train_cpu_seconds", "nan")) / 60,
                "curve": [
                    {
                        "step": r["step"],
                        "minutes": r["elapsed_s"] / 60,
                        "nelbo": r["val_nll"],
                        "kl": r.get("val_kl"),
                        # with a weight average, val_nll scores the average and val_raw_nll the raw weights
                        **({"raw_nelbo": r["val_raw_nll"]} if "val_raw_nll" in r else {}),
                    }
                    for r in val
                ],
            }
        )
    if not runs:
        raise SystemExit(f"no finished runs under {root}")
    previous = json.loads(out_json.read_text()) if out_json.exists() else {}
    previous[root.name] = runs
    out_json.write_text(json.dumps(previous, indent=1) + "\n")
    base = runs[0]["config"]
    dataset = base["dataset"]
    # an autoregressive family's validation figure is its exact NLL, the VSSM's the negative ELBO
    families = sorted({r["config"]["family"] for r in runs})
    if families == ["vssm"]:
        short, measure = "-ELBO", "negative ELBO"
    elif "vssm" in families:
        short, measure = "NLL or -ELBO", "NLL (AR) or -ELBO (VSSM)"
    else:
        short, measure = "NLL", "NLL"
    averaged = any("raw_nelbo" in c for r in runs for c in r["curve"])
    x_key = "minutes" if base["budget_minutes"] else "step"  # a step budget is compared step for step
    # val_nll is per sequence: an image, or a training window of text, whose length can differ
    # between text runs, so text is shown in bits per byte
    text = dataset == "shakespeare"
    unit = "bits per byte" if text else "nats per image"

    def scaled(r: dict, nats: float) -> float:
        return nats / r["config"]["seq_len"] / math.log(2) if text else nats

    kl_head = "KL, nats per byte" if text else "KL"
    fig, ax = plt.subplots(figsize=(7, 4.2))
    raw_head = f" validation {short} of the raw weights |" if averaged else ""
    lines = [
        f"| run | differs from the control | steps | CPU min | validation {short}, {unit} |{raw_head} {kl_head} |",
        "| --- | --- | ---: | ---: | ---: |" + (" ---: |" if averaged else "") + " ---: |",
    ]
    top = worst_end = -math.inf
    colours: dict[str, str] = {}  # family -> colour of its first run, for the bundled curves
    for r in runs:
        last = r["curve"][-1]
        # the KL per byte for text, as windows can differ in length
        if last["kl"] is None:
            kl = "-"
        else:
            kl = format(last["kl"] / r["config"]["seq_len"], ".3f") if text else format(last["kl"], ".1f")
        digits = 3 if text else 1
        raw = ""
        if averaged:
            raw = f" {scaled(r, last['raw_nelbo']):.{digits}f} |" if "raw_nelbo" in last else " - |"
        lines.append(
            f"| {r['name']} | {_differs(r['config'], base)} | {r['steps']} | {r['cpu_minutes']:.1f} | "
            f"{scaled(r, last['nelbo']):.{digits}f} |{raw} {kl} |"
        )
        ys = [scaled(r, c["nelbo"]) for c in r["curve"]]
        (line,) = ax.plot([c[x_key] for c in r["curve"]], ys, marker="o", label=r["name"])
        colours.setdefault(r["config"]["family"], line.get_color())
        with_raw = [c for c in r["curve"] if "raw_nelbo" in c]
        if with_raw:
            ax.plot(
                [c[x_key] for c in with_raw],
                [scaled(r, c["raw_nelbo"]) for c in with_raw],
                linestyle="--",
                color=line.get_color(),
                label=f"{r['name']} (raw weights)",
            )
        top, worst_end = max(top, *ys), max(worst_end, ys[-1])
    for name, curve in (bundled or {}).items():
        if x_key == "minutes":
            family = name.split("-", 1)[1]  # "mnist-ar-ssm" -> "ar-ssm"
            ax.plot(
                [c["minutes"] for c in curve],
                [c["nll"] for c in curve],
                linestyle=":",
                color=colours.get(family),
                label=f"{name} (bundled)",
            )
    # a long KL warm-up starts far above the rest; cap the axis so the ends stay readable
    if top > 1.5 * worst_end:
        ax.set_ylim(top=1.5 * worst_end)
    ax.set_xlabel("training minutes (1 CPU thread)" if x_key == "minutes" else "training steps")
    ax.set_ylabel(f"validation {measure}, {unit}")
    budget = f"{base['budget_minutes']:g}-minute" if base["budget_minutes"] else f"{base['max_steps']}-step"
    ax.set_title(f"{dataset}: {' and '.join(families)} runs, {budget} budget each")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    img.mkdir(parents=True, exist_ok=True)
    fig.savefig(img / f"ablations_{root.name}.png", dpi=110)
    plt.close(fig)
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--runs", type=Path, default=Path("runs"))
    p.add_argument("--checkpoints", type=Path, default=Path("checkpoints"))
    p.add_argument("--img", type=Path, default=Path("docs/img"))
    p.add_argument("--ablations", type=Path, help="summarise the runs under this directory instead")
    p.add_argument("--ablations-json", type=Path, default=Path("docs/ablations.json"))
    p.add_argument("--curves-json", type=Path, default=Path("docs/curves.json"))
    p.add_argument("--bundled", nargs="*", default=[], help="with --ablations: also draw these bundled models' curves")
    args = p.parse_args()
    if args.ablations:
        kept = json.loads(args.curves_json.read_text()) if args.bundled else {}
        missing = [name for name in args.bundled if name not in kept]
        if missing:
            raise SystemExit(f"no curve for {', '.join(missing)} in {args.curves_json}")
        bundled = {name: kept[name] for name in args.bundled}
        sys.stdout.write(ablations(args.ablations, args.ablations_json, args.img, bundled) + "\n")
        return 0
    for ds in ("mnist", "shakespeare"):
        path = curves(args.runs, args.checkpoints, ds, args.img, args.curves_json)
        sys.stdout.write(f"\n## {ds}\n\n{table(args.checkpoints, ds)}\n\ncurves: {path}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
