"""Write docs/results.md, the users' results page, from the bundled checkpoints' eval JSONs.

    .venv/bin/python scripts/results_page.py            # writes docs/results.md
    .venv/bin/python scripts/results_page.py --check    # exits 1 if docs/results.md is stale

Every number on the page comes from ``checkpoints/NAME.json`` (``vssm eval``) or, for the block
sampling timings, from ``docs/benchmarks-blocks.json`` (``python -m bench.run --only blocks``: every
model timed side by side in one process, the part 7 of ``make bench``); the
words around them live here.  The lab notebook (every experiment, dated) is docs/experiments/.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without the package installed, too

sys.path.insert(0, str(Path(__file__).parent))  # its neighbour scripts/pareto.py
from pareto import bench_section, bench_times, timed_by_bench  # noqa: E402

from vssm.model.card import samples_in_one_pass, served_row  # noqa: E402
from vssm.model.checkpoint import read_metadata  # noqa: E402

DATASETS = {
    "mnist": ("Binarised MNIST", "nats per image", "nats_per_sequence", "{:.1f}"),
    "shakespeare": ("Tiny Shakespeare", "bits per byte", "bits_per_token", "{:.3f}"),
}
LIMITATIONS = [
    "Every model is small (about 0.2-0.3 M generation-time parameters) and trained 15-40 minutes on "
    "a 2-core CPU; the figures compare families at equal budget, not the state of the art.",
    "A latent model's figure (VSSM, TVAE, VRNN) is an upper bound on its NLL (importance-weighted, the "
    "bound column says how many samples); the autoregressive baselines' figures are exact.",
    "One parallel pass (no block size) is the fastest and the weakest sampler for MNIST: its unprompted "
    "samples are mostly not recognisable digits. Block sampling buys quality with rounds.",
    "Of the text VSSMs, `shakespeare-vssm-prior` writes Shakespeare-shaped lines with 72% of its words "
    "in the training text (the AR-SSM's: 84%); it is fast because its sequential step is small (a latent "
    "prior's draw), not because it samples in parallel. `shakespeare-vssm` samples in one parallel pass, "
    "but only about half of its words are in the training text (49%).",
    "Times are wall-clock on a shared 2-core machine: compare the ratios of one run, not absolute "
    "milliseconds across runs.",
]


FULL_TEST = {"mnist": 10_000}  # test-set size: a bound on fewer images says so


def _fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else spec.format(v)


def _timed_on(evals: dict[str, dict[str, Any]]) -> str:
    """Where the evals' times were taken, when one CPU took them all and its JSONs say which (``vssm eval
    --times-only`` records it): ', on <name> (<family and model>) with <bits>-bit kernels, one thread'."""
    hosts = set()
    for d in evals.values():
        m = (d.get("timing") or {}).get("machine") or {}
        hosts.add((m.get("cpu"), m.get("cpu_id"), m.get("kernel_vector_bits"), m.get("threads")))
    if len(hosts) != 1:
        return ""
    cpu, cpu_id, bits, threads = hosts.pop()
    if not cpu:
        return ""
    where = f", on {cpu}" + (f" ({cpu_id})" if cpu_id else "")
    where += f" with {bits}-bit kernels" if bits else ""
    return where + (", one thread" if threads == 1 else f", {threads} threads" if threads else "")


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1e3:,.1f}"


# the judged samples' columns of a curve: (header, key in the judge's figures, format) per dataset,
# then those of the same seeds from the model's own distribution (observation temperature 1)
JUDGE_COLUMNS = {
    "mnist": (
        [
            ("confident digits", "confident_share", "{:.0%}"),
            ("class entropy (nats)", "class_entropy_nats", "{:.2f}"),
            ("ink", "ink_fraction", "{:.3f}"),
            ("AR judge (nats)", "ar_judge_nats", "{:.1f}"),
        ],
        [("confident, own", "confident_share", "{:.0%}"), ("AR judge, own", "ar_judge_nats", "{:.1f}")],
    ),
    "shakespeare": (
        [
            ("known words", "known_word_share", "{:.0%}"),
            ("AR judge (bits per byte)", "ar_judge_bits_per_byte", "{:.2f}"),
        ],
        [("known words, own", "known_word_share", "{:.0%}"), ("AR judge, own", "ar_judge_bits_per_byte", "{:.2f}")],
    ),
}


def _bench(bench: dict | None, length: int, checkpoint: Path | None = None) -> dict[str, dict[str, float]]:
    """Median seconds per whole sequence from the benchmark's block part, by batch then entry: only
    where the benchmark timed sequences of this ``length`` (its part 7 times MNIST's shapes and the
    text models'; ``checkpoint``: the part that timed its shapes)."""
    sec = bench_section(bench, length, checkpoint)
    return {b: bench_times(bench, b, length, checkpoint) for b in sec["sequence"]} if sec else {}


def _judged_section(checkpoints: Path, dataset: str, evals: dict[str, dict]) -> list[str]:
    """Every bundled model's unprompted samples as the digit judge and the AR judge see them, beside
    the test images (checkpoints/judges/mnist-judge.json, written by ``vssm judge-train``)."""
    path = checkpoints / "judges" / f"{dataset}-judge.json"
    if not path.exists():
        return []
    ref = json.loads(path.read_text())["reference"]
    test = ref["test_images"]
    L = ["", f"### Every model's samples, judged ({ref['samples']:,} unprompted samples, seeds {ref['seeds']})", ""]
    L += [
        "The digit judge's share of confident digits (max probability >= 0.9), its class-histogram entropy,",
        "and the AR-SSM's NLL of the samples (the AR judge), each model at its default block size and",
        'observation temperature; "own" is the same seeds from the model\'s own distribution (observation',
        "temperature 1) where it is served below 1.",
        "",
        "| samples | block size | observation temperature | confident digits | class entropy | AR judge (nats) "
        "| confident, own | AR judge, own |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        f"| {test['which']} | - | - | {test['confident_share']:.0%} | {test['class_entropy_nats']:.2f} "
        f"| {test['ar_judge_nll']:.1f} | | |",
    ]
    models = dict(ref["models"])
    for name, d in evals.items():  # a model judged in its curve: the row at its default block size
        row = next((r for r in d.get("block_curve", []) if r["block_size"] == d.get("default_block_size")), None)
        if name not in models and row is not None and "samples" in row:
            s = row["samples"]
            models[name] = {
                **s,
                "family": d["family"],
                "block_size": row["block_size"],
                "ar_judge_nll": s.get("ar_judge_nats"),
                "observation_temperature_1": {
                    **row.get("samples_observation_temperature_1", {}),
                    "ar_judge_nll": row.get("samples_observation_temperature_1", {}).get("ar_judge_nats"),
                },
            }
    for name, m in sorted(models.items()):
        own = m.get("observation_temperature_1") or {}
        r = m.get("observation_temperature", 1.0)
        block = m.get("block_size") or ("one pass" if samples_in_one_pass(m["family"]) else "token by token")
        L.append(
            f"| `{name}` | {block} | {r:g} | {m['confident_share']:.0%} | {m['class_entropy_nats']:.2f} "
            f"| {m['ar_judge_nll']:.1f} | {_fmt(own.get('confident_share'), '{:.0%}')} "
            f"| {_fmt(own.get('ar_judge_nll'), '{:.1f}')} |"
        )
    return L


def _text_judged_section(evals: dict[str, dict]) -> list[str]:
    """Every text model's unprompted samples, judged (``vssm eval --block-sizes --ar-judge``): the share of
    their words found in the training text and the AR judge's bits per byte, beside the test windows'."""
    served = {name: (d, served_row(d, d.get("default_block_size"))) for name, d in evals.items()}
    served = {name: (d, r) for name, (d, r) in served.items() if r is not None and "samples" in r}
    if not served:
        return []
    cols, own_cols = JUDGE_COLUMNS["shakespeare"]
    first = next(iter(served.values()))[1]
    n, length = first["samples"]["samples"], first["generation_seconds"]["length"]
    L = ["", f"### Every model's samples, judged ({n:,} unprompted samples of {length} bytes, seeds 0..{n - 1})", ""]
    L += [
        "The share of the samples' words (runs of letters) found in the training text, and the bits per byte",
        "the AR-SSM gives them (the AR judge), each model at its default block size and observation",
        'temperature; "own" is the same seeds from the model\'s own distribution (observation temperature 1)',
        "where it is served below 1. The test windows start mid-line: a word cut at an edge counts as unknown.",
        "",
        "| samples | block size | observation temperature |" + "".join(f" {h} |" for h, _, _ in cols + own_cols),
        "| --- | ---: | ---: |" + " ---: |" * (len(cols) + len(own_cols)),
    ]
    test = next((d["judged_test_sequences"] for d, _ in served.values() if "judged_test_sequences" in d), None)
    if test is not None:
        L.append(
            f"| test windows ({test['samples']:,}) | - | - |"
            + "".join(f" {_fmt(test.get(k), f)} |" for _, k, f in cols)
            + " |" * len(own_cols)
        )
    for name, (d, r) in sorted(served.items()):
        s, own = r["samples"], r.get("samples_observation_temperature_1", {})
        if d["family"] == "vssm":
            block = "one pass" if r["block_size"] >= r["generation_seconds"]["length"] else r["block_size"]
        else:
            block = "one pass" if samples_in_one_pass(d["family"]) else "token by token"
        L.append(
            f"| `{name}` | {block} | {s.get('observation_temperature', 1.0):g} |"
            + "".join(f" {_fmt(s.get(k), f)} |" for _, k, f in cols)
            + "".join(f" {_fmt(own.get(k), f)} |" for _, k, f in own_cols)
        )
    return L


def dataset_section(
    dataset: str, evals: dict[str, dict], bench: dict | None, img: Path, checkpoints: Path
) -> list[str]:
    title, unit, key, spec = DATASETS[dataset]
    L = [f"## {title} ({unit}, test set)", ""]
    L += [
        "| model | family | generation params | NLL | bound | block size | ms / sequence, batch 1 | batch 32 |",
        "| --- | --- | ---: | ---: | --- | ---: | ---: | ---: |",
    ]
    for name, d in evals.items():
        nll = d["nll"]
        bound = f"IW-{nll['samples']}" if nll["bound"] == "iw" else "exact"
        if d["family"] == "vssm":
            block = d.get("default_block_size") or "one pass"
        else:  # no block sampling: how the family always samples
            block = "one pass" if samples_in_one_pass(d["family"]) else "token by token"
        # a model served at a block size is scored at it (its curve), not by its one-pass bound
        served = [r for r in d.get("block_curve", []) if r["block_size"] == d.get("default_block_size")]
        if served:
            nll = served[0]["nll"]
            bound = f"IW-{nll['samples']} at block {block}, {served[0]['sequences']} images"
        elif d["test"]["sequences"] < FULL_TEST.get(dataset, 0):
            bound += f", first {d['test']['sequences']:,} images"
        g = d["generation_seconds"]
        L.append(
            f"| `{name}` | {d['family']} | {d['parameters']['generation']:,} | {_fmt(nll[key], spec)} | {bound} "
            f"| {block} | {_ms(g['batch_1'])} | {_ms(g['batch_32'])} |"
        )
    L += [
        "",
        "NLL: at the block size a model is served at where it has a curve (below), else over the whole sequence "
        f"in one pass. Times in this table come from each model's own `vssm eval` run (its JSON){_timed_on(evals)}.",
    ]
    judged_cols, own_cols = JUDGE_COLUMNS[dataset]
    for name, d in evals.items():
        curve = d.get("block_curve")
        if not curve or d["family"] != "vssm":  # another family's one row: its judged samples (below)
            continue
        length = curve[0]["generation_seconds"]["length"]
        ckpt = checkpoints / f"{name}.safetensors"
        timed = timed_by_bench(bench, ckpt, length)
        times = _bench(bench, length, ckpt) if timed else {}
        prior = ckpt.exists() and json.loads(read_metadata(ckpt).get("config", "{}")).get("prior_width", 0)
        L += ["", f"### `{name}`: the block-size dial", ""]
        L += [
            'Block sampling (docs/design.md, "Blocks"): each block is generated in one parallel pass, then'
            if not prior
            else 'Block sampling (docs/design.md, "Blocks"): each block\'s latents are drawn one after another by the '
            "latent prior, its tokens decoded in one parallel pass, then",
            "read back by the partial encoder before the next. The bound is of what is really sampled at that",
            f"block size ({curve[0]['sequences']} test sequences, IW-{curve[0]['nll'].get('samples', 1)}).",
            "",
        ]
        ref = d.get("block_curve_reference")
        ref = ref if ref and ref["sequences"] == curve[0]["sequences"] else None  # of the curve's rows only
        if ref:
            L += [
                f"On the same {ref['sequences']} test sequences `{Path(ref['checkpoint']).stem}` scores an exact NLL "
                f"of {ref['nats_per_sequence']:.1f} nats: the column 'x reference' divides the bound by it"
                + (
                    " (a subset of the test set is not its average)."
                    if ref["sequences"] < FULL_TEST.get(dataset, 0)
                    else "."
                ),
                "",
            ]
        has_judge = any("samples" in r for r in curve)
        own = any("samples_observation_temperature_1" in r for r in curve)
        r_served = next((r["samples"].get("observation_temperature") for r in curve if "samples" in r), None)
        if own and r_served is not None:
            L += [
                f"Samples as served: observation temperature {r_served:g} (latents drawn at temperature 1, then"
                + (
                    " each token the decoder's most likely one given them;"
                    if r_served == 0
                    else f" tokens given them at temperature {r_served:g};"
                )
                + " docs/api.md). The last two",
                "columns are the same seeds",
                "drawn from the model's own distribution (observation temperature 1), the one the bound is of.",
                "",
            ]
        head = "| block size | NLL bound |" + (" x reference |" if ref else "") + " ms / sequence, batch 1 | batch 32 |"
        rule = "| ---: | ---: |" + (" ---: |" if ref else "") + " ---: | ---: |"
        cols = (judged_cols if has_judge else []) + (own_cols if own else [])
        head += "".join(f" {h} |" for h, _, _ in cols)
        rule += " ---: |" * len(cols)
        L += [head, rule]
        from_eval = False  # a cell the benchmark did not time: the eval's own run, marked
        for r in curve:
            c = r["block_size"]
            cells = []
            for batch in ("1", "32"):
                t = times.get(batch, {}).get(f"vssm:{c}")
                mark = "" if t is not None or not times else " *"
                from_eval = from_eval or bool(mark)
                cells.append(_ms(r["generation_seconds"][f"batch_{batch}"] if t is None else t) + mark)
            ratio = f" {r['nll']['nats_per_sequence'] / ref['nats_per_sequence']:.3f}x |" if ref else ""
            row = f"| {c} | {_fmt(r['nll'][key], spec)} |{ratio} {cells[0]} | {cells[1]} |"
            if has_judge:
                s = r.get("samples", {})
                row += "".join(f" {_fmt(s.get(k), f)} |" for _, k, f in judged_cols)
            if own:
                o = r.get("samples_observation_temperature_1", {})
                row += "".join(f" {_fmt(o.get(k), f)} |" for _, k, f in own_cols)
            L.append(row)
        if times:
            load = bench["machine"]["load_average_start"][0] if bench else 0.0
            cpu = bench["machine"]["cpu"] if bench else "an unrecorded CPU"
            L += [
                "",
                "Times: `python -m bench.run --only blocks` (docs/benchmarks-blocks.json), every model side by",
                f"side in one process on {cpu}, one thread; the machine's load average was {load:.1f} on 2 cores,",
                "so compare ratios only (times move with the CPU and the host's load).",
            ]
            if from_eval:
                L[-1] += " \\* not timed by that benchmark: the model's eval (its JSON), another run and machine state."
        else:
            L += ["", "Times: this model's own `vssm eval` run (its JSON); the benchmark times another model's shapes."]
        pareto = img / f"pareto_{dataset}.png"
        if pareto.exists():
            L += ["", f"![pareto](img/{pareto.name})"]
    L += _judged_section(checkpoints, dataset, evals) if dataset == "mnist" else _text_judged_section(evals)
    grids = [n for n in evals if (img / f"{n}-unconditional.png").exists()]
    if grids:
        L += ["", "### Samples (temperature 1, seeds 0-15, each model as served; `vssm sample`)", ""]
        for n in grids:
            L.append(f"- `{n}`: [unconditional](img/{n}-unconditional.png), [prompted](img/{n}-prompted.png)")
    texts = [n for n in evals if (img / f"{n}.txt").exists()]
    if texts:
        L += ["", "### Samples (`vssm sample`)", ""]
        L += [f"- `{n}`: [text](img/{n}.txt)" for n in texts]
    L += [
        "",
        "Reproduce a row: `vssm train --preset NAME` (checkpoints/README.md), then the `command` in its JSON.",
        "",
    ]
    return L


def render(checkpoints: Path, bench_path: Path, img: Path) -> str:
    evals: dict[str, dict[str, dict]] = {ds: {} for ds in DATASETS}
    for path in sorted(checkpoints.glob("*.json")):
        d = json.loads(path.read_text())
        if d.get("dataset") in evals and "nll" in d:
            evals[d["dataset"]][path.stem] = d
    bench = json.loads(bench_path.read_text()) if bench_path.exists() else None
    L = [
        "# Results",
        "",
        "Which model to call, how good and how fast it is, and its limits. Generated by",
        "`scripts/results_page.py` from the eval JSONs in `checkpoints/`; the dated experiments behind",
        "these models are in [experiments/](experiments/README.md), the speed measurements in",
        "[benchmarks.md](benchmarks.md).",
        "",
    ]
    for ds, e in evals.items():
        if e:
            L += dataset_section(ds, e, bench, img, checkpoints)
    L += ["## Limitations", ""] + [f"- {x}" for x in LIMITATIONS] + [""]
    return "\n".join(L)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoints", type=Path, default=ROOT / "checkpoints")
    p.add_argument("--bench", type=Path, default=ROOT / "docs" / "benchmarks-blocks.json")
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "results.md")
    p.add_argument("--check", action="store_true", help="fail if --out differs from what would be written")
    args = p.parse_args()
    text = render(args.checkpoints, args.bench, args.out.parent / "img")
    if args.check:
        if not args.out.exists() or args.out.read_text() != text:
            print(f"{args.out} is stale: run scripts/results_page.py", file=sys.stderr)
            return 1
        return 0
    args.out.write_text(text)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
