"""Part 9: the seeds' Table 1, every cell measured, beside the cells the paper claims.

The paper's table (seeds/, Table 1) gives each model a generation cost, whether it generates in
parallel and whether it resumes.  Here each cell is read from this run:

- generation cost: the exponent of part 1 (slope of log time against log T) at the large batch
  and long T; O(T^2) from ``QUADRATIC_FROM`` up, O(T) below.
- parallel generation: measured here, by intervention.  One sequence of T tokens is drawn twice
  from the same state and seed, batch 1, the two calls differing only in how the tokens are drawn
  (their temperature; a latent family's observation temperature, so that its latents are the same
  draws), and the distribution each token was drawn from is read at every position
  (``generate_scored``).  A family parallel over time computes every position's distribution
  without the tokens drawn before it: after the first token that differs between the calls, none of
  the later distributions moves.  A sequential family reads each token back before the next: the
  later distributions move.  The test intervenes on tokens, not on latents: it shows that no token
  feeds back, which with latents drawn independently per step (the VSSM's one pass, the TVAE's) is
  what lets one pass give every position.  Beside it, the time of one
  sequence in T chained one-token calls against one call of T tokens: that ratio is 1 + the
  per-call overhead / a step for a sequential family, and it decided this column until the AR
  Transformer's loop was compiled (csrc/transformer_loop.c), whose step is cheap enough against a
  call's Python to read 12x, past the 10x a parallel family read (docs/experiments/
  rounds-and-serving.md, forty-second session).
- resume: a 64-token round from the state at prefix P against re-processing the P-token prefix
  and then generating (part 3), at the longest P.  A family that had to re-read its prefix to
  continue would sit at 1.0x.  The round's cost and the state's bytes at that P against P = 64
  are shown beside it: they are what makes a cache-based resume O(T^2) over a whole sequence.
- likelihood: the bundled MNIST checkpoints' eval JSONs (``checkpoints/mnist-*.json``), never
  measured here: a family without one is "not trained".
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from vssm import model
from vssm.model import VSSM

from .common import Deadline, Settings, measure_interleaved
from .generation import LONG_FROM, _curve, fit_exponent

__all__ = ["PAPER", "likelihoods", "run_dependence", "run_one_pass", "run_parallel", "run_table1", "table1_rows"]

log = logging.getLogger(__name__)

CHECKPOINTS = Path(__file__).resolve().parents[1] / "checkpoints"

# The seeds' Table 1, in its row order: (model, generation, parallel generation, resume)
PAPER: dict[str, tuple[str, str, bool, bool]] = {
    "ar-transformer": ("Transformer", "O(T^2)", False, True),
    "ar-gru": ("RNN", "O(T)", False, True),
    "ar-ssm": ("SSM", "O(T)", False, True),
    "tvae": ("TVAE", "O(T^2)", True, True),
    "vrnn": ("VRNN", "O(T)", False, True),
    "vssm": ("VSSM", "O(T)", True, True),
}
QUADRATIC_FROM = 1.5  # exponent at long T from which generation reads as O(T^2) (midway from 1 to 2)
# T one-token calls / one T-token call: the VRNN's row (bench/targets.py) read < this as "no parallel speed-up" while
# its loop ran in PyTorch (1.3-1.5x); compiled, it reads 11-13x, a call's overhead, and the dependence test decides
PARALLEL_FROM = 10.0
MOVED_FROM = 1e-6  # a later log-probability that changes by more than this moved (a parallel family's change by 0.0)
RESUME_FROM = 1.2  # re-process / resume at the longest prefix: 1.0 would mean the prefix is re-read


# ----- parallel over time ------------------------------------------------------------------------
def _one_call(m: model.SequenceModel, state: model.GenState, T: int) -> None:
    m.generate(state, T)


def _token_calls(m: model.SequenceModel, state: model.GenState, T: int) -> None:
    for _ in range(T):
        _, state = m.generate(state, 1)  # type: ignore[assignment]


def _timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def run_parallel(models: dict[str, model.SequenceModel], s: Settings) -> dict[str, Any]:
    """One sequence of T tokens, batch 1: one call of T tokens against T chained one-token calls.

    Both are resumable calls from the same unprompted state, so each ends with the state a session
    would store.  Every family's pair is timed round-robin with the others; the number of timed
    rounds is what the length's share of the part's budget allows after a timed warm-up round (at
    least one, at most ``s.repeats``).
    """
    deadline = Deadline(s.parallel_budget_s)
    results: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    with torch.inference_mode():
        states = {f: m.start(torch.zeros(1, 0, dtype=torch.long), 7) for f, m in models.items()}
        # The longest T first: the table reads it; the shorter ones only show the trend in T.
        lengths = sorted(s.parallel_lengths, reverse=True)
        for i, T in enumerate(lengths):
            if deadline.remaining() <= 0:
                reason = f"part budget of {s.parallel_budget_s:.0f} s spent; not measured"
                skipped += [{"family": f, "T": T, "reason": reason} for f in models]
                continue
            fns: dict[str, Callable[[], object]] = {}
            for f, m in models.items():
                fns[f"{f}:one"] = lambda m=m, st=states[f], T=T: _one_call(m, st, T)
                fns[f"{f}:tokens"] = lambda m=m, st=states[f], T=T: _token_calls(m, st, T)
            round_s = sum(_timed(fn) for fn in fns.values())  # the warm-up, timed to size the repeats
            share = deadline.remaining() / (len(lengths) - i)
            repeats = max(1, min(s.repeats, int(share / round_s)))
            timed = measure_interleaved(fns, repeats=repeats, warmup=0)
            for f in models:
                one, tokens = timed[f"{f}:one"], timed[f"{f}:tokens"]
                results.append(
                    {
                        "family": f,
                        "T": T,
                        "one_call": one.as_dict(),
                        "token_calls": tokens.as_dict(),
                        "speedup": tokens.best_s / one.best_s,
                        "speedup_median": tokens.median_s / one.median_s,
                    }
                )
                log.info(
                    "parallel %-14s T=%-4d one call %.2f ms, %d one-token calls %.1f ms: %.1fx",
                    f,
                    T,
                    one.best_s * 1e3,
                    T,
                    tokens.best_s * 1e3,
                    results[-1]["speedup"],
                )
    results.sort(key=lambda r: r["T"])
    return {
        "lengths": sorted(s.parallel_lengths),
        "batch": 1,
        "one_call": "m.generate(state, T)",
        "token_calls": "T x (_, state = m.generate(state, 1))",
        "statistic": "speedup = best of the token calls / best of the one call",
        "results": results,
        "skipped": skipped,
    }


# ----- parallel over time: does a later distribution read an earlier token? -----------------------
def _token_draws(m: model.SequenceModel, temperature: float) -> dict[str, float]:
    """A generation call's temperatures that draw the tokens at ``temperature`` and nothing else differently: a
    model with latents (one that weighs them, as model/checkpoint.py's observation_temperature asks) draws them at
    1 in both calls and its tokens at the observation temperature; the others' temperature is their tokens'."""
    if callable(getattr(m, "log_weights", None)):
        return {"temperature": 1.0, "observation_temperature": temperature}
    return {"temperature": temperature}


def _verdict(first: int, T: int, control: bool, later: int, moved: int) -> str:
    """The dependence test's reading of one family (see :func:`run_dependence`)."""
    if first == T:
        return "same tokens"
    if not control:
        return "control failed"
    if not later:
        return "nothing after the difference"
    return "sequential" if moved else "parallel"


def run_dependence(models: dict[str, model.SequenceModel], s: Settings) -> dict[str, Any]:
    """One sequence of T tokens drawn twice from one state and seed, batch 1: its tokens sampled (temperature 1)
    and their most likely values (0), nothing else drawn differently; how many of the distributions after the
    first token that differs moved (``generate_scored``'s log-probabilities, by more than ``MOVED_FROM``).  The
    distributions up to that token are the control: they must be equal, else the calls differed in more than
    their tokens and the family gets no verdict.  Each family in its default generation (the VSSM in one pass):
    the test intervenes on tokens only, so a chain of latents (a latent read by the next, as the VSSM's latent
    prior draws them within a block) would go unseen; the bench's VSSM and TVAE draw theirs independently per
    step and from one pass over the sequence (model/vssm.py, model/tvae.py)."""
    T = max(s.parallel_lengths)
    results = []
    with torch.inference_mode():
        for f, m in models.items():
            state = m.start(torch.zeros(1, 0, dtype=torch.long), 7)
            drawn, _, p_drawn = m.generate_scored(state, T, **_token_draws(m, 1.0))
            likely, _, p_likely = m.generate_scored(state, T, **_token_draws(m, 0.0))
            differ = (drawn != likely)[0].nonzero()
            first = int(differ[0]) if len(differ) else T  # T: the two calls drew the same tokens
            a, b = p_drawn[0], p_likely[0]  # (T, V)
            change = (a - b).abs().masked_fill(a == b, 0.0).amax(-1)  # (T,): equal infinities did not move
            # the control: up to the first token that differs both calls read the same draws, so their
            # distributions must be equal; where they are not, the calls differed in more than their tokens
            control = bool((change[: first + 1] == 0).all())
            later = change[first + 1 :]
            moved = int((~(later <= MOVED_FROM)).sum())  # a NaN counts as moved
            verdict = _verdict(first, T, control, later.numel(), moved)
            largest = float(later.max()) if later.numel() else 0.0
            row: dict[str, Any] = {
                "family": f,
                "T": T,
                "first_difference": first if first < T else None,
                "control_equal": control,
                "verdict": verdict,
                "later": int(later.numel()),
                "moved": moved if verdict in ("parallel", "sequential") else None,
                "largest_change": largest if math.isfinite(largest) else None,  # (strict JSON has no NaN)
            }
            results.append(row)
            log.info(
                "dependence %-14s T=%d: tokens first differ at %s; %s of the %d distributions after it moved: %s",
                f,
                T,
                row["first_difference"],
                row["moved"],
                row["later"],
                verdict,
            )
    return {
        "T": T,
        "calls": "generate_scored(state, T) with the tokens drawn at temperature 1 and at 0",
        "moved_from": MOVED_FROM,
        "results": results,
    }


# ----- the VSSM without windows -------------------------------------------------------------------
def run_one_pass(vssm: VSSM, s: Settings) -> dict[str, Any]:
    """The VSSM's long-T curve at the large batch with every T in one parallel pass.

    Served, the VSSM generates in windows of ``gen_window`` tokens (model/vssm.py: bounded memory);
    past one window, each window starts with the previous one's state, whose readout and advance
    read (H, 2N, window) tables per layer.  Part 1 times that served path; this times the same
    tokens in one pass (the tokens do not change), so the table can show how much of the exponent
    at long T is the windows' hand-offs.  Not needed (skipped) when every T fits one window.
    """
    window = vssm.gen_window
    lengths = tuple(T for T in s.gen_lengths if T >= LONG_FROM)
    batch = max(s.batches)
    out: dict[str, Any] = {"window": window, "batch": batch, "lengths": list(lengths), "results": [], "skipped": []}
    if len(lengths) < 2 or max(lengths) <= window:
        out["note"] = f"not measured: fewer than two T >= {LONG_FROM}, or every T within one window"
        return out
    vssm.gen_window = max(lengths)  # an instance attribute: one pass at every T; the class default is untouched
    try:
        with torch.inference_mode():
            rows, skipped = _curve("vssm", vssm, batch, replace(s, gen_lengths=lengths), Deadline(s.one_pass_budget_s))
    finally:
        vssm.gen_window = window
    exponent, used = fit_exponent({r["T"]: r["best_s"] for r in rows}, LONG_FROM)
    out.update(results=rows, skipped=skipped, exponent=exponent, exponent_lengths=used if exponent else [])
    log.info("VSSM in one pass (no %d-token windows), B=%d: exponent %s over T = %s", window, batch, exponent, used)
    return out


# ----- likelihood --------------------------------------------------------------------------------
def likelihoods(directory: Path = CHECKPOINTS) -> dict[str, list[dict[str, Any]]]:
    """Every bundled MNIST eval JSON's test NLL, per family, best first (nothing is measured here)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for path in sorted(directory.glob("mnist-*.json")):
        try:
            d = json.loads(path.read_text())
            nll = d["nll"]
            entry = {
                "checkpoint": path.stem,
                "nats_per_sequence": float(nll["nats_per_sequence"]),
                "bound": nll.get("bound", "?"),
                "samples": nll.get("samples"),
            }
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("no likelihood in %s: %s", path, exc)
            continue
        out.setdefault(d.get("family", "?"), []).append(entry)
    for entries in out.values():
        entries.sort(key=lambda e: e["nats_per_sequence"])
    return out


# ----- the table ---------------------------------------------------------------------------------
def _exponent(gen: dict[str, Any], family: str, batch: int) -> tuple[float | None, list[int]]:
    for e in gen["exponents"]:
        if e["family"] == family and e["batch"] == batch:
            if e["exponent_long"] is not None:
                return e["exponent_long"], e["lengths_long"]
            return e["exponent"], e["lengths"]
    return None, []


def _agree(paper: object, measured: object | None) -> bool | None:
    return None if measured is None else paper == measured


def _parallel(dep_row: dict[str, Any] | None) -> bool | None:
    """Parallel over time from a family's dependence verdict (None: not measured, or the test could not tell:
    the two calls drew the same tokens, its control failed, or nothing came after the first differing token)."""
    return {"parallel": True, "sequential": False}.get(None if dep_row is None else dep_row.get("verdict"))


def table1_rows(
    gen: dict[str, Any],
    res: dict[str, Any],
    par: dict[str, Any],
    dep: dict[str, Any],
    checkpoints: Path = CHECKPOINTS,
) -> list[dict[str, Any]]:
    """One row per family, in the paper's order, from parts 1 (``gen``), 3 (``res``) and 9 (``par``, the timing;
    ``dep``, the dependence test that decides the parallel column), and the eval JSONs in ``checkpoints``."""
    batch = max(gen["batches"])
    first = min(p for p in res["positions"] if p > 0)
    last = max(res["positions"])
    nll = likelihoods(checkpoints)
    rows = []
    for family, (name, p_gen, p_par, p_res) in PAPER.items():
        exponent, fit = _exponent(gen, family, batch)
        cost = None if exponent is None else "O(T^2)" if exponent >= QUADRATIC_FROM else "O(T)"
        measured_par = [r for r in par["results"] if r["family"] == family]
        speedup = max(measured_par, key=lambda r: r["T"]) if measured_par else None
        dep_row = next((r for r in dep["results"] if r["family"] == family), None)
        parallel = _parallel(dep_row)
        by_pos = {r["position"]: r for r in res["results"] if r["family"] == family}
        resume = None
        if first in by_pos and last in by_pos:
            a, b = by_pos[first], by_pos[last]
            resume = {
                "reprocess_vs_resume": b["reprocess_vs_chunk"],
                "cost_growth": b["chunk"]["best_s"] / a["chunk"]["best_s"],
                "state_growth": b["state_bytes"] / a["state_bytes"],
                "state_bytes": b["state_bytes"],
            }
        resumable = None if resume is None else resume["reprocess_vs_resume"] >= RESUME_FROM
        agree = {
            "generation": _agree(p_gen, cost),
            "parallel": _agree(p_par, parallel),
            "resume": _agree(p_res, resumable),
        }
        rows.append(
            {
                "family": family,
                "model": name,
                "paper": {"generation": p_gen, "parallel": p_par, "resume": p_res},
                "measured": {"generation": cost, "parallel": parallel, "resume": resumable},
                "exponent": exponent,
                "exponent_batch": batch,
                "exponent_lengths": fit,
                "parallel_speedup": None if speedup is None else speedup["speedup"],
                "parallel_T": None if speedup is None else speedup["T"],
                "dependence": dep_row,
                "resume": resume,
                "resume_positions": [first, last],
                "linear_parallel_resumable": cost == "O(T)" and bool(parallel) and bool(resumable),
                "agrees": agree,
                "likelihood": nll.get(family, []),
            }
        )
    return rows


def run_table1(models: dict[str, model.SequenceModel], results: dict[str, Any], s: Settings) -> dict[str, Any]:
    """Measure parallel generation, then assemble the table from it and parts 1 and 3 (run them first)."""
    dep = run_dependence(models, s)
    par = run_parallel(models, s)
    one_pass = run_one_pass(models["vssm"], s)  # type: ignore[arg-type]
    return {
        "thresholds": {
            "quadratic_from_exponent": QUADRATIC_FROM,
            "parallel_from_speedup": PARALLEL_FROM,
            "moved_from": MOVED_FROM,
            "resumable_from_reprocess_vs_resume": RESUME_FROM,
        },
        "parallel": par,
        "dependence": dep,
        "vssm_one_pass": one_pass,
        "likelihood_source": "checkpoints/mnist-*.json: nll.nats_per_sequence (test set)",
        "rows": table1_rows(results["generation"], results["resume"], par, dep),
    }
