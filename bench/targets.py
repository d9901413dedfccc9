"""The issue's targets, each checked against this run's own measurements (ratios, never absolutes)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from vssm.model.recipes import RECIPES

from .common import BLOCK_RECIPE, TEXT_RECIPES, Settings

__all__ = ["evaluate_targets"]

TARGET_T = 784  # a full MNIST image
EXPONENT_BAND = (0.75, 1.25)  # "~1": linear up to the FFT's log factor and per-call overhead
EXPONENT_ABOVE = 1.2  # "clearly above 1"


def _row(
    what: str, measured: float | None, target: str, ok: Callable[[float], bool] | None, conditions: str
) -> dict[str, Any]:
    """``ok`` None: a reference row, shown for comparison but not a target."""
    status = "N/A" if measured is None else "INFO" if ok is None else "PASS" if ok(measured) else "MISS"
    return {"what": what, "measured": measured, "target": target, "status": status, "conditions": conditions}


def _one_pass_decomposition(results: dict[str, Any], batch: int, T: int) -> list[dict[str, Any]]:
    """The one-pass speed-up over the AR-SSM at batch 1 as (FLOP ratio) x (FLOP-rate ratio): the cost model counts
    both sequences' FLOPs for part 1's models at its T, part 1 times them, so what the 30x target asks of the
    arithmetic is read here."""
    gen = results["generation"]
    flops = (gen.get("one_pass_flops") or {}).get(str(T))  # part 1's own models, at its T (bench/run.py)
    times = {(r["family"], r["batch"], r["T"]): r["best_s"] for r in gen["results"]}
    vssm_s, ar_s = times.get(("vssm", batch, T)), times.get(("ar-ssm", batch, T))
    if not flops or batch != 1 or not vssm_s or not ar_s:
        return []
    peaks = (results.get("rounds") or {}).get("peaks")
    peak = f"; this run's float32 matmul {peaks['matmul_gflops']:.0f} GFLOP/s (part 8)" if peaks else ""
    vs_rate, ar_rate = flops["vssm"] / vssm_s / 1e9, flops["ar_ssm"] / ar_s / 1e9
    return [
        _row(
            "AR-SSM / VSSM one-pass FLOPs for a whole sequence (the speed-up at equal FLOP rates)",
            flops["ratio"],
            "(reference)",
            None,
            f"T={T}, B=1: the cost model (bench/rounds.py), {flops['ar_ssm'] / 1e6:.0f} against "
            f"{flops['vssm'] / 1e6:.0f} MFLOP, both as the recurrence computes them; the one-pass speed-up over "
            "ar-ssm is this times the row below",
        ),
        _row(
            "VSSM one pass's FLOP rate / the AR-SSM loop's",
            vs_rate / ar_rate,
            "(reference)",
            None,
            f"T={T}, B=1, part 1's best times: {vs_rate:.1f} against {ar_rate:.1f} GFLOP/s in recurrence FLOPs "
            f"(the recurrence kernel's own FLOPs where batch x steps is within native.max_tokens(), as here; "
            f"FFT convolutions past it, whose rate would be an effective one){peak}",
        ),
    ]


def evaluate_targets(results: dict[str, Any], s: Settings) -> list[dict[str, Any]]:
    gen, lim, res = results["generation"], results["limit"], results["resume"]
    small, large = s.batches[0], s.batches[-1]
    T = TARGET_T if TARGET_T in s.gen_lengths else max(s.gen_lengths)
    stand_in = "" if s.mode == "full" else f" (quick mode: stands in for T={TARGET_T}, B=1 / 32)"
    rows = []

    speed = {(r["family"], r["batch"], r["T"]): r["vssm_speedup"] for r in gen["speedups"]}
    for batch, need in ((small, 30.0), (large, 5.0)):
        for base in ("ar-ssm", "ar-transformer"):
            rows.append(
                _row(
                    f"VSSM unprompted generation speed-up over {base}",
                    speed.get((base, batch, T)),
                    f">= {need:g}x",
                    lambda v, need=need: v >= need,
                    f"T={T}, B={batch}{stand_in}",
                )
            )
    rows += _one_pass_decomposition(results, small, T)
    for r in lim["unprompted"]:
        rows.append(
            _row(
                "VSSM unprompted generation / one decoder forward pass",
                r["ratio"],
                "<= 1.5x",
                lambda v: v <= 1.5,
                f"T={r['T']}, B={r['batch']}{stand_in}",
            )
        )

    last = max(s.resume_positions)
    # Growth with the prefix is judged between real states: at P = 0 the state is all zeros and
    # every network skips its initial-state readout (model/network.py), a shortcut only fresh
    # sessions get.  The P = 0 ratio is still shown, as a reference row.
    first = min(p for p in s.resume_positions if p > 0)
    for family in ("vssm", "ar-ssm", "ar-gru", "ar-transformer", "vrnn", "tvae"):
        by_pos = {r["position"]: r for r in res["results"] if r["family"] == family}
        if not by_pos:
            continue
        ratio = by_pos[last]["chunk"]["best_s"] / by_pos[first]["chunk"]["best_s"]
        if 0 in by_pos:
            rows.append(
                _row(
                    f"{family} chunk latency, prefix {last} / prefix 0 (fresh state)",
                    by_pos[last]["chunk_vs_first"],
                    "(reference)",
                    None,
                    "P = 0 skips the zero state's readout",
                )
            )
        if family in ("ar-transformer", "tvae"):  # their KV caches grow with P by design: shown, not a target
            rows.append(
                _row(
                    f"{family} chunk latency, prefix {last} / prefix {first}",
                    ratio,
                    "(reference)",
                    None,
                    f"B=1, {s.chunk} tokens, KV cache grows with P",
                )
            )
            continue
        rows.append(
            _row(
                f"{family} chunk latency, prefix {last} / prefix {first}",
                ratio,
                "<= 1.1x",
                lambda v: v <= 1.1,
                f"B=1, {s.chunk} tokens, state-based resume",
            )
        )
    for family in ("vssm", "ar-ssm", "vrnn"):
        sizes = [r["state_bytes"] for r in res["results"] if r["family"] == family]
        if sizes:
            rows.append(
                _row(
                    f"{family} state bytes, largest / smallest over positions",
                    max(sizes) / min(sizes),
                    "== 1 (constant)",
                    lambda v: v == 1.0,
                    f"positions {', '.join(map(str, s.resume_positions))}",
                )
            )

    sv = results.get("serving", {})
    if not sv.get("skipped"):
        mt = sv["model_time"]
        rows.append(
            _row(
                "batching: model-time throughput, 16 requests batched / alone",
                mt["throughput_ratio"],
                ">= 3x",
                lambda v: v >= 3.0,
                f"{sv['chunk_tokens']}-token chunks, in process",
            )
        )
        n = sv["ratio_at_clients"]
        rows.append(
            _row(
                f"batching: end-to-end throughput on / off, {n} clients",
                sv["end_to_end_batching_ratio"],
                ">= 1.5x",
                lambda v: v >= 1.5,
                "real server + Redis on loopback"
                + ("" if n == 16 else " (quick mode: stands in for 16 clients)")
                + (
                    "; the median run of each, run by turns with batching off; each pair: "
                    + ", ".join(f"{v:.2f}" for v in sv["runs_end_to_end_batching_ratio"])
                    if "runs_end_to_end_batching_ratio" in sv
                    else ""
                ),
            )
        )
        budget = max(5.0, 0.2 * mt["alone_ms"])
        rows.append(
            _row(
                "server overhead per chunk (HTTP, validation, Redis read + write), ms",
                sv["server_overhead_ms_per_chunk"],
                f"<= {budget:.1f} ms (max of 5 ms, 20% of model time)",
                lambda v, b=budget: v <= b,
                "1 client, p50 end-to-end minus the median in-process model time, median of back-to-back pairs",
            )
        )

        lv = {r["clients"]: r for r in sv["levels"]["batching_on"]}
        if 64 in lv and 16 in lv:
            hi, lo = lv[64], lv[16]
            runs = hi.get("runs", 1)
            how = "one run each"
            if runs > 1:  # every pair of runs taken side by side, for the spread
                pairs = zip(hi["runs_tokens_per_s"], lo["runs_tokens_per_s"], strict=True)
                how = f"medians of {runs} interleaved runs; each pair: " + ", ".join(f"{a / b:.2f}" for a, b in pairs)
            rows.append(
                _row(
                    "serving throughput, 64 clients / 16 clients",
                    hi["tokens_per_s"] / lo["tokens_per_s"],
                    ">= 0.9",
                    lambda v: v >= 0.9,
                    f"batching on, {sv['chunk_tokens']}-token streamed session chunks, {how}",
                )
            )
            spread = ""
            if runs > 1:
                spread = "; each run: " + ", ".join(f"{v:.2f}" for v in hi["runs_p99_over_p50"])
            rows.append(
                _row(
                    "chunk latency at 64 clients, p99 / p50",
                    hi["full_p99_ms"] / hi["full_p50_ms"],
                    "<= 4x",
                    lambda v: v <= 4.0,
                    f"batching on, the median run{spread}",
                )
            )

        for r in sv.get("workers", {}).get("levels", []):
            rows.append(
                _row(
                    f"serving throughput, 2 worker processes / 1, {r['clients']} clients",
                    r["two_over_one"],
                    "(reference)",
                    None,
                    "vssm serve --workers 2 beside one process, levels by turns; each pair: "
                    + ", ".join(f"{v:.2f}" for v in r["runs_two_over_one"]),
                )
            )

    rows += _block_rows(results, s)

    # Complexity is a long-T property: at short T a fixed per-call cost (Python, kernel launches)
    # flattens every curve, so each exponent target is judged on T >= 1024 when measured.
    lo, hi = EXPONENT_BAND
    for e in gen["exponents"]:
        long_ok = e["exponent_long"] is not None
        value = e["exponent_long"] if long_ok else e["exponent"]
        used = ", ".join(map(str, e["lengths_long"] if long_ok else e["lengths"]))
        where = f"B={e['batch']}, fit over T = {used}" + ("" if long_ok else " (no two T >= 1024 measured)")
        if e["family"] in ("vssm", "ar-ssm", "vrnn"):
            rows.append(
                _row(
                    f"{e['family']} generation exponent at long T",
                    value,
                    f"~1 (in [{lo}, {hi}])",
                    lambda v: lo <= v <= hi,
                    where,
                )
            )
        elif e["family"] == "ar-transformer":
            rows.append(
                _row(
                    "ar-transformer generation exponent at long T",
                    value,
                    f">= {EXPONENT_ABOVE}",
                    lambda v: v >= EXPONENT_ABOVE,
                    where,
                )
            )
        elif e["family"] == "tvae":  # issue 24: at batch 32, where attention outweighs the per-token work
            target = e["batch"] == large
            rows.append(
                _row(
                    "tvae generation exponent at long T",
                    value,
                    f">= {TVAE_EXPONENT}" if target else "(reference)",
                    (lambda v: v >= TVAE_EXPONENT) if target else None,
                    where,
                )
            )
    rows += _table1_rows(results, s)
    return rows


TVAE_EXPONENT = 1.5  # issue 24: "TVAE's exponent at long T >= 1.5 at batch 32"
TABLE1_CELLS = 3  # generation, parallel, resume: the paper's columns


def _table1_rows(results: dict[str, Any], s: Settings) -> list[dict[str, Any]]:
    """Issue 24: the seeds' Table 1 measured (part 9, bench/table1.py)."""
    t1 = results.get("table1")
    if not t1:
        return []
    rows = []
    th = t1["thresholds"]
    by_family = {r["family"]: r for r in t1["rows"]}
    vrnn = by_family.get("vrnn")
    if vrnn:
        # issue 24's "no parallel speed-up", read as the parallel column is: by the dependence test (bench/table1.py).
        # The time of T one-token calls against one call decided it until the VRNN's loop was compiled
        # (csrc/vrnn_loop.c); for a sequential family that ratio is 1 + a call's overhead / a step, and a compiled
        # step is small against a call's Python, so it is shown beside, with both figures, for reference
        dep = vrnn.get("dependence") or {}
        moved, later = dep.get("moved"), dep.get("later")
        rows.append(
            _row(
                "vrnn: share of the later distributions that moved when an earlier token changed",
                None if moved is None or not later else moved / later,
                "sequential: any moved (each token is read back before the next: no parallel generation)",
                lambda v: dep.get("verdict") == "sequential",
                f"B=1, T={dep.get('T')}, tokens sampled vs most likely, nothing else drawn differently "
                f"(bench/table1.py); verdict: {dep.get('verdict')}, {moved} of {later} moved",
            )
        )
        need = th["parallel_from_speedup"]
        T = vrnn["parallel_T"]
        timed = next(
            (r for r in (t1.get("parallel") or {}).get("results", []) if r["family"] == "vrnn" and r["T"] == T), None
        )
        detail = ""
        if timed:
            one, calls = timed["one_call"]["best_s"], timed["token_calls"]["best_s"]
            detail = f": {1e6 * calls / T:.0f} us a one-token call, {1e6 * one / T:.1f} us a step of one call"
        rows.append(
            _row(
                "vrnn speed-up of one T-token call over T one-token calls",
                vrnn["parallel_speedup"],
                "(reference)",
                None,
                f"B=1, T={T}, resumable calls from one state{detail}; 1 + a call's overhead / a step (it decided the "
                f"row above, at < {need:g}x, until the VRNN's loop was compiled)",
            )
        )
    both = [r["family"] for r in t1["rows"] if r["linear_parallel_resumable"]]
    rows.append(
        _row(
            "families O(T), parallel and resumable in measurement",
            float(len(both)),
            "== 1, the VSSM",
            lambda v: v == 1 and both == ["vssm"],
            "measured: "
            + (", ".join(both) or "none")
            + ("" if s.mode == "full" else " (quick mode: short-T exponents)"),
        )
    )
    cells = [v for r in t1["rows"] for v in r["agrees"].values()]
    differ = [f"{r['family']} {k}" for r in t1["rows"] for k, v in r["agrees"].items() if v is False]
    rows.append(
        _row(
            "Table 1 cells that agree with the paper",
            float(sum(v is True for v in cells)),
            f"== {TABLE1_CELLS * len(t1['rows'])} (every cell), or the difference shown",
            lambda v: v == TABLE1_CELLS * len(t1["rows"]),
            "differ: " + (", ".join(differ) or "none") + f"; not measured: {sum(v is None for v in cells)}",
        )
    )
    return rows


