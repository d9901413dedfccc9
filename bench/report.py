"""Write the results as Markdown tables (ratios first) and PNG plots next to the JSON."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers or in CI
import matplotlib.pyplot as plt

from .common import FAMILIES, LABELS

__all__ = ["table1_lines", "write_markdown", "write_plots"]

log = logging.getLogger(__name__)

COLORS = {
    "vssm": "tab:blue",
    "ar-ssm": "tab:orange",
    "ar-transformer": "tab:red",
    "ar-gru": "tab:green",
    "tvae": "tab:purple",
    "vrnn": "tab:brown",
}


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1e3:.2f}"


def _x(v: float | None, digits: int = 2) -> str:
    return "-" if v is None else f"{v:.{digits}f}x"


def _num(v: float | None, digits: int = 2) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def _vectors(bits: int | None) -> str:
    """The machine table's kernel cell: the build's vector width, no kernels (0), or an older run's silence."""
    return "not recorded" if bits is None else f"{bits} bits" if bits else "none (no C compiler)"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return [*out, ""]


# ----- plots ------------------------------------------------------------------------------------
def _plot_generation(gen: dict[str, Any], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 5))
    styles = ["-", "--", ":"]
    for family in FAMILIES:
        for i, batch in enumerate(gen["batches"]):
            pts = sorted((r["T"], r["best_s"]) for r in gen["results"] if r["family"] == family and r["batch"] == batch)
            if pts:
                ax.plot(
                    [p[0] for p in pts],
                    [p[1] for p in pts],
                    styles[i % len(styles)],
                    marker="o",
                    ms=4,
                    color=COLORS[family],
                    label=f"{LABELS[family]}, B={batch}",
                )
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("tokens generated T")
    ax.set_ylabel("seconds (best run)")
    ax.set_title("Unprompted generation time")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _grouped_bars(ax: Any, rows: list[dict[str, Any]], keys: list[str], title: str) -> None:
    """One group of bars per batch size, one bar per timed quantity (ms, best run)."""
    width = len(keys) + 1
    for j, r in enumerate(rows):
        for i, k in enumerate(keys):
            ax.bar(j * width + i, r[k]["best_s"] * 1e3, color=f"C{i}", label=k if j == 0 else None)
    ax.set_xticks([j * width + (len(keys) - 1) / 2 for j in range(len(rows))])
    ax.set_xticklabels([f"B={r['batch']}" for r in rows])
    ax.set_ylabel("ms (best run)")
    ax.set_title(title)
    ax.legend(fontsize=7)


