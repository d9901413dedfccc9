"""The speed / quality plane of block sampling: NLL against milliseconds per sequence (log x).

    .venv/bin/python scripts/pareto.py --dataset mnist --bench docs/benchmarks-blocks.json --img docs/img
    .venv/bin/python scripts/pareto.py --dataset shakespeare --img docs/img

Likelihoods come from the eval JSONs beside the checkpoints (``checkpoints/NAME.json``: a VSSM's
``block_curve`` rows, an autoregressive family's exact NLL); times from the benchmark's block part
(``python -m bench.run --only blocks``, docs/benchmarks-blocks.json: the MNIST block models' shapes
and the text models'), where every model was timed side by side in one process, so the x axis
compares like with like.  A model without a benchmark time falls back to its eval's own timing.
The targets of issue 19 are drawn as the corner the VSSM should reach: NLL <= 1.15x the AR-SSM's
and at least ``--speedup`` times faster (10x for MNIST, 5x for text).  Prints the table; writes
``pareto_<dataset>.png``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without the package installed, too

from vssm.model.checkpoint import read_metadata  # noqa: E402
from vssm.model.vssm import VSSMConfig  # noqa: E402

AR = ("ar-ssm", "ar-transformer", "ar-gru")
SPEEDUP_TARGET = {"mnist": 10.0, "shakespeare": 5.0}  # issue 19's speed targets at the served default


# what decides a VSSM's generation time: every config field but the posterior's (its encoder is not
# used to generate), dropout and the data's length, so a new field counts until it is listed here
NOT_GENERATION = ("enc_layers", "posterior", "dropout", "max_position")
GENERATION_SHAPE = tuple(f.name for f in dataclasses.fields(VSSMConfig) if f.name not in NOT_GENERATION)


def _same_shape(timed: dict | None, checkpoint: Path | None) -> bool:
    """Whether a benchmark part's ``vssm_config`` has this checkpoint's generation-time shapes (a field
    a config does not record has VSSMConfig's default)."""
    if not timed or checkpoint is None or not checkpoint.exists():
        return False
    cfg = json.loads(read_metadata(checkpoint).get("config", "{}"))
    default = dataclasses.asdict(VSSMConfig())
    return all(timed.get(k, default[k]) == cfg.get(k, default[k]) for k in GENERATION_SHAPE)


def bench_section(bench: dict | None, length: int, checkpoint: Path | None = None) -> dict | None:
    """The benchmark's block part that timed whole sequences of ``length`` tokens: an MNIST part
    (``blocks``, the served block model's curve; ``blocks.images``, the other MNIST VSSMs served at a
    block size) or a text part (``blocks.text``, the paper's text VSSM; ``blocks.texts``, the others),
    the one that timed ``checkpoint``'s shapes where one did, or None."""
    blocks = (bench or {}).get("blocks") or {}
    images, texts = (blocks.get("images") or {}).values(), (blocks.get("texts") or {}).values()
    parts = [blocks, *images, blocks.get("text") or {}, *texts]
    parts = [sec for sec in parts if sec.get("length") == length]
    mine = next((sec for sec in parts if _same_shape(sec.get("vssm_config"), checkpoint)), None)
    return mine or next(iter(parts), None)


def timed_by_bench(bench: dict | None, checkpoint: Path, length: int) -> bool:
    """Whether a benchmark block part for sequences of ``length`` timed this VSSM checkpoint's
    generation-time shapes (each part times one VSSM's, its ``vssm_config``): only then are its
    ``vssm:<block size>`` times this model's."""
    return _same_shape((bench_section(bench, length, checkpoint) or {}).get("vssm_config"), checkpoint)


def load(dataset: str, checkpoints: Path) -> dict[str, dict]:
    """Eval JSONs of one dataset, by model name."""
    out = {}
    for path in sorted(checkpoints.glob("*.json")):
        d = json.loads(path.read_text())
        if d.get("dataset") == dataset and "nll" in d:
            out[path.stem] = d
    return out


def bench_times(bench: dict | None, batch: str, length: int, checkpoint: Path | None = None) -> dict[str, float]:
    """Seconds per sequence from the benchmark: ``ar:<family>`` and ``vssm:<block size>``, where it timed
    sequences of this ``length`` (its block part times MNIST's shapes, its text parts the text models';
    ``checkpoint``: the part that timed its shapes)."""
    sec = bench_section(bench, length, checkpoint)
    if not sec or batch not in sec["sequence"]:
        return {}
    return {k: v["median_s"] for k, v in sec["sequence"][batch]["seconds"].items()}


def points(
    evals: dict[str, dict],
    times: dict[str, float],
    batch: str,
    timed: set[str] | None = None,
    per_model: dict[str, dict[str, float]] | None = None,
) -> list[dict]:
    """One point per VSSM block size and per other model; ``timed``: the VSSMs whose shapes the
    benchmark's ``vssm:`` times are of (None: every VSSM); the others keep their eval's times.
    ``per_model``: a VSSM's own benchmark times where the benchmark timed several VSSMs' shapes."""
    rows = []
    for name, d in evals.items():
        if d["family"] == "vssm":
            own = timed is None or name in timed
            mine = (per_model or {}).get(name, times)
            for r in d.get("block_curve", []):
                c = r["block_size"]
                eval_s = r["generation_seconds"][f"batch_{batch}"]
                sec = mine.get(f"vssm:{c}", eval_s) if own else eval_s
                nll = r["nll"]["nats_per_sequence"]
                rows.append({"model": name, "family": "vssm", "block": c, "nll": nll, "s": sec})
        else:
            sec = times.get(f"ar:{d['family']}", d["generation_seconds"][f"batch_{batch}"])
            nll = d["nll"]["nats_per_sequence"]
            rows.append({"model": name, "family": d["family"], "block": 1, "nll": nll, "s": sec})
    return rows


def reference(evals: dict[str, dict]) -> float | None:
    """The AR model's exact NLL on the rows the block curves were measured on (``block_curve_reference``,
    written by ``vssm eval --ar-judge``), if an eval has it: the figure the curves' bounds compare with."""
    refs = [
        d["block_curve_reference"]["nats_per_sequence"]
        for d in evals.values()
        if d.get("block_curve_reference")
        and d["block_curve_reference"]["sequences"] == d["block_curve"][0]["sequences"]
    ]
    return refs[0] if refs else None


def plot(rows: list[dict], dataset: str, speedup: float, batch: str, path: Path, ref: float | None = None) -> None:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ar = next((r for r in rows if r["family"] == "ar-ssm"), None)
    if ar is not None:  # the target corner: as good as 1.15x the AR-SSM (on the curve's rows), `speedup` times faster
        bar = 1.15 * (ref if ref is not None else ar["nll"])
        ax.axhline(bar, color="grey", ls=":", lw=1)
        ax.axvline(ar["s"] * 1e3 / speedup, color="grey", ls=":", lw=1)
        x0 = min(r["s"] for r in rows) * 1e3 / 3
        label = "target (1.15x the AR-SSM on the curve's sequences)" if ref is not None else "target"
        ax.fill_between([x0, ar["s"] * 1e3 / speedup], 0, bar, color="tab:green", alpha=0.08, label=label)
    for name in sorted({r["model"] for r in rows if r["family"] == "vssm"}):
        rs = sorted((r for r in rows if r["model"] == name), key=lambda r: r["block"])
        ax.plot([r["s"] * 1e3 for r in rs], [r["nll"] for r in rs], "o-", ms=4, label=f"{name} (block sizes)")
        for r in rs:
            xy = (r["s"] * 1e3, r["nll"])
            ax.annotate(str(r["block"]), xy, fontsize=7, xytext=(3, 3), textcoords="offset points")
    for r in rows:
        if r["family"] in AR:
            ax.plot(r["s"] * 1e3, r["nll"], "s", ms=7, label=r["model"])
    ax.set(xscale="log", xlabel=f"ms per sequence, batch {batch}", ylabel="NLL (nats per sequence; VSSM: IW bound)")
    nlls = [r["nll"] for r in rows]
    ax.set_ylim(0.9 * min(nlls), 1.05 * max(nlls))
    ax.set_title(f"{dataset}: block sampling's speed / quality dial")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="mnist")
    p.add_argument("--checkpoints", type=Path, default=ROOT / "checkpoints")
    p.add_argument("--bench", type=Path, default=ROOT / "docs" / "benchmarks-blocks.json")
    p.add_argument("--img", type=Path, default=ROOT / "docs" / "img")
    p.add_argument("--batch", default="1")
    p.add_argument(
        "--speedup", type=float, default=None, help="the speed target against the AR-SSM (default: the dataset's)"
    )
    args = p.parse_args()
    bench = json.loads(args.bench.read_text()) if args.bench.exists() else None
    evals = load(args.dataset, args.checkpoints)
    if not evals:
        raise SystemExit(f"no eval JSONs of {args.dataset} in {args.checkpoints}")
    length = next(iter(evals.values()))["generation_seconds"]["length"]
    timed = {n for n in evals if timed_by_bench(bench, args.checkpoints / f"{n}.safetensors", length)}
    per_model = {n: bench_times(bench, args.batch, length, args.checkpoints / f"{n}.safetensors") for n in timed}
    rows = points(evals, bench_times(bench, args.batch, length), args.batch, timed, per_model)
    speedup = args.speedup if args.speedup is not None else SPEEDUP_TARGET.get(args.dataset, 10.0)
    args.img.mkdir(parents=True, exist_ok=True)
    out = args.img / f"pareto_{args.dataset}.png"
    ref = reference(evals)
    plot(rows, args.dataset, speedup, args.batch, out, ref)
    print("| model | block size | NLL (nats) | ms per sequence |")
    print("| --- | ---: | ---: | ---: |")
    for r in sorted(rows, key=lambda r: (r["model"], r["block"])):
        print(f"| {r['model']} | {r['block']} | {r['nll']:.1f} | {r['s'] * 1e3:.1f} |")
    if ref is not None:
        print(f"\nthe AR reference on the curves' rows: {ref:.1f} nats (target bar {1.15 * ref:.1f})")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
