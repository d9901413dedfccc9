"""Model cards: what a checkpoint is for, its data, its training budget, its measured figures, the
block size it is served at, and its limitations.

Every number comes from the checkpoint's metadata (training budget, default block size) or from
its ``vssm eval`` JSON beside it (likelihood, generation time, the block curve); the prose comes
from its recipe (model/recipes.py) when it is a bundled model.  The server serves the card as the
``card`` field of ``GET /v1/models/{id}``; ``scripts/model_cards.py`` writes the same cards to
docs/models.md.  A card is a plain dict (JSON-ready), so this module needs no web library.
"""

from __future__ import annotations

import json
from typing import Any

from .checkpoint import FAMILIES
from .recipes import recipe_of

__all__ = ["DATA", "model_card", "samples_in_one_pass", "served_row"]

# What each dataset is, as the bundled models were trained and scored on it (model/data.py).
DATA = {
    "mnist": (
        "Binarised MNIST (a pixel is 1 when its grey level is at least 128): 55,000 training images, "
        "the last 5,000 of the training split held out for validation, scored on the 10,000 test "
        "images; one token per pixel, 784 per image in raster order."
    ),
    "shakespeare": (
        "Tiny Shakespeare as bytes: the first 90% for training (its last 5% held out for "
        "validation), scored on the last 10% in windows of 256 bytes; one token per byte, UTF-8."
    ),
}


def _metric(name: str, value: float, unit: str, note: str = "") -> dict[str, Any]:
    return {"name": name, "value": round(float(value), 4), "unit": unit, "note": note or None}


def _bound_note(nll: dict[str, Any]) -> str:
    if nll.get("bound") == "exact":
        return "exact"
    return f"importance-weighted upper bound, {nll.get('samples', '?')} samples"


def samples_in_one_pass(family: str) -> bool:
    """Whether ``family`` samples a whole sequence in one pass (``SequenceModel.parallel_sampling``)."""
    cls = FAMILIES.get(family)
    return bool(cls and cls.parallel_sampling)


def one_pass_words(config: dict[str, Any]) -> str:
    """How a VSSM of ``config`` samples a whole sequence without blocks: one parallel pass, or, with a
    latent prior (model/latent_prior.py), its latents one after another and its tokens in one pass."""
    if config.get("prior_width"):
        return "one pass: latents drawn one after another by the latent prior, tokens in one parallel pass"
    return "one parallel pass"


def _metrics(
    evaluation: dict[str, Any], default_block_size: int | None, unblocked: str = "one parallel pass"
) -> list[dict[str, Any]]:
    """The card's figures, from an eval JSON; rows the JSON lacks are left out."""
    out: list[dict[str, Any]] = []
    T = evaluation.get("test", {}).get("tokens_per_sequence")
    nll = evaluation.get("nll") or {}
    if "nats_per_sequence" in nll:
        scored = (
            f"{evaluation['test']['sequences']:,} test sequences, " if "sequences" in evaluation.get("test", {}) else ""
        )
        one_pass = nll.get("bound") == "iw" and samples_in_one_pass(evaluation.get("family", ""))
        note = f"{scored}{_bound_note(nll)}" + ("; of one-pass sampling" if one_pass else "")
        out.append(_metric("test_nll", nll["nats_per_sequence"], "nats per sequence", note))
        out.append(_metric("test_bits_per_token", nll["bits_per_token"], "bits per token", _bound_note(nll)))
    half = (evaluation.get("prompted_nll") or {}).get("0.5")
    if half and "nats_per_sequence" in half:
        given = f"the second half given the first ({half.get('prompt_tokens')} tokens)"
        note = f"{given}, {half.get('sequences', 0):,} sequences"
        out.append(_metric("prompted_nll_half", half["nats_per_sequence"], "nats per sequence", note))
    gen = evaluation.get("generation_seconds") or {}
    if "batch_1" in gen:
        if not samples_in_one_pass(evaluation.get("family", "")):
            how = "token by token"
        elif default_block_size:  # vssm eval times the model as served
            how = f"block sampling at the default block {default_block_size}"
        else:
            how = unblocked  # how it samples without blocks (one_pass_words)
        note = f"{gen.get('length', T)} tokens, {how}"
        out.append(_metric("generation_ms_batch_1", gen["batch_1"] * 1e3, "ms per sequence", note))
        out.append(
            _metric("generation_ms_batch_32", gen["batch_32"] * 1e3 / 32, "ms per sequence", note + ", batch 32")
        )
    row = next((r for r in evaluation.get("block_curve") or [] if r.get("block_size") == default_block_size), None)
    if row is not None:
        c, bnll = row["block_size"], row["nll"]
        out.append(
            _metric(
                f"block_{c}_nll", bnll["nats_per_sequence"], "nats per sequence", f"at block {c}: {_bound_note(bnll)}"
            )
        )
        secs = row.get("generation_seconds") or {}
        if "batch_1" in secs:
            out.append(
                _metric(f"block_{c}_generation_ms_batch_1", secs["batch_1"] * 1e3, "ms per sequence", f"at block {c}")
            )
        judged = [("samples", f"block_{c}_confident_digits")]
        if "samples_observation_temperature_1" in row:  # served below 1: the model's own samples beside
            own = "samples_observation_temperature_1"
            judged.append((own, f"block_{c}_confident_digits_observation_temperature_1"))
        for key, name in judged:
            samples = row.get(key) or {}
            if samples.get("confident_share") is None:
                continue
            at = f"at block {c}" + _temperature_note(key, samples)
            note = f"{at}, of {samples.get('images', 0):,} unprompted samples (model/judge.py)"
            out.append(_metric(name, samples["confident_share"], "share judged a digit with p >= 0.9", note))
    out += _text_samples(evaluation, default_block_size)
    return out