def _plot_limit(lim: dict[str, Any], path: Path) -> None:
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    _grouped_bars(
        a,
        lim["unprompted"],
        ["generate", "decoder_from_zero_state", "decoder"],
        f"Unprompted, T={lim['T']}: generate vs decoder pass",
    )
    _grouped_bars(
        b,
        lim["prompted"],
        ["chunk", "three_passes", "par_over_empties", "decoder_from_state", "par_over_tokens"],
        f"Prompted chunk of {lim['prompted'][0]['n']} vs its three passes",
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_resume(res: dict[str, Any], path: Path) -> None:
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    for family in FAMILIES:
        rows = sorted((r for r in res["results"] if r["family"] == family), key=lambda r: r["position"])
        if not rows:
            continue
        x = [r["position"] for r in rows]
        a.plot(x, [r["chunk"]["best_s"] * 1e3 for r in rows], "-o", ms=4, color=COLORS[family], label=LABELS[family])
        a.plot(x, [r["reprocess"]["best_s"] * 1e3 for r in rows], ":", color=COLORS[family])
        b.plot(x, [r["state_bytes"] for r in rows], "-o", ms=4, color=COLORS[family], label=LABELS[family])
    a.set_xlabel("position P (tokens already in the session)")
    a.set_ylabel(f"ms for {res['chunk']} tokens (solid: resume, dotted: re-process)")
    a.set_yscale("log")
    a.set_title("Resume cost vs prefix")
    a.legend(fontsize=7)
    b.set_xlabel("position P")
    b.set_ylabel("state bytes")
    b.set_yscale("log")
    b.set_title("Session state size vs position")
    b.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_training(tr: dict[str, Any], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 4))
    rows = tr["results"]
    ax.bar(range(len(rows)), [r["tokens_per_s"] for r in rows], color=[COLORS[r["family"]] for r in rows])
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels([r["family"] for r in rows])
    ax.set_ylabel("training tokens / s")
    ax.set_title(f"Training throughput, B={tr['batch']}, T={tr['T']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_plots(results: dict[str, Any], img_dir: Path) -> dict[str, str]:
    """PNGs into ``img_dir``; returns their paths relative to the directory above it (the JSON's)."""
    img_dir.mkdir(parents=True, exist_ok=True)
    plots = {
        "generation": _plot_generation,
        "limit": _plot_limit,
        "resume": _plot_resume,
        "training": _plot_training,
        "blocks": _plot_blocks,
    }
    out = {}
    for part, fn in plots.items():
        path = img_dir / f"bench_{part}.png"
        fn(results[part], path)
        out[part] = f"{img_dir.name}/{path.name}"
        log.info("wrote %s", path)
    return out


# ----- markdown ---------------------------------------------------------------------------------
def write_markdown(results: dict[str, Any], path: Path) -> None:
    m, p = results["machine"], results["params"]
    gen, lim, res, tr = results["generation"], results["limit"], results["resume"], results["training"]
    plots = results["plots"]
    L: list[str] = ["# VSSM serve benchmarks", ""]
    if results["mode"] != "full":
        L += ["**Quick mode (CI smoke test): tiny grid, few repeats; not the committed results.**", ""]
    L += [
        "Random weights (they time the same as trained ones); every comparison is timed side by side in this",
        "one process and reported as a ratio. Times are the best of the timed runs after a warm-up.",
        "",
        "## Machine",
        "",
    ]
    L += _table(
        ["what", "value"],
        [
            ["CPU", " ".join(filter(None, [m["cpu"], m.get("cpu_id") and f"({m['cpu_id']})"]))],
            ["compiled kernels' vectors", _vectors(m.get("kernel_vector_bits"))],
            ["cores (usable)", f"{m['cores']} ({m['usable_cores']})"],
            ["torch / threads", f"{m['torch']} / {m['threads']}"],
            ["python", m["python"]],
            ["load average at start / end", f"{m['load_average_start'][0]:.2f} / {m['load_average_end'][0]:.2f}"],
            ["command", f"`{m['command']}`"],
            ["date (UTC)", m["date"]],
            ["wall-clock of the suite", f"{results['elapsed_s']:.0f} s"],
        ],
    )
    L += ["## Targets", ""]
    L += _table(
        ["target", "measured", "wanted", "status", "conditions"],
        [
            [t["what"], _num(t["measured"]), t["target"], f"**{t['status']}**", t["conditions"]]
            for t in results["targets"]
        ],
    )
    L += _table1_section(results.get("table1"), results["mode"], results["generation"])
    L += ["## Parameters (MNIST `small` preset, matched on generation-time parameters)", ""]
    L += _table(
        ["family", "generation params", "total params", "/ VSSM generation"],
        [[LABELS[f], f"{c['generation']:,}", f"{c['total']:,}", _x(c["vs_vssm_generation"], 3)] for f, c in p.items()],
    )
    L += [
        "VSSM generation params = decoder + partial encoder (the encoder is only used in training);",
        "TVAE likewise; the VRNN counts every parameter (serving runs its posterior on prompts).",
        "Past T = 784 the recurrent families run with `max_position=None` and the transformers (AR and",
        "TVAE) with a longer learned position table (a lookup: compute unchanged).",
        "",
    ]

    L += ["## 1. Generation time vs sequence length", "", f"`{gen['call']}`; ms (best run).", ""]
    for batch in gen["batches"]:
        header = ["family"] + [f"T={T}" for T in gen["lengths"]]
        rows = []
        for f in FAMILIES:
            t = {r["T"]: r["best_s"] for r in gen["results"] if r["family"] == f and r["batch"] == batch}
            rows.append([LABELS[f]] + [_ms(t.get(T)) for T in gen["lengths"]])
        for f in FAMILIES[1:]:
            sp = {r["T"]: r["vssm_speedup"] for r in gen["speedups"] if r["family"] == f and r["batch"] == batch}
            rows.append([f"VSSM speed-up over {f}"] + [_x(sp.get(T), 1) for T in gen["lengths"]])
        L += [f"Batch {batch}:", "", *_table(header, rows)]
    L += [f"![generation]({plots['generation']})", "", "Fitted exponent (slope of log time vs log T):", ""]
    L += _table(
        ["family", "batch", "exponent", "fit over T", "exponent at long T", "long T", "T^2 share at longest T"],
        [
            [
                LABELS[e["family"]],
                str(e["batch"]),
                _num(e["exponent"]),
                ", ".join(map(str, e["lengths"])),
                _num(e["exponent_long"]),
                ", ".join(map(str, e["lengths_long"])) or "-",
                "-" if e.get("quadratic_share") is None else f"{100 * e['quadratic_share']:.0f}%",
            ]
            for e in gen["exponents"]
        ],
    )
    if gen["skipped"]:
        L += ["Not measured:", ""]
        L += [f"- {LABELS[s['family']]}, B={s['batch']}, T={s['T']}: {s['reason']}" for s in gen["skipped"]]
        L += [""]

    L += ["## 2. The limit: generation against the network passes it needs", ""]
    L += _table(
        ["batch", "T", "generate ms", "decoder pass ms", "generate / decoder", "decoder from zero state / decoder"],
        [
            [
                str(r["batch"]),
                str(r["T"]),
                _ms(r["generate"]["best_s"]),
                _ms(r["decoder"]["best_s"]),
                _x(r["ratio"]),
                _x(r["zero_state_overhead"]),
            ]
            for r in lim["unprompted"]
        ],
    )
    L += _table(
        [
            "batch",
            "prompt",
            "chunk",
            "chunk ms",
            "3 passes ms",
            "chunk / 3 passes",
            "f_par EMPTYs ms",
            "f_dec ms",
            "f_par tokens ms",
        ],
        [
            [
                str(r["batch"]),
                str(r["prompt_length"]),
                str(r["n"]),
                _ms(r["chunk"]["best_s"]),
                _ms(r["three_passes"]["best_s"]),
                _x(r["ratio"]),
                _ms(r["par_over_empties"]["best_s"]),
                _ms(r["decoder_from_state"]["best_s"]),
                _ms(r["par_over_tokens"]["best_s"]),
            ]
            for r in lim["prompted"]
        ],
    )
    L += [f"![limit]({plots['limit']})", ""]

    L += [
        "## 3. Resume cost vs prefix (batch 1)",
        "",
        f"Resume: `{res['chunk_call']}`; re-process: `{res['reprocess_call']}`. {res['note']}.",
        "",
    ]
    L += _table(
        ["family", "P", "resume ms", "/ resume at P=0", "re-process ms", "re-process / resume", "state B", "stored B"],
        [
            [
                LABELS[r["family"]],
                str(r["position"]),
                _ms(r["chunk"]["best_s"]),
                _x(r["chunk_vs_first"]),
                _ms(r["reprocess"]["best_s"]),
                _x(r["reprocess_vs_chunk"]),
                f"{r['state_bytes']:,}",
                f"{r['serialized_bytes']:,}",
            ]
            for r in res["results"]
        ],
    )
    L += [f"![resume]({plots['resume']})", ""]
    L += _serving_section(results["serving"])
    L += [f"## 5. Training throughput (B={tr['batch']}, T={tr['T']}, {tr['optimizer']})", ""]
    L += _table(
        ["family", "step ms", "tokens / s", "/ VSSM"],
        [
            [LABELS[r["family"]], _ms(r["step"]["best_s"]), f"{r['tokens_per_s']:,.0f}", _x(r["vs_vssm"])]
            for r in tr["results"]
        ],
    )
    L += [f"![training]({plots['training']})", ""]
    L += _scan_section(results.get("ssm_parallel_mode"))
    L += _blocks_section(results["blocks"], plots)
    L += _rounds_section(results.get("rounds"))
    path.write_text("\n".join(L))
    log.info("wrote %s", path)


def _each_run(values: list[float], fmt: str) -> str:
    """Every run's figure in brackets after a level's median, where there was more than one run."""
    return " (" + ", ".join(fmt.format(v) for v in values) + ")" if len(values) > 1 else ""


def _serving_section(sv: dict[str, Any]) -> list[str]:
    L = ["## 4. Serving", ""]
    if sv.get("skipped"):
        return [*L, sv["note"], ""]
    mt = sv["model_time"]
    L += [
        f"Model: {sv['model']}; sessions generate {sv['chunk_tokens']}-token chunks (streamed), state read from and "
        f"committed to a real Redis on loopback for every chunk; {sv['threads']} torch thread(s).",
        "",
        f"- In process, one chunk: {mt['alone_ms']:.2f} ms alone (median {mt.get('alone_median_ms', 0.0):.2f}), "
        f"{mt['batch16_ms']:.2f} ms for 16 rows batched "
        f"({mt['batch16_per_request_ms']:.2f} ms each): **{mt['throughput_ratio']:.1f}x** model-time throughput.",
        f"- Redis per chunk at 1 client (read + compare-and-set, as the server awaited them): "
        f"{sv['store_ms_per_chunk']:.2f} ms; at more clients the table shows it grow with the event loop's queue.",
        f"- Server overhead per chunk at 1 client (p50 end to end minus the median model time, each pair "
        f"measured back to back, the median of {sv.get('overhead', {}).get('repeats', 1)}): "
        f"**{sv['server_overhead_ms_per_chunk']:.2f} ms**"
        + (
            " (each: " + ", ".join(f"{v:.2f}" for v in sv["overhead"]["per_repeat_ms"]) + " ms)."
            if "overhead" in sv
            else "."
        ),
        f"- End-to-end throughput with batching / without at {sv['ratio_at_clients']} clients: "
        f"**{sv['end_to_end_batching_ratio']:.2f}x**"
        + (
            " (both servers up, each level run on one and then the other; each run's ratio: "
            + ", ".join(f"{v:.2f}" for v in sv["runs_end_to_end_batching_ratio"])
            + ")."
            if "runs_end_to_end_batching_ratio" in sv
            else "."
        ),
        "",
    ]
    runs = sv["levels"]["batching_on"][0].get("runs", 1)
    if runs > 1:
        L += [
            f"Each level ran {runs} times, the levels by turns; a row gives its run of median throughput, "
            "every run's throughput in brackets.",
            "",
        ]
    for key in ("batching_on", "batching_off"):
        L += [f"{key.replace('_', ' ')}:", ""]
        L += _table(
            [
                "clients",
                "tokens / s",
                "first chunk p50 / p99 ms",
                "full p50 / p99 ms",
                "Redis ms / chunk",
                "server CPU ms / chunk",
                "load generator CPU ms / chunk",
            ],
            [
                [
                    str(r["clients"]),
                    f"{r['tokens_per_s']:,.0f}" + _each_run(r.get("runs_tokens_per_s", []), "{:,.0f}"),
                    f"{r['first_chunk_p50_ms']:.1f} / {r['first_chunk_p99_ms']:.1f}",
                    f"{r['full_p50_ms']:.1f} / {r['full_p99_ms']:.1f}",
                    f"{r['store_ms_per_chunk']:.2f}",
                    f"{r['server_cpu_ms_per_chunk']:.1f}",
                    f"{r['client_cpu_ms_per_chunk']:.1f}",
                ]
                for r in sv["levels"][key]
            ],
        )
    wk = sv.get("workers")
    if wk:
        L += [
            "One server process against `vssm serve --workers 2` (batching on, both up, their levels by turns; "
            "the load generator shares the machine's cores):",
            "",
        ]
        L += _table(
            ["clients", "tokens / s, 1 process", "tokens / s, 2 workers", "2 / 1", "full p99 / p50, 1 / 2"],
            [
                [
                    str(r["clients"]),
                    f"{r['one']['tokens_per_s']:,.0f}",
                    f"{r['two']['tokens_per_s']:,.0f}",
                    f"**{r['two_over_one']:.2f}x**" + _each_run(r["runs_two_over_one"], "{:.2f}"),
                    f"{r['one']['full_p99_ms'] / r['one']['full_p50_ms']:.2f} / "
                    f"{r['two']['full_p99_ms'] / r['two']['full_p50_ms']:.2f}",
                ]
                for r in wk["levels"]
            ],
        )
    return L


def _plot_blocks(bl: dict[str, Any], path: Path) -> None:
    """Whole-sequence time against block size, the AR baselines as horizontal lines, per batch; a
    row more for each other MNIST VSSM (``images``) and each text model where the run timed them."""
    texts = ([bl["text"]] if bl.get("text") else []) + list((bl.get("texts") or {}).values())
    parts = [(p, "tokens") for p in [bl, *(bl.get("images") or {}).values()]] + [(p, "bytes") for p in texts]
    batches = list(bl["sequence"])
    fig, axes = plt.subplots(len(parts), len(batches), figsize=(5.5 * len(batches), 4 * len(parts)), squeeze=False)
    for row, (part, unit) in zip(axes, parts, strict=True):
        for ax, batch in zip(row, batches, strict=True):
            sec = part["sequence"][batch]["seconds"]
            sizes = sorted(int(k.split(":")[1]) for k in sec if k.startswith("vssm:"))
            ax.plot(sizes, [sec[f"vssm:{c}"]["median_s"] * 1e3 for c in sizes], "o-", label=LABELS["vssm"] + ", blocks")
            for key, t in sec.items():
                if key.startswith("ar:"):
                    ax.axhline(t["median_s"] * 1e3, ls="--", lw=1, color=COLORS.get(key[3:]), label=LABELS[key[3:]])
            ax.set(xscale="log", yscale="log", xlabel="block size", ylabel="ms per sequence (median)")
            name = f"{part['recipes']['vssm']}, " if part is not bl and "recipes" in part else ""
            ax.set_title(f"{name}{part['length']} {unit}, batch {batch}")
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _sequence_tables(part: dict[str, Any]) -> list[str]:
    """One batch of whole sequences: the VSSM per block size against the AR-SSM, and the baselines."""
    sec = part["seconds"]
    L = _table(
        ["block size", "VSSM ms", "speed-up vs AR-SSM"],
        [[c, _ms(sec[f"vssm:{c}"]["median_s"]), _x(x)] for c, x in part["speedup_vs_ar_ssm"].items()],
    )
    return L + _table(
        ["baseline", "ms"], [[LABELS[k[3:]], _ms(t["median_s"])] for k, t in sec.items() if k.startswith("ar:")]
    )


def _prior_words(vc: dict[str, Any]) -> str:
    """ ", a latent prior of width R (its MLP M wide, reading F features of the partial encoder)" for a
    VSSM config with a latent prior, else ""."""
    if not vc.get("prior_width"):
        return ""
    parts = [f"its MLP {vc['prior_hidden']} wide"] if vc.get("prior_hidden") else []
    if vc.get("prior_context"):
        parts.append(f"reading {vc['prior_context']} features of the partial encoder")
    detail = f" ({', '.join(parts)})" if parts else ""
    return f", a latent prior of width {vc['prior_width']}{detail}"


def _blocks_section(bl: dict[str, Any], plots: dict[str, str]) -> list[str]:
    L = [
        "## 7. Block sampling: one round, and a whole sequence against block size",
        "",
        f"One call of n tokens from position {bl['round_position']}, batch 1 (the VSSM: one block of n,",
        "four passes; the baselines: n recurrent steps); ms, median, side by side.",
        "",
    ]
    vc = bl.get("vssm_config")
    if vc:
        L += [
            f"The VSSM here has the served block model's shapes (decoder {vc['dec_layers']}, partial encoder "
            f"{vc['par_layers']}{', reading the tokens before each block' if vc.get('decoder_tokens') else ''}).",
            "",
        ]
    families = list(next(iter(bl["rounds"].values())))
    L += _table(
        ["n", *[LABELS[f] for f in families]],
        [[n, *[_ms(row[f]["median_s"]) for f in families]] for n, row in bl["rounds"].items()],
    )
    for batch, part in bl["sequence"].items():
        L += [f"A whole sequence of {bl['length']} tokens, batch {batch}, unprompted: ms (median), AR-SSM / VSSM.", ""]
        L += _sequence_tables(part)
    L += [f"![blocks]({plots['blocks']})", ""]
    for name, image in (bl.get("images") or {}).items():
        vc = image["vssm_config"]
        patch = f" reading {vc['par_patch']} tokens a step" if vc.get("par_patch") else ""
        if vc.get("par_period"):  # its tables by column (model/patch.py)
            patch += f", its tables by column mod {vc['par_period']}"
        weights = image.get("weights", "random")
        source = "random weights" if weights == "random" else f"the weights of {weights}"
        L += [
            f"A whole image from {name}'s shapes (decoder {vc['dec_layers']}, partial encoder {vc['par_layers']}"
            f"{patch}, {vc['n_latents']} latent(s) of {vc['n_classes']} classes{_prior_words(vc)}) against block "
            f"size beside the AR-SSM, {source}, at its served observation temperature "
            f"{image.get('observation_temperature', 1.0):g}; its served default is block {image['served_block_size']}.",
            "",
        ]
        for batch, part in image["sequence"].items():
            L += [f"Batch {batch}: ms (median), AR-SSM / VSSM.", ""]
            L += _sequence_tables(part)
    for text in [bl.get("text"), *(bl.get("texts") or {}).values()]:
        if not text:
            continue
        vc, ac = text["vssm_config"], text["ar_ssm_config"]
        name = text.get("recipes", {}).get("vssm", "the bundled text VSSM")
        temp = text.get("observation_temperature", 1.0)
        L += [
            f"Text: a whole sequence of {text['length']} bytes, {name}'s shapes (decoder "
            f"{vc['dec_layers']}, partial encoder {vc['par_layers']}, width {vc['width']}{_prior_words(vc)}) "
            f"beside the text AR-SSM's ({ac['layers']} layers, width {ac['width']}); its served default is block "
            f"{text['served_block_size']}"
            + (" (one pass)" if text["served_block_size"] >= text["length"] else "")
            + f", at its served observation temperature {temp:g}"
            + (
                " (tokens given the latents by argmax; `vssm-t1` is the same call with them drawn)."
                if temp == 0
                else "."
            ),
            "",
        ]
        for batch, part in text["sequence"].items():
            L += [f"Batch {batch}: ms (median), AR-SSM / VSSM.", ""]
            L += _sequence_tables(part)
    return L


def _rounds_section(rd: dict[str, Any] | None) -> list[str]:
    """One round against this CPU's limits (bench/rounds.py: the cost model)."""
    if not rd:
        return []
    pk = rd["peaks"]
    L = [
        "## 8. One block round against the limit",
        "",
        f"A lone VSSM round of n tokens from position {rd['position']}, batch {rd['batch']}: four passes of n",
        "steps (bench/rounds.py counts their FLOPs and bytes from the layer shapes). This CPU, measured in",
        f"the same run: float32 matmul {pk['matmul_gflops']:.0f} GFLOP/s ({pk['matmul_size']}^3), read bandwidth",
        f"{pk['cache_gbytes_per_s']:.0f} GB/s over a cache-sized buffer ({pk['cache_buffer_bytes'] / 1e6:.1f} MB) and "
        f"{pk['dram_gbytes_per_s']:.0f} GB/s over {pk['dram_buffer_bytes'] / 1e6:.0f} MB, one eager PyTorch call "
        f"{pk['call_us']:.1f} us.",
        "The roofline is max(FLOPs / matmul rate, bytes / cache bandwidth); the dispatch floor is the",
        "round's PyTorch calls times one call's time.  Each network pass runs as one compiled call "
        '(model/native.py: the recurrence, norms, linears and head in C) where it is faster; "on matrices" is '
        "the same round in PyTorch with every SSM on its matrices (`S4D.short`); for that gain each size is "
        "timed alone on each path (\"alone\"), since round-robin the matrices' megabytes evict the kernel's "
        "kilobytes from the caches."
        if rd.get("kernel")
        else "round's PyTorch calls times one call's time.  No C compiler here: every SSM ran on its matrices.",
        "",
    ]
    kernel = bool(rd.get("kernel"))
    L += _table(
        [
            "n",
            "ms",
            *(["alone", "alone on matrices", "kernel gain"] if kernel else []),
            "MFLOP",
            "MB",
            "roofline ms",
            "calls",
            "dispatch floor ms",
            "/ roofline",
            "/ (roofline + floor)",
        ],
        [
            [
                str(r["n"]),
                _ms(r["measured"]["median_s"]),
                *(
                    [_ms(r["alone"]["median_s"]), _ms(r["matrices"]["median_s"]), _x(r["kernel_speedup"])]
                    if kernel
                    else []
                ),
                f"{r['flops'] / 1e6:.1f}",
                f"{r['bytes'] / 1e6:.2f}",
                f"{r['roofline_s'] * 1e3:.3f}",
                str(r["calls"]),
                f"{r['dispatch_s'] * 1e3:.2f}",
                _x(r["vs_roofline"], 1),
                _x(r["vs_roofline_plus_dispatch"]),
            ]
            for r in rd["rounds"]
        ],
    )
    if rd.get("crossover"):
        L += [
            "",
            f"Where the kernel stops paying (bench/rounds.py, kernel_crossover): a pass of T steps from a state at "
            f"batch B through the partial encoder and then the decoder, on the kernel and on the matrices, "
            f"alternately. Passes with B x T at most {rd['scan_max_tokens']} take the kernel (`S4D.scan_max_tokens`).",
            "",
        ]
        L += _table(
            ["B", "T", "B x T", "kernel ms", "matrices ms", "kernel gain", "default path"],
            [
                [
                    str(r["batch"]),
                    str(r["steps"]),
                    str(r["batch"] * r["steps"]),
                    _ms(r["kernel"]["median_s"]),
                    _ms(r["matrices"]["median_s"]),
                    _x(r["kernel_speedup"]),
                    "kernel" if r["on_kernel"] else "matrices",
                ]
                for r in rd["crossover"]
            ],
        )
    if rd.get("image_flops"):
        L += [
            "",
            f"A whole {rd['image_length']}-token sequence's FLOPs at batch 1 (the cost model): the AR-SSM's",
            "steps against block sampling's rounds.  Their ratio is the speed-up over the AR-SSM that block",
            "sampling would have if both ran at the same FLOP rate; a measured speed-up beyond it comes from",
            "the AR-SSM's cost per step",
            "(a call per layer and step), not from the arithmetic.",
            "",
        ]
        L += _table(
            ["block", "AR-SSM MFLOP", "VSSM MFLOP", "AR-SSM / VSSM FLOPs"],
            [
                [c, f"{f['ar_ssm'] / 1e6:.1f}", f"{f['vssm'] / 1e6:.1f}", _x(f["ratio"])]
                for c, f in rd["image_flops"].items()
            ],
        )
    return L


def _scan_section(sc: dict[str, Any] | None) -> list[str]:
    """Why the S4D parallel mode is an FFT convolution (model/ssm.py): the alternatives, measured."""
    if not sc:
        return []
    L = [
        "## 6. The S4D layer's parallel mode, against the alternatives",
        "",
        f"{sc['layer']}, forward from a non-zero state; all methods agree (max relative error shown).",
        "",
    ]
    L += _table(
        ["method", "batch", "T", "ms", "/ fft", "max rel. err"],
        [
            [r["method"], str(r["batch"]), str(r["T"]), _ms(r["best_s"]), _x(r["vs_fft"]), f"{r['max_rel_err']:.0e}"]
            for r in sc["results"]
        ],
    )
    return L


def _yes(v: bool | None) -> str:
    return "-" if v is None else "yes" if v else "no"


def _bound(e: dict[str, Any]) -> str:
    return "exact" if e["bound"] == "exact" else f"{e['bound'].upper()}-{e['samples']} bound"


def _nll_cell(entries: list[dict[str, Any]]) -> str:
    """The family's best bundled MNIST NLL, or "not trained": never a number that was not measured."""
    if not entries:
        return "not trained"
    e = entries[0]
    return f"{e['nats_per_sequence']:.2f} ({e['checkpoint']}, {_bound(e)})"


def _span(row: dict[str, Any]) -> str:
    lengths = row["exponent_lengths"]
    return f"T {lengths[0]}-{lengths[-1]}" if lengths else "-"


def _agree_cell(agrees: dict[str, bool | None]) -> str:
    known = {k: v for k, v in agrees.items() if v is not None}
    differ = [k for k, v in known.items() if not v]
    cell = f"{len(known) - len(differ)}/{len(agrees)}"
    if differ:
        cell += " (differs: " + ", ".join(differ) + ")"
    if len(known) < len(agrees):
        cell += " (not measured: " + ", ".join(k for k in agrees if k not in known) + ")"
    return cell


def _dependence_cell(parallel: bool | None, dep: dict[str, Any] | None) -> str:
    """The parallel column's measured cell: the decision, and how many later distributions moved."""
    if dep is None:
        return "-"
    if parallel is None:  # no verdict: the test could not tell, and says why
        return f"- ({dep.get('verdict', 'not measured')})"
    return f"{_yes(parallel)}: {dep['moved']} of {dep['later']}"


def table1_lines(t1: dict[str, Any]) -> list[str]:
    """The seeds' Table 1 beside its measured cells, one row per family (Markdown)."""
    rows = []
    for r in t1["rows"]:
        p, m, res = r["paper"], r["measured"], r["resume"]
        rows.append(
            [
                f"{r['model']} (`{r['family']}`)",
                p["generation"],
                "-" if m["generation"] is None else f"{m['generation']}: {r['exponent']:.2f} ({_span(r)})",
                _yes(p["parallel"]),
                _dependence_cell(m["parallel"], r.get("dependence")),
                _yes(p["resume"]),
                "-" if m["resume"] is None else f"{_yes(m['resume'])}: {res['reprocess_vs_resume']:.2f}x",
                "-" if res is None else _x(res["cost_growth"]),
                "-" if res is None else _x(res["state_growth"], 1),
                _nll_cell(r["likelihood"]),
                _agree_cell(r["agrees"]),
            ]
        )
    first, last = t1["rows"][0]["resume_positions"]
    header = [
        "model",
        "generation (paper)",
        "measured: exponent",
        "parallel (paper)",
        "measured: later distributions moved",
        "resume (paper)",
        f"measured: re-process / resume, P={last}",
        f"resume cost P={last} / {first}",
        f"state bytes P={last} / {first}",
        "MNIST test NLL, nats (bundled)",
        "agrees with the paper",
    ]
    return _table(header, rows)[:-1]


def _windows_note(t1: dict[str, Any], gen: dict[str, Any]) -> list[str]:
    """The VSSM's exponent served (in generation windows) and in one pass, side by side."""
    op = t1.get("vssm_one_pass") or {}
    if op.get("exponent") is None:
        return []
    row = next(r for r in t1["rows"] if r["family"] == "vssm")
    one = {r["T"]: r["best_s"] for r in op["results"]}
    served = {r["T"]: r["best_s"] for r in gen["results"] if r["family"] == "vssm" and r["batch"] == op["batch"]}
    both = sorted(set(one) & set(served))
    cost = ""
    if both and both[-1] > op["window"]:
        T = both[-1]
        windows = -(-T // op["window"])
        # the one pass stands in for the windows' own passes; the rest of the served time is hand-offs
        per_handoff = (served[T] - one[T]) / (windows - 1) / (one[T] / windows)
        if per_handoff >= 0:
            cost = (
                f"; at T={T}, served / one pass {_x(served[T] / one[T])}: each of the {windows - 1} hand-offs "
                f"between its {windows} windows costs {_x(per_handoff, 1)} a window's own pass"
            )
        else:  # the windows beat the one long pass: no hand-off cost to quote
            cost = (
                f"; at T={T}, served / one pass {_x(served[T] / one[T])}: in this run the {windows} windows took "
                "less time than the one long pass, whose per-token cost grows with its length"
            )
    return [
        f"The VSSM generates in windows of {op['window']} tokens (model/vssm.py `gen_window`, to bound memory). "
        f"At B={op['batch']} its exponent over T = {', '.join(map(str, op['exponent_lengths']))} is "
        f"**{_num(row['exponent'])} served** and **{_num(op['exponent'])} with every T in one pass** (the same "
        f"tokens){cost}. Each window starts from the previous one's state (its readout and advance read "
        "(H, 2N, window) tables per layer), and the fit spans one window to several, so the windows' costs "
        "against the one pass's, not the model's order, set the served exponent; their number grows with T, "
        "so past the measured range the served path is O(T), at its own constant.",
        "",
    ]


def _table1_section(t1: dict[str, Any] | None, mode: str, gen: dict[str, Any]) -> list[str]:
    if not t1:
        return []
    th, par, rows = t1["thresholds"], t1["parallel"], t1["rows"]
    r0 = rows[0]
    L = [
        "## Table 1: the paper's claims, measured",
        "",
        "The seeds' Table 1 (model properties), each cell read from this run beside the paper's. How each",
        "measured cell is decided:",
        "",
        f"- **generation**: the exponent of part 1 (slope of log time vs log T, unprompted) at batch "
        f"{r0['exponent_batch']}, fit over T >= 1024 where two such T were measured (else over every T; the "
        f"range is in the cell); O(T^2) from {th['quadratic_from_exponent']:g} up, O(T) below.",
        f"- **parallel**: one sequence of T = {t1['dependence']['T']} tokens at batch 1, drawn twice from the same "
        "state and seed, its tokens sampled and then their most likely values, nothing else drawn differently (a "
        "latent family's latents at the same temperature, its tokens at observation temperature 1 and 0); parallel "
        "where none of the distributions after the first token that differs moved (by more than "
        f"{th['moved_from']:g} in a log-probability), the distributions up to it being equal as a control: no token "
        "feeds back, so with latents drawn independently per step (the VSSM's) or in one pass (the TVAE's) one pass "
        "gives every position. A sequential family reads each token back before the next. "
        "The cell counts the later distributions that moved. (The time of T chained one-token calls against one "
        "call, below, decided this column until the AR Transformer's loop was compiled: for a sequential family "
        "it is 1 + the per-call overhead / a step, and a compiled step is small against a call's Python.)",
        f"- **resume**: a {r0['resume_positions'][0]}-token round from the stored state at P = "
        f"{r0['resume_positions'][1]} against re-reading the P-token prefix and generating the round "
        f"(part 3); resumable from {th['resumable_from_reprocess_vs_resume']:g}x up (1.0x: the prefix is re-read). "
        "Beside it, the round's cost and the state's bytes against P = "
        f"{r0['resume_positions'][0]}: a KV cache resumes, but grows with P, which is the O(T^2).",
        f"- **likelihood**: not measured here; {t1['likelihood_source']}, the family's best bundled "
        "checkpoint (IW bounds are upper bounds on the NLL, AR models' values exact).",
        "",
    ]
    if mode != "full":
        L += [
            "**Quick mode: the exponents are fit over short T at a small batch, where per-token costs hide",
            "a T^2 term, so the generation column is not the full run's; the other columns are.**",
            "",
        ]
    L += [*table1_lines(t1), ""]
    both = [r["model"] for r in rows if r["linear_parallel_resumable"]]
    L += [f"O(T), parallel and resumable in measurement: **{', '.join(both) or 'none'}**.", ""]
    L += _windows_note(t1, gen)
    differ = [(r["model"], k) for r in rows for k, v in r["agrees"].items() if v is False]
    if differ:
        L += [
            "Cells that differ from the paper: " + "; ".join(f"{name} {cell}" for name, cell in differ) + ".",
            "",
        ]
    trained = [(r["model"], e) for r in rows for e in r["likelihood"]]
    if trained:
        L += ["Every bundled MNIST checkpoint's test NLL (nats per image):", ""]
        L += [f"- {name}: `{e['checkpoint']}` {e['nats_per_sequence']:.2f} ({_bound(e)})" for name, e in trained]
        L += [""]
    lengths = par["lengths"]
    L += [
        f"Calls over time, batch 1: `{par['token_calls']}` against `{par['one_call']}` (best runs). A sequential",
        "family's ratio is 1 + its per-call overhead / a step; it no longer decides the parallel column (above).",
        "",
    ]
    detail = []
    for f in FAMILIES:
        by_T = {x["T"]: x for x in par["results"] if x["family"] == f}
        if not by_T:
            continue
        lo, hi = by_T[min(by_T)], by_T[max(by_T)]
        detail.append(
            [
                LABELS[f],
                *[
                    "-"
                    if T not in by_T
                    else f"{_ms(by_T[T]['token_calls']['best_s'])} / {_ms(by_T[T]['one_call']['best_s'])}"
                    for T in lengths
                ],
                *["-" if T not in by_T else _x(by_T[T]["speedup"], 1) for T in lengths],
                _x(hi["speedup"] / lo["speedup"]) if hi is not lo else "-",
            ]
        )
    L += _table(
        [
            "family",
            *[f"T={T}: one-token calls / one call, ms" for T in lengths],
            *[f"speed-up T={T}" for T in lengths],
            f"speed-up T={lengths[-1]} / T={lengths[0]}",
        ],
        detail,
    )
    if par["skipped"]:
        L += [f"- not measured: {x['family']} at T={x['T']}: {x['reason']}" for x in par["skipped"]] + [""]
    return L