ROUND_N = 16  # the round of the fast-rounds targets
ROUND_MS = 1.2  # its latency target at batch 1
ROUND_VS_LIMIT = 3.0  # and its distance to the cost model's roofline
BLOCK = 16  # block size of the whole-image speed targets
BLOCK_SPEEDUP = (10.0, 5.0)  # over the AR-SSM at the small and large batch
SERVED_SPEEDUP = 10.0  # the block-sampling issue's: at the served default block size, batch 1
TEXT_SPEEDUP = 5.0  # its text target: 256 bytes at the text VSSM's served default, batch 1


def _block_rows(results: dict[str, Any], s: Settings) -> list[dict[str, Any]]:
    """Block sampling's speed (parts 7 and 8): a round, and a whole image at block 16."""
    rows = []
    rd = results.get("rounds")
    by_n = {r["n"]: r for r in rd["rounds"]} if rd else {}
    if ROUND_N in by_n:
        r = by_n[ROUND_N]
        threads = results["machine"]["threads"]
        rows.append(
            _row(
                f"VSSM {ROUND_N}-token round from a state, ms",
                r["measured"]["median_s"] * 1e3,
                f"<= {ROUND_MS} ms",
                lambda v: v <= ROUND_MS,
                f"B=1, position {rd['position']}, four passes, {threads} thread(s) (an absolute time: see the load)",
            )
        )
        rows.append(
            _row(
                f"VSSM {ROUND_N}-token round / the cost model's roofline",
                r["vs_roofline"],
                f"<= {ROUND_VS_LIMIT:g}x",
                lambda v: v <= ROUND_VS_LIMIT,
                "roofline: max(FLOPs / matmul rate, bytes / cache bandwidth), measured in this run",
            )
        )
    flops = (rd or {}).get("image_flops", {}).get(str(BLOCK))
    if flops:
        rows.append(
            _row(
                f"AR-SSM / VSSM block-{BLOCK} FLOPs for a whole sequence (the speed-up at equal FLOP rates)",
                flops["ratio"],
                "(reference)",
                None,
                "the cost model of part 8: a measured speed-up beyond this comes from per-step overhead",
            )
        )
    bl = results.get("blocks")
    for (batch, part), need in zip((bl or {}).get("sequence", {}).items(), BLOCK_SPEEDUP, strict=False):
        rows.append(
            _row(
                f"VSSM block-{BLOCK} generation speed-up over ar-ssm",
                part["speedup_vs_ar_ssm"].get(str(BLOCK)),
                f">= {need:g}x",
                lambda v, need=need: v >= need,
                f"T={bl['length']}, B={batch}, unprompted" + ("" if s.mode == "full" else " (quick mode)"),
            )
        )
    served = RECIPES[BLOCK_RECIPE].default_block_size
    first = next(iter((bl or {}).get("sequence", {}).items()), None)
    if served and first is not None:
        batch, part = first
        rows.append(
            _row(
                f"VSSM block-{served} (served default) generation speed-up over ar-ssm",
                part["speedup_vs_ar_ssm"].get(str(served)),
                f">= {SERVED_SPEEDUP:g}x",
                lambda v: v >= SERVED_SPEEDUP,
                f"{BLOCK_RECIPE}'s shapes, T={bl['length']}, B={batch}, unprompted"
                + ("" if s.mode == "full" else " (quick mode)"),
            )
        )
    quick = "" if s.mode == "full" else " (quick mode)"

    def served_row(
        part: dict[str, Any], batch: str, name: str, against: str, need: float, conditions: str
    ) -> dict[str, Any]:
        """The speed-up of bundled VSSM ``name``'s served default (a part of ``run_image`` or ``run_text``)."""
        c = part["served_block_size"]
        seq = part["sequence"][batch]
        again = seq.get("served")  # the pair timed again with more runs (older runs: the sweep's one run)
        return _row(
            f"{name} ({'one pass' if c >= part['length'] else f'block-{c}'}, served default) "
            f"generation speed-up over {against}",
            again["speedup_vs_ar_ssm"] if again else seq["speedup_vs_ar_ssm"].get(str(c)),
            f">= {need:g}x",
            lambda v: v >= need,
            conditions + (f", median of {again['repeats']} interleaved runs" if again else "") + quick,
        )

    for name, image in ((bl or {}).get("images") or {}).items():
        # served at block 16, a model answers the block-16 targets at both batches; else its first batch
        # answers the block-sampling issue's target at its served block
        if image.get("served_block_size") == BLOCK:
            needs = list(zip(image.get("sequence", {}), BLOCK_SPEEDUP, strict=False))
        else:
            needs = [(batch, SERVED_SPEEDUP) for batch in list(image.get("sequence", {}))[:1]]
        for batch, need in needs:
            conditions = f"{name}'s shapes, T={image['length']}, B={batch}, unprompted"
            rows.append(served_row(image, batch, name, "ar-ssm", need, conditions))
        mixed = image.get("mixed")  # runs before the thirty-eighth session have none
        if mixed:
            rows.append(
                _row(
                    f"{name}: {mixed['rows']} sessions at different places in their blocks, batched / one at a time",
                    mixed["throughput_ratio"],
                    "(reference)",
                    None,
                    f"one kept {mixed['chunk']}-token chunk each, at {mixed['places']} places of block "
                    f"{mixed['block_size']}, in process, medians of {len(mixed['seconds']['batched']['runs_s'])} "
                    "interleaved runs",
                )
            )
    texts = [(bl or {}).get("text"), *((bl or {}).get("texts") or {}).values()]
    for text in texts:
        batch = next(iter((text or {}).get("sequence", {})), None)
        if not text or batch is None:
            continue
        part = text["sequence"][batch]
        name = text.get("recipes", TEXT_RECIPES)["vssm"]  # older runs have no "recipes": the paper's text VSSM
        rows.append(
            served_row(
                text,
                batch,
                name,
                "the text AR-SSM",
                TEXT_SPEEDUP,
                f"{name}'s and {TEXT_RECIPES['ar-ssm']}'s shapes, {text['length']} bytes, B={batch}, "
                f"unprompted, observation temperature {text.get('observation_temperature', 1.0):g} (as served)",
            )
        )
        at_one = part.get("served_speedup_at_observation_temperature_1")  # timed where the served one is not 1
        if at_one is not None:
            rows.append(
                _row(
                    f"{name}, the same at observation temperature 1 (tokens drawn, not the served argmax)",
                    at_one,
                    "(reference)",
                    None,
                    f"the row above's call with its tokens drawn from the decoder's distribution, B={batch}",
                )
            )
    return rows