def _temperature_note(key: str, samples: dict[str, Any]) -> str:
    """ ", observation temperature R" for judged samples (a curve row's ``key`` entry) drawn at R, unless
    they are the served samples at temperature 1, where there is nothing to say."""
    r = samples.get("observation_temperature", 1.0)
    return f", observation temperature {r:g}" if key != "samples" or r != 1.0 else ""


def served_row(evaluation: dict[str, Any], default_block_size: int | None) -> dict[str, Any] | None:
    """The curve row (``block_curve``) a model is served at: a VSSM's default block size, or without
    one its one-pass row (a block at or past the whole length); another family's only row."""
    curve = evaluation.get("block_curve") or []
    if evaluation.get("family") != "vssm":
        return curve[0] if len(curve) == 1 else None
    for r in curve:
        length = (r.get("generation_seconds") or {}).get("length")
        if r.get("block_size") == default_block_size or (
            default_block_size is None and length and r.get("block_size", 0) >= length
        ):
            return r
    return None


def _same_samples(row: dict[str, Any] | None) -> bool:
    """Whether a curve row's served samples and the same seeds at observation temperature 1 were judged
    alike in every figure (a decoder that is certain given the latents draws the same tokens at both)."""
    if not row or "samples" not in row or "samples_observation_temperature_1" not in row:
        return False
    served = {k: v for k, v in row["samples"].items() if k != "observation_temperature"}
    return served == row["samples_observation_temperature_1"]


def _text_samples(evaluation: dict[str, Any], default_block_size: int | None) -> list[dict[str, Any]]:
    """The served text samples' figures (model/judge.py): the share of their words found in the training
    text and the AR judge's bits per byte, at the curve row the model is served at (:func:`served_row`)."""
    row = served_row(evaluation, default_block_size)
    if row is None:
        return []
    length = (row.get("generation_seconds") or {}).get("length")
    prefix = f"block_{default_block_size}_" if default_block_size and evaluation.get("family") == "vssm" else ""
    out = []
    for key, suffix in (("samples", ""), ("samples_observation_temperature_1", "_observation_temperature_1")):
        samples = row.get(key) or {}
        if samples.get("known_word_share") is None:
            continue
        note = f"of {samples.get('samples', 0):,} unprompted samples of {length} bytes" + _temperature_note(
            key, samples
        )
        out.append(
            _metric(
                f"{prefix}known_words{suffix}", samples["known_word_share"], "share found in the training text", note
            )
        )
        if samples.get("ar_judge_bits_per_byte") is not None:
            out.append(
                _metric(
                    f"{prefix}ar_judge_bits_per_byte{suffix}",
                    samples["ar_judge_bits_per_byte"],
                    "bits per byte",
                    f"the AR judge's, {note}",
                )
            )
    return out


def model_card(
    name: str,
    meta: dict[str, str],
    evaluation: dict[str, Any] | None,
    default_block_size: int | None,
) -> dict[str, Any]:
    """The card of checkpoint ``name``: ``meta`` is its metadata, ``evaluation`` its eval JSON
    (None: not evaluated, or evaluated on other weights: no figures)."""
    dataset = meta.get("dataset")
    config = json.loads(meta.get("train_config") or "{}")
    # the recipe's prose only if the run was that recipe's (not another model that shares its name)
    recipe = recipe_of(config) if config else None

    def number(key: str) -> float | None:
        try:
            return float(meta[key])
        except (KeyError, ValueError):
            return None

    steps = number("train_steps")
    training = {
        "dataset": dataset,
        "preset": recipe.name if recipe else None,
        "steps": int(steps) if steps is not None else None,
        "seconds": number("train_seconds"),
        "cpu_seconds": number("train_cpu_seconds"),
        "machine": meta.get("train_machine"),
        "note": (recipe.note or None) if recipe else None,
    }
    limitations = []
    params = ((evaluation or {}).get("parameters") or {}).get("generation")
    minutes = training["cpu_seconds"] and training["cpu_seconds"] / 60
    if params and minutes:
        limitations.append(
            f"Small ({params:,} generation-time parameters) and trained for {minutes:.1f} CPU minutes on one "
            f"thread ({training['machine'] or 'machine not recorded'}): the bundled models compare families "
            "at equal budget, they are not the state of the art."
        )
    limitations += list(recipe.limitations) if recipe else []
    nll = (evaluation or {}).get("nll") or {}
    if nll.get("bound") == "iw":
        limitations.append("Its NLL figures are upper bounds (importance-weighted); the exact NLL is lower.")
    r = number("observation_temperature")
    r = 1.0 if r is None else r
    if r != 1.0:
        limitations.append(
            f"Served at observation temperature {r:g}: latents are drawn at the request's temperature, tokens "
            f"given them at {r:g} times it ({'the most likely token' if r == 0 else 'sharper than sampled'}). "
            + (
                "Its decoder is sure of each token given the latents: the served samples judge exactly as the "
                "model's own (observation temperature 1) do"
                if _same_samples(served_row(evaluation or {}, default_block_size))
                else "Samples are cleaner and less varied than the model's own distribution"
            )
            + "; every NLL figure is that of its own distribution (observation temperature 1). "
            "`vssm set-observation-temperature` changes it."
        )
    return {
        "summary": recipe.summary if recipe else None,
        "intended_use": recipe.intended_use if recipe else None,
        "data": DATA.get(dataset or ""),
        "training": training,
        "default_block_size": default_block_size,
        "observation_temperature": r,
        "metrics": _metrics(evaluation, default_block_size, one_pass_words(json.loads(meta.get("config") or "{}")))
        if evaluation
        else [],
        "limitations": limitations,
    }
