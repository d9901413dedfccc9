"""Part 1: unprompted generation time against sequence length, every family, two batch sizes.

The seeds' Table 1 claims generation cost O(T) for the VSSM (one parallel pass), the AR-SSM, the
AR-GRU and the VRNN (one recurrent step per token) and O(T^2) for a Transformer with a KV cache
and the TVAE (attention over every earlier position); here the exponent is measured: the
least-squares slope of log(time) against log(T).
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch

from vssm import model

from .common import Deadline, Settings, measure, unprompted

__all__ = ["fit_exponent", "run_generation"]

log = logging.getLogger(__name__)

FIT_FROM = 256  # smaller T is dominated by per-call overhead, not by the T-dependent cost
LONG_FROM = 1024  # "at long T": where the transformer's quadratic attention term should show
QUADRATIC = ("ar-transformer", "tvae")  # attention over every earlier position: O(T^2) by design


def fit_exponent(points: dict[int, float], from_length: int = FIT_FROM) -> tuple[float | None, list[int]]:
    """Slope of log(time) vs log(T) over the measured ``T >= from_length`` (all T if fewer than two)."""
    lengths = sorted(T for T in points if from_length <= T)
    if len(lengths) < 2:
        lengths = sorted(points)
    if len(lengths) < 2:
        return None, lengths
    xs = [math.log(T) for T in lengths]
    ys = [math.log(points[T]) for T in lengths]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum((x - mx) ** 2 for x in xs)
    return slope, lengths


def quadratic_share(points: dict[int, float], from_length: int = FIT_FROM) -> float | None:
    """Share of the time at the longest T that a fit ``c + a T + b T^2`` puts in its ``T^2`` term.

    An exponent mixes a per-token constant with the growth it hides; this separates them: an
    O(T^2) family whose share is small at the measured lengths is dominated by its per-token
    cost there, and its exponent only approaches 2 beyond them.
    """
    lengths = sorted(T for T in points if from_length <= T)
    if len(lengths) < 3:
        return None
    X = torch.tensor([[1.0, T, T * T] for T in lengths], dtype=torch.float64)
    y = torch.tensor([points[T] for T in lengths], dtype=torch.float64)
    scale = X.abs().amax(0)  # columns of very different magnitude: solve the scaled system
    coef = torch.linalg.lstsq(X / scale, y).solution / scale  # (3,)
    T = lengths[-1]
    return float(max(coef[2].item(), 0.0) * T * T / points[T])


def _predict(points: dict[int, float], T: int) -> float:
    """A run's likely time at ``T`` from the two longest measured ones (only to decide skipping)."""
    lengths = sorted(points)
    if not lengths:
        return 0.0
    last = lengths[-1]
    slope = 1.0
    if len(lengths) >= 2:
        prev = lengths[-2]
        slope = max(1.0, math.log(points[last] / points[prev]) / math.log(last / prev))
    return points[last] * (T / last) ** slope


def _curve(
    family: str, m: model.SequenceModel, batch: int, s: Settings, deadline: Deadline
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    results: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    best: dict[int, float] = {}
    stop_reason = ""
    for T in s.gen_lengths:
        if stop_reason:
            skipped.append({"family": family, "batch": batch, "T": T, "reason": stop_reason})
            continue
        guess = _predict(best, T)
        # The VSSM caches kernels per T, so it always gets a warm-up run at that T; a slow AR run
        # was warmed up by the shorter ones and is timed once, to keep the suite in budget.
        warmup = 1 if family == "vssm" or guess < 1.0 else 0
        repeats = s.repeats if guess < 2.0 else 1
        if guess * (warmup + repeats) > deadline.remaining():
            stop_reason = (
                f"suite budget: a run at T={T} would take about {guess:.1f} s "
                f"({deadline.remaining():.0f} s of the part's budget left); not measured"
            )
            skipped.append({"family": family, "batch": batch, "T": T, "reason": stop_reason})
            continue
        t = measure(lambda T=T: unprompted(m, batch, T), repeats=repeats, warmup=warmup)
        best[T] = t.best_s
        results.append({"family": family, "batch": batch, "T": T, **t.as_dict()})
        log.info("generation %-14s B=%-3d T=%-5d %.4f s", family, batch, T, t.best_s)
        if t.best_s > s.run_cap_s:
            stop_reason = f"a run at T={T} took {t.best_s:.1f} s > the {s.run_cap_s:.0f} s cap"
    return results, skipped


def run_generation(models: dict[str, model.SequenceModel], s: Settings) -> dict[str, Any]:
    """Time ``generate(start(empty), T, resumable=False)`` on the settings' grid."""
    deadline = Deadline(s.gen_budget_s)
    results: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    # Each curve gets an equal share of what is left, so one slow family cannot starve the
    # next; cheap curves go first and hand their unspent shares on.  The quadratic families at
    # the large batch go last: their long-T points (the exponent the Table 1 cell reads) are the
    # suite's most expensive runs, and six families' equal shares would otherwise skip them.
    curves = [(family, batch) for family in models for batch in s.batches]
    curves.sort(key=lambda c: c[0] in QUADRATIC and c[1] == max(s.batches))  # stable: the rest keep their order
    with torch.inference_mode():
        for i, (family, batch) in enumerate(curves):
            share = Deadline(max(deadline.remaining(), 0.0) / (len(curves) - i))
            r, sk = _curve(family, models[family], batch, s, share)
            results += r
            skipped += sk

    def curve(family: str, batch: int) -> dict[int, float]:
        return {r["T"]: r["best_s"] for r in results if r["family"] == family and r["batch"] == batch}

    exponents = []
    for family in models:
        for batch in s.batches:
            pts = curve(family, batch)
            slope, used = fit_exponent(pts)
            long_slope, long_used = fit_exponent({T: v for T, v in pts.items() if T >= LONG_FROM}, LONG_FROM)
            exponents.append(
                {
                    "family": family,
                    "batch": batch,
                    "exponent": slope,
                    "lengths": used,
                    "exponent_long": long_slope,
                    "lengths_long": long_used if long_slope is not None else [],
                    # only the transformers have a T^2 term by design; elsewhere the fit reads cache effects
                    "quadratic_share": quadratic_share(pts) if family in QUADRATIC else None,
                }
            )
    speedups = []
    for batch in s.batches:
        ref = curve("vssm", batch)
        for family in models:
            if family == "vssm":
                continue
            for T, t in sorted(curve(family, batch).items()):
                if T in ref:
                    speedups.append({"family": family, "batch": batch, "T": T, "vssm_speedup": t / ref[T]})
    return {
        "lengths": list(s.gen_lengths),
        "batches": list(s.batches),
        "call": "m.generate(m.start(zeros(B, 0), seeds), T, resumable=False)",
        "statistic": "best_s (best of the timed runs) is used for fits and ratios",
        "fit_from": FIT_FROM,
        "results": results,
        "skipped": skipped,
        "exponents": exponents,
        "speedups": speedups,
    }
