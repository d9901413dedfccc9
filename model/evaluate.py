"""``vssm eval``: test-set likelihoods, prompted likelihoods and generation time, as JSON.

Glossary of axis letters:
    S  test sequences      T  sequence length      C  prompt length

Units: nats per sequence (per image for MNIST) and bits per token (bits per byte for text).
Autoregressive families are exact; the latent-variable families (VSSM, TVAE, VRNN) report their
negative ELBO and the tighter importance-weighted bound with k samples.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm import tqdm

from . import native
from .base import SequenceModel, parse_block_sizes
from .checkpoint import load_checkpoint, observation_temperature, read_metadata
from .data import eval_sequences, load_dataset
from .judge import ar_judge_nll, sample_sequences
from .vssm import VSSM

__all__ = ["EVAL_SCHEMA_KEYS", "evaluate", "evaluate_cli", "is_latent", "iw_curve"]

log = logging.getLogger(__name__)

EVAL_SCHEMA_KEYS = (
    "checkpoint",
    "family",
    "dataset",
    "fingerprint",
    "parameters",
    "training",
    "test",
    "nll",
    "prompted_nll",
    "generation_seconds",
    "machine",
    "command",
)
PROMPT_FRACTIONS = (0.25, 0.5, 0.75)


def is_latent(model: SequenceModel) -> bool:
    """Whether ``model``'s NLL is an importance-weighted bound: a latent family (VSSM, TVAE, VRNN),
    whose ``log_weights(x, prompt_len, samples, seed)`` gives the draws' log weights ``(S, B)`` and
    whose ``nll`` takes ``samples`` and ``seed``."""
    return callable(getattr(model, "log_weights", None))


def _summary(total_nats: float, n_seq: int, tokens_per_seq: int) -> dict[str, float]:
    return _per_sequence(total_nats / n_seq, tokens_per_seq)


def _per_sequence(nats: float, tokens_per_seq: int) -> dict[str, float]:
    return {"nats_per_sequence": nats, "bits_per_token": nats / tokens_per_seq / math.log(2)}


@torch.no_grad()
def _score(model: SequenceModel, seqs: torch.Tensor, batch_size: int, desc: str, **kw: Any) -> float:
    total = 0.0
    for i in tqdm(range(0, len(seqs), batch_size), desc=desc, leave=False, disable=None):
        total += float(model.nll(seqs[i : i + batch_size].to(model.device), **kw).sum())
    return total


@torch.no_grad()
def iw_curve(model: SequenceModel, seqs: torch.Tensor, samples: int, batch_size: int) -> dict[int, float]:
    """Mean importance-weighted bound (nats per sequence) of a latent family (:func:`is_latent`) for
    k = 1, 2, 4, ..., ``samples`` draws.

    One set of ``samples`` log-weights per sequence serves every k: the k-sample bound is averaged
    over the ``samples // k`` disjoint groups of draws (the first ``(samples // k) * k`` draws), an
    unbiased estimate of it with less noise than one group.  k = 1 is the negative ELBO; k =
    ``samples`` is the tightest bound.  With a power of two, every group of 2k draws joins two
    groups of k, so the curve never rises (Jensen); other counts keep that only on average.
    """
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    parts = []
    for i in tqdm(range(0, len(seqs), batch_size), desc=f"iw{samples}", leave=False, disable=None):
        parts.append(model.log_weights(seqs[i : i + batch_size].to(model.device), samples=samples).cpu())
    w = torch.cat(parts, dim=1).double()  # (samples, S)
    ks = sorted({2**j for j in range(samples.bit_length()) if 2**j <= samples} | {samples})
    curve = {}
    for k in ks:
        groups = w[: (samples // k) * k].reshape(samples // k, k, -1)  # (G, k, S)
        bound = -(torch.logsumexp(groups, 1) - math.log(k))  # (G, S)
        curve[k] = float(bound.mean())
    return curve


@torch.no_grad()
def generation_seconds(
    model: SequenceModel, length: int, batch: int, repeats: int = 3, block_size: int | None = None
) -> float:
    """Best-of-``repeats`` wall-clock time to sample ``batch`` unprompted sequences of ``length``
    (at ``block_size``; None: the model's default)."""
    empty = torch.zeros(batch, 0, dtype=torch.long)
    best = math.inf
    for r in range(repeats):
        t0 = time.perf_counter()
        model.generate(model.start(empty, list(range(r, r + batch))), length, resumable=False, block_size=block_size)
        best = min(best, time.perf_counter() - t0)
    return best


def block_curve(
    model: SequenceModel,
    seqs: Tensor,
    block_sizes: list[int],
    samples: int = 8,
    batch_size: int = 100,
    judge: Callable[[Tensor], dict[str, Any]] | None = None,
    judge_samples: int = 1000,
    judge_only: bool = False,
) -> list[dict[str, Any]]:
    """The speed / quality dial (docs/design.md, "Blocks"): per block size, the likelihood bound of
    what block sampling really samples (``samples`` importance samples over ``seqs``), the time to
    generate a whole sequence at batch 1 and 32, and ``judge``'s figures of ``judge_samples``
    unprompted samples.  Other families sample the same way whatever the block size: one row,
    their exact NLL (autoregressive families, token by token, block 1) or their one-pass bound
    (the TVAE, one pass, block T; the VRNN, step by step, block 1).  ``judge_only``: the judged
    samples alone (rows without the bound and the times, to join to rows that have them)."""
    S, T = seqs.shape
    rows = []
    for c in block_sizes if isinstance(model, VSSM) else [T if model.family == "tvae" else 1]:
        if judge_only:
            assert judge is not None, "judge_only needs a judge"
            rows.append({"block_size": c, **_judged(model, judge, judge_samples, T, c)})
            log.info("block %d: judged %d samples", c, judge_samples)
            continue
        if isinstance(model, VSSM):
            w = []
            for i in tqdm(range(0, S, batch_size), desc=f"block {c}", leave=False, disable=None):
                w.append(model.block_log_weights(seqs[i : i + batch_size].to(model.device), c, samples).cpu())
            lw = torch.cat(w, dim=1).double()  # (samples, S)
            nats = float(-(torch.logsumexp(lw, 0) - math.log(samples)).mean())
            nll = {
                "bound": "iw",
                "samples": samples,
                **_per_sequence(nats, T),
                "elbo": _per_sequence(float(-lw.mean()), T),
            }
        elif is_latent(model):
            curve = iw_curve(model, seqs, samples, batch_size)
            nll = {
                "bound": "iw",
                "samples": samples,
                **_per_sequence(curve[samples], T),
                "elbo": _per_sequence(curve[1], T),
            }
        else:
            nll = {"bound": "exact", **_summary(_score(model, seqs, batch_size, "nll"), S, T)}
        row: dict[str, Any] = {
            "block_size": c,
            "sequences": S,
            "nll": nll,
            "generation_seconds": {
                "length": T,
                "batch_1": generation_seconds(model, T, 1, block_size=c),
                "batch_32": generation_seconds(model, T, 32, block_size=c),
            },
        }
        if judge is not None:
            row.update(_judged(model, judge, judge_samples, T, c))
        log.info(
            "block %d: %.2f nats, %.1f ms at batch 1",
            c,
            nll["nats_per_sequence"],
            row["generation_seconds"]["batch_1"] * 1e3,
        )
        rows.append(row)
    return rows


def _judged(model: SequenceModel, judge: Callable[[Tensor], dict[str, Any]], n: int, T: int, c: int) -> dict[str, Any]:
    """``samples``: the judge's figures of ``n`` unprompted samples at block ``c`` as served; for a
    latent model served below observation temperature 1, ``samples_observation_temperature_1``
    beside them: the same seeds drawn from the model's own distribution.  Seeds ``0..n-1``, so every
    block size and every family is judged on the same seeds."""
    out = {"samples": judge(sample_sequences(model, n, T, block_size=c, batch_size=250))}
    r = model.observation_temperature
    if r != 1.0:
        out["samples"]["observation_temperature"] = r
        own = sample_sequences(model, n, T, block_size=c, batch_size=250, observation_temperature=1.0)
        out["samples_observation_temperature_1"] = judge(own)
    return out


def evaluate(
    model: SequenceModel,
    seqs: torch.Tensor,
    samples: int = 16,
    batch_size: int = 100,
    gen_length: int | None = None,
    prompted_limit: int | None = None,
    prompted_samples: int | None = None,
) -> dict[str, Any]:
    """Every number of the eval JSON except provenance; prompted NLLs use the first ``prompted_limit``
    rows and ``prompted_samples`` importance samples (default ``samples``)."""
    S, T = seqs.shape
    out: dict[str, Any] = {"test": {"sequences": S, "tokens_per_sequence": T}}
    if is_latent(model):
        curve = iw_curve(model, seqs, samples, max(1, batch_size // 4))
        kl = rec = 0.0
        with torch.no_grad():  # scores only: no autograd graph over the whole test set
            for i in range(0, S, batch_size):
                t = model.loss(
                    seqs[i : i + batch_size].to(model.device),
                    tau=1.0,
                    prompt_lengths=torch.zeros(min(batch_size, S - i), dtype=torch.long, device=model.device),
                )
                kl += float(t.parts["kl"].sum())
                rec += float(t.parts["rec"].sum())
        out["nll"] = {
            "bound": "iw",
            "samples": samples,
            **_per_sequence(curve[samples], T),
            "elbo": _per_sequence(curve[1], T),
            "iw_curve": {str(k): v for k, v in curve.items()},
            "kl_nats_per_sequence": kl / S,
            "reconstruction_nats_per_sequence": rec / S,
        }
    else:
        out["nll"] = {"bound": "exact", **_summary(_score(model, seqs, batch_size, "nll"), S, T)}
    prompted = {}
    subset = seqs[:prompted_limit] if prompted_limit else seqs
    for frac in PROMPT_FRACTIONS:
        C = int(T * frac)
        kw = {"samples": samples if prompted_samples is None else prompted_samples} if is_latent(model) else {}
        nats = _score(model, subset, max(1, batch_size // (4 if kw else 1)), f"prompt{frac}", prompt_len=C, **kw)
        prompted[str(frac)] = {
            "prompt_tokens": C,
            "sequences": len(subset),
            **({"samples": kw["samples"]} if kw else {}),
            **_summary(nats, len(subset), T - C),
        }
    out["prompted_nll"] = prompted
    L = gen_length or T
    out["generation_seconds"] = {
        "length": L,
        "batch_1": generation_seconds(model, L, 1),
        "batch_32": generation_seconds(model, L, 32),
    }
    return out


def retime(model: SequenceModel, earlier: dict[str, Any]) -> dict[str, Any]:
    """``earlier`` (an eval JSON of ``model``'s weights) with every generation time measured again:
    the whole-sequence time and each block-curve row's, at the lengths and block sizes they record.
    Bounds and judged samples do not depend on speed and are kept."""
    if earlier.get("fingerprint") != model.fingerprint:
        raise ValueError(f"the JSON holds the eval of other weights ({earlier.get('fingerprint')})")
    out = dict(earlier)

    def timed(old: dict[str, Any], block_size: int | None) -> dict[str, Any]:
        L = int(old["length"])
        batches = [k for k in old if k.startswith("batch_")]  # "batch_1", "batch_32"
        return {"length": L, **{k: generation_seconds(model, L, int(k[6:]), block_size=block_size) for k in batches}}

    if "generation_seconds" in earlier:
        out["generation_seconds"] = timed(earlier["generation_seconds"], None)
    rows = []
    for row in earlier.get("block_curve", []):
        c = row["block_size"] if isinstance(model, VSSM) else None  # other families sample one way
        rows.append({**row, "generation_seconds": timed(row["generation_seconds"], c)})
        log.info("block %d: %.1f ms at batch 1", row["block_size"], rows[-1]["generation_seconds"]["batch_1"] * 1e3)
    if rows:
        out["block_curve"] = rows
    return out


def evaluate_cli(args: argparse.Namespace) -> dict[str, Any]:
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_checkpoint(args.checkpoint, device=args.device)
    if args.times_only:
        if not args.out or not Path(args.out).exists():
            raise SystemExit("--times-only re-times the eval JSON at --out: give an existing one")
        t0 = time.perf_counter()
        try:
            result = retime(model, json.loads(Path(args.out).read_text()))
        except ValueError as exc:
            raise SystemExit(f"{args.out}: {exc}") from None
        command = "vssm eval " + shlex.join(sys.argv[2:] if len(sys.argv) > 1 else [])
        result["timing"] = {
            "command": command,
            "seconds": round(time.perf_counter() - t0, 1),
            "machine": {
                "platform": platform.platform(),
                **native.host_cpu(),
                "cpus": os.cpu_count(),
                "threads": torch.get_num_threads(),
            },
        }
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
        log.info("wrote %s", args.out)
        return result
    if args.observation_temperature is not None:  # measure another setting than the checkpoint's
        try:
            model.observation_temperature = observation_temperature(model, args.observation_temperature)
        except ValueError as exc:
            raise SystemExit(f"--observation-temperature: {exc}") from None
    meta = read_metadata(args.checkpoint)
    dataset = meta.get("dataset")
    if not dataset:
        raise SystemExit(f"{args.checkpoint} records no dataset; it was not written by `vssm train`")
    ds = load_dataset(dataset, args.data_dir)
    seq_len = ds.max_position or args.seq_len
    seqs = eval_sequences(ds.test, seq_len)
    offset = args.offset
    if not 0 <= offset < len(seqs):
        raise SystemExit(f"--offset {offset} is outside the {len(seqs)} test sequences")
    seqs = seqs[offset:]
    if args.limit:
        seqs = seqs[: args.limit]
    # judged samples join a curve measured before: like --curve-only, nothing else is measured
    curve_only = args.curve_only or args.judge_only
    t0 = time.perf_counter()
    result = {
        "checkpoint": str(args.checkpoint),
        "family": model.family,
        "dataset": dataset,
        "fingerprint": model.fingerprint,
        "default_block_size": model.default_block_size,
        "observation_temperature": model.observation_temperature,
        "parameters": {"total": model.num_parameters(), "generation": model.num_parameters(generation_only=True)},
        "training": {
            "steps": int(meta.get("train_steps", 0)),
            "minutes": round(float(meta.get("train_seconds", 0)) / 60, 1),
            "cpu_minutes": round(float(meta["train_cpu_seconds"]) / 60, 1) if "train_cpu_seconds" in meta else None,
            "machine": meta.get("train_machine"),
            "config": json.loads(meta.get("train_config", "{}")),
        },
        **(
            {}
            if curve_only
            else evaluate(
                model,
                seqs,
                samples=args.samples,
                batch_size=args.batch_size,
                prompted_limit=args.prompted_limit,
                prompted_samples=args.prompted_samples,
            )
        ),
        "machine": {
            "platform": platform.platform(),
            **native.host_cpu(),
            "cpus": os.cpu_count(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "device": str(model.device),
        },
        "command": "vssm eval " + shlex.join(sys.argv[2:] if len(sys.argv) > 1 else []),
        "eval_seconds": None,
    }
    if offset:  # a shard: say which rows, so shards can be pooled (each sequence's draws are its own)
        result["test"]["offset"] = offset
    if curve_only and not args.block_sizes:
        raise SystemExit("--curve-only needs --block-sizes")
    judge = _judge(args, dataset) if args.block_sizes else None
    if args.judge_only and judge is None:
        raise SystemExit("--judge-only needs a judge: --judge (images) or --ar-judge (text)")
    if args.block_sizes:
        # before the curve, which can take hours: a wrong reference model fails now, not after it
        reference = (
            reference_nll(args.ar_judge, seqs[: args.block_limit], args.batch_size, offset) if args.ar_judge else None
        )
        curve = block_curve(
            model,
            seqs[: args.block_limit],
            _block_list(args.block_sizes),
            samples=args.block_samples,
            batch_size=max(1, args.batch_size // 4),
            judge=judge,
            judge_samples=args.judge_samples,
            judge_only=args.judge_only,
        )
        if curve_only:
            # the rest of the JSON is a full eval of the same weights (read now: it may have been
            # written while the curve ran): keep it, add the curve and the command that made it
            earlier = json.loads(Path(args.out).read_text()) if args.out and Path(args.out).exists() else {}
            if earlier and earlier.get("fingerprint") != model.fingerprint:
                raise SystemExit(f"{args.out} holds the eval of other weights ({earlier.get('fingerprint')})")
            command = result["command"]
            result = (
                {
                    **earlier,
                    "default_block_size": model.default_block_size,
                    "observation_temperature": model.observation_temperature,
                }
                if earlier
                else result
            )
            # curves measured in parts (block sizes split over processes) join: rows by block size
            rows = {r["block_size"]: r for r in result.get("block_curve", [])}
            missing = sorted({r["block_size"] for r in curve} - set(rows)) if args.judge_only else []
            if missing:  # judged samples join a measured row; alone they are not a point of the curve
                raise SystemExit(f"--judge-only: {args.out} has no curve row at block sizes {missing}")
            for r in curve:  # judged samples alone replace only the samples of the row they join
                kept = {k: v for k, v in rows.get(r["block_size"], {}).items() if not k.startswith("samples")}
                rows[r["block_size"]] = {**kept, **r} if args.judge_only else r
            curve = [rows[c] for c in sorted(rows)]
            # a command run again (the same rows re-measured) is listed once, at its last run
            earlier_commands = [c for c in result.get("block_curve_commands", []) if c != command]
            result["block_curve_commands"] = [*earlier_commands, command]
        result["block_curve"] = curve
        if judge is not None:
            # the judge's figures of the test sequences themselves, by the judge of this run's rows: what
            # a perfect sampler would score (text windows start mid-line: a cut word counts as unknown)
            test = seqs[: args.judge_samples]
            result["judged_test_sequences"] = {"offset": offset, "ar_judge": args.ar_judge, **judge(test)}
        rows = (offset, len(seqs[: args.block_limit]))
        earlier_ref = result.get("block_curve_reference")
        if reference is not None:  # the AR model's NLL of the rows the bounds are on
            result["block_curve_reference"] = reference
        elif earlier_ref and (earlier_ref.get("offset", 0), earlier_ref["sequences"]) != rows:
            del result["block_curve_reference"]  # an earlier run's, of other rows
    result["block_curve_seconds" if curve_only else "eval_seconds"] = round(time.perf_counter() - t0, 1)
    text = json.dumps(result, indent=2)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
        log.info("wrote %s", args.out)
    else:
        sys.stdout.write(text + "\n")
    return result


def reference_nll(checkpoint: str, seqs: Tensor, batch_size: int, offset: int = 0) -> dict[str, Any]:
    """The exact NLL of an autoregressive ``checkpoint`` on ``seqs`` ``(S, T)`` (test rows from ``offset``):
    the figure a block curve's bounds on the same rows are compared with (a subset of the test set is
    not its average)."""
    with torch.no_grad():
        mean = ar_judge_nll(load_checkpoint(checkpoint), seqs, batch_size)  # TypeError unless autoregressive
    return {
        "checkpoint": checkpoint,
        "offset": offset,
        "sequences": len(seqs),
        "nats_per_sequence": mean,
        "bits_per_token": mean / math.log(2) / seqs.shape[1],
    }


def _block_list(text: str) -> list[int]:
    try:
        sizes = parse_block_sizes(text)
    except ValueError as exc:
        raise SystemExit(f"--block-sizes: {exc}") from None
    if not sizes:
        raise SystemExit("--block-sizes lists no block size")
    return sizes


def _judge(args: argparse.Namespace, dataset: str) -> Callable[[Tensor], dict[str, Any]] | None:
    """Figures of unprompted samples ``(N, T)`` (model/judge.py): for images, the digit classifier's
    (``--judge``) and the AR judge's NLL; for text, the share of known words and the AR judge's bits
    per byte (``--ar-judge``).  None when no judge is given."""
    from .judge import (
        ar_judge_bits_per_byte,
        ar_judge_nll,
        image_metrics,
        load_judge,
        text_metrics,
        training_vocabulary,
    )

    ar = load_checkpoint(args.ar_judge) if args.ar_judge else None
    if dataset == "mnist" and args.judge:
        classifier = load_judge(args.judge)

        def judge_images(x: Tensor) -> dict[str, Any]:
            out = image_metrics(classifier, x)
            if ar is not None:
                out["ar_judge_nats"] = ar_judge_nll(ar, x)
            return out

        return judge_images
    if dataset == "shakespeare" and ar is not None:
        vocabulary = training_vocabulary(args.data_dir)

        def judge_text(x: Tensor) -> dict[str, Any]:
            texts = [bytes(row) for row in x.tolist()]
            return {**text_metrics(texts, vocabulary), "ar_judge_bits_per_byte": ar_judge_bits_per_byte(ar, texts)}

        return judge_text
    return None
