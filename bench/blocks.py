"""Part 7: block sampling's speed dial (docs/design.md, "Blocks").

- Round latency against n: one call of n tokens from a non-empty state (position 64), batch 1, for
  every family; for the VSSM one round is a whole block (``block_size = n``: four passes), for the
  autoregressive families n recurrent steps.
- Full-sequence generation time against block size: the VSSM at each block size beside the three
  baselines (their own generation), unprompted, at batch 1 and 32, timed round-robin in one process so that
  background load hits every entry alike; the ratios to the AR-SSM are what the suite reports,
  and for blocks up to 112 that fuse (``VSSM.fuses``) the ratio of fused rounds to the block-by-block
  path (blocks 33-64 fuse only on the compiled rounds: where those cannot run, both take the
  block-by-block path and the ratio reads about 1).

- Images: a whole image against block size from each other MNIST VSSM served at a block size
  (``bench.common.IMAGE_VSSMS``, ``images`` by recipe), beside the AR-SSM, at batch 1 and 32.
- Text: 256 bytes against block size, each bundled text VSSM's shapes (``bench.common.TEXT_VSSMS``:
  ``text`` the paper's, ``texts`` the others by recipe) beside the three text baselines'
  (``bench.common.text_models``), at batch 1 and 32, with its served default marked: the text
  targets' speed.

Timing does not depend on the weights' values, so random-weight models are timed: the suite's
matched baselines, and VSSMs of the served block models' shapes (``bench.common.with_block_vssm``:
the ``mnist-vssm-blocks`` recipe for the curve and the rounds, whose decoder reads the tokens before
each block; ``IMAGE_VSSMS``' recipes for ``images``).  One exception: a VSSM whose partial encoder
reads a patch a step (``VSSMConfig.par_patch``) skips a decoder pass in a round where the absorbed
latents equal the drawn ones (csrc/patch_rounds.c), which trained weights nearly always meet and
random ones almost never; ``images`` times such a recipe's bundled checkpoint where its shapes are
the recipe's, and says which weights it timed (``weights``).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from typing import Any

import torch

from vssm import model
from vssm.model.base import parse_block_sizes
from vssm.model.recipes import RECIPES

from .common import (
    CHECKPOINTS,
    IMAGE_VSSMS,
    TEXT_RECIPES,
    TEXT_VSSMS,
    Settings,
    measure_interleaved,
    text_models,
    with_block_vssm,
)

log = logging.getLogger(__name__)

__all__ = ["run_blocks", "run_image", "run_text"]


FUSED_REFERENCE_UP_TO = 112  # block sizes also timed on the block-by-block path, to report the fusion's gain


def _reference(m: model.SequenceModel, state: model.GenState, n: int, c: int) -> None:
    """Generation on the block-by-block path (four passes per block, in PyTorch), for the fused path's
    ratio: the fused path is also the compiled loop where its passes are short (csrc/rounds.c), so
    the ratio is of both."""
    saved = m.fuse_rounds
    m.fuse_rounds = False  # an instance attribute: the class default is untouched
    try:
        m.generate(state, n, resumable=False, block_size=c)
    finally:
        m.fuse_rounds = saved


def _whole_sequences(
    models: dict[str, model.SequenceModel], T: int, batch: int, sizes: list[int] | tuple[int, ...]
) -> dict[str, Any]:
    """Calls drawing ``batch`` whole unprompted sequences of ``T`` tokens (seeds 0..batch-1): ``ar:<family>``
    for each baseline, ``vssm:<c>`` for the VSSM at each block size of ``sizes``."""
    starts = {f: m.start(torch.zeros(batch, 0, dtype=torch.long), list(range(batch))) for f, m in models.items()}
    fns: dict[str, Any] = {
        f"ar:{f}": (lambda m=m, st=starts[f]: m.generate(st, T, resumable=False))
        for f, m in models.items()
        if f != "vssm"
    }
    vssm, st = models["vssm"], starts["vssm"]
    for c in sizes:
        fns[f"vssm:{c}"] = lambda c=c: vssm.generate(st, T, resumable=False, block_size=c)
    return fns


def _from(m: model.SequenceModel, batch: int, position: int) -> model.GenState:
    """A state after ``position`` observed tokens (seeds 0..batch-1)."""
    prompt = torch.randint(0, m.vocab_size, (batch, position), generator=torch.Generator().manual_seed(0))
    return m.start(prompt, list(range(batch)))


@torch.no_grad()
def run_blocks(models: dict[str, model.SequenceModel], s: Settings) -> dict[str, Any]:
    T = s.blocks_length
    out: dict[str, Any] = {
        "length": T,
        "round_position": 64,
        "vssm_config": dataclasses.asdict(models["vssm"].config),  # the shapes timed (the served block model's)
        "rounds": {},
        "sequence": {},
    }
    # round latency against n, every family side by side
    states = {f: _from(m, 1, 64) for f, m in models.items()}
    for n in s.round_ns:
        fns = {
            f: (lambda f=f, m=m, n=n: m.generate(states[f], n, block_size=n, resumable=True)) for f, m in models.items()
        }
        timed = measure_interleaved(fns, s.repeats)
        out["rounds"][str(n)] = {f: t.as_dict() for f, t in timed.items()}
        log.info("round n=%d: %s", n, {f: f"{t.median_s * 1e3:.2f} ms" for f, t in timed.items()})
    # a whole sequence against block size, beside the baselines
    vssm = models["vssm"]
    # fused rounds also timed block by block, for the fusion's gain (blocks 33-64 fuse only where compiled)
    timed_fused = [c for c in s.block_sizes if c <= FUSED_REFERENCE_UP_TO and vssm.fuses(c)]
    for batch in s.batches:
        fns = _whole_sequences(models, T, batch, s.block_sizes)
        st = vssm.start(torch.zeros(batch, 0, dtype=torch.long), list(range(batch)))
        for c in timed_fused:
            fns[f"vssm-reference:{c}"] = lambda c=c, st=st: _reference(vssm, st, T, c)
        timed = measure_interleaved(fns, max(1, s.repeats // 2))
        ar = timed["ar:ar-ssm"].median_s
        out["sequence"][str(batch)] = {
            "seconds": {k: t.as_dict() for k, t in timed.items()},
            "speedup_vs_ar_ssm": {str(c): ar / timed[f"vssm:{c}"].median_s for c in s.block_sizes},
            # fused rounds (two passes per block) against the block-by-block path (four)
            "fused_speedup": {
                str(c): timed[f"vssm-reference:{c}"].median_s / timed[f"vssm:{c}"].median_s for c in timed_fused
            },
        }
        log.info(
            "batch %d: AR-SSM %.0f ms; VSSM %s",
            batch,
            ar * 1e3,
            {c: f"{timed[f'vssm:{c}'].median_s * 1e3:.0f} ms" for c in s.block_sizes},
        )
    out["images"] = {name: run_image({"ar-ssm": models["ar-ssm"]}, s, name) for name in IMAGE_VSSMS}
    out["text"] = run_text(s)
    out["texts"] = {name: run_text(s, name) for name in TEXT_VSSMS if name != TEXT_RECIPES["vssm"]}
    return out


def _served_part(
    models: dict[str, model.SequenceModel],
    s: Settings,
    T: int,
    recipes: dict[str, str],
    sizes: list[int],
    served: int,
    at_one: bool = False,
) -> dict[str, Any]:
    """Whole sequences of ``T`` tokens from one bundled VSSM's shapes (``recipes``: its recipe and the
    baselines', by family) at each block size of ``sizes``, beside the baselines, per batch; ``at_one``:
    also its served default at observation temperature 1 where it is served below 1, as a reference."""
    vssm = models["vssm"]
    t1 = None  # the served observation temperature (bench.common.as_served) and, below 1, the same call at 1
    if at_one and vssm.observation_temperature != 1.0:
        t1 = copy.deepcopy(vssm).freeze()  # a copy is not frozen (SequenceModel.__getstate__)
        t1.observation_temperature = 1.0
    out: dict[str, Any] = {
        "length": T,
        "recipes": recipes,
        "observation_temperature": vssm.observation_temperature,
        "vssm_config": dataclasses.asdict(vssm.config),
        "ar_ssm_config": dataclasses.asdict(models["ar-ssm"].config),
        "served_block_size": served,
        "sequence": {},
    }
    for batch in s.batches:
        fns = _whole_sequences(models, T, batch, sizes)
        if t1 is not None:
            st = t1.start(torch.zeros(batch, 0, dtype=torch.long), list(range(batch)))
            fns[f"vssm-t1:{served}"] = lambda m=t1, st=st: m.generate(st, T, resumable=False, block_size=served)
        timed = measure_interleaved(fns, max(1, s.repeats // 2))
        ar_s = timed["ar:ar-ssm"].median_s
        part = out["sequence"][str(batch)] = {
            "seconds": {k: t.as_dict() for k, t in timed.items()},
            "speedup_vs_ar_ssm": {str(c): ar_s / timed[f"vssm:{c}"].median_s for c in sizes},
        }
        if t1 is not None:
            part["served_speedup_at_observation_temperature_1"] = ar_s / timed[f"vssm-t1:{served}"].median_s
        # the target's pair again, with more runs: the sweep's one run of a few-millisecond call moved by
        # a quarter between runs (docs/experiments/blocks.md, twenty-third session)
        pair = {k: fns[k] for k in ("ar:ar-ssm", f"vssm:{served}")}
        again = measure_interleaved(pair, s.limit_repeats)
        part["served"] = {
            "block_size": served,
            "repeats": s.limit_repeats,
            "seconds": {k: t.as_dict() for k, t in again.items()},
            "speedup_vs_ar_ssm": again["ar:ar-ssm"].median_s / again[f"vssm:{served}"].median_s,
        }
        log.info(
            "%s, batch %d: AR-SSM %.0f ms; VSSM %s",
            recipes["vssm"],
            batch,
            ar_s * 1e3,
            {c: f"{timed[f'vssm:{c}'].median_s * 1e3:.1f} ms" for c in sizes},
        )
        log.info(
            "%s, batch %d, served block %d again: %.2fx",
            recipes["vssm"],
            batch,
            served,
            part["served"]["speedup_vs_ar_ssm"],
        )
    return out


@torch.no_grad()
def run_image(baselines: dict[str, model.SequenceModel], s: Settings, recipe: str) -> dict[str, Any]:
    """A whole image from the MNIST VSSM ``recipe``'s shapes against block size (the suite's dial, its served
    default and the sizes its training used), beside ``baselines`` (the suite's matched AR-SSM), in the form of
    the text part."""
    T = s.blocks_length
    served = RECIPES[recipe].default_block_size or T
    recipes = {"vssm": recipe, "ar-ssm": "mnist-ar-ssm"}
    models = with_block_vssm(baselines, recipe=recipe)
    weights = "random"
    bundled = CHECKPOINTS / f"{recipe}.safetensors"
    if models["vssm"].config.par_patch and bundled.exists():  # its rounds depend on its weights (module doc)
        trained = model.load_checkpoint(bundled).freeze()
        shapes = {**dataclasses.asdict(models["vssm"].config), "max_position": trained.config.max_position}
        if dataclasses.asdict(trained.config) == shapes:
            models, weights = {**models, "vssm": trained}, f"checkpoints/{bundled.name}"
    # the dial's sizes, the served one and (not in a quick run) those its training used: a patch model's are
    # whole patches, its compiled calls' sizes, where the dial's may not be (mnist-vssm-prior16's 28, 56, 196)
    trained = [] if s.mode == "quick" else parse_block_sizes(str(RECIPES[recipe].train.get("block_sizes", "")))
    sizes = sorted({*s.block_sizes, served, *(c for c in trained if c < T)})
    part = _served_part(models, s, T, recipes, sizes, served)
    return {**part, "weights": weights, "mixed": _mixed_places(models["vssm"], s, served)}


MIXED_ROWS, MIXED_CHUNK = 8, 64  # sessions streamed in 64-token chunks, as the serving part's


def _mixed_places(m: model.SequenceModel, s: Settings, block: int) -> dict[str, Any]:
    """One kept 64-token chunk of 8 sessions at positions 0, 64, ..., 448 (a server's batch of sessions in chunks
    meets them at different places in their blocks: at block 28, seven phases), batched against each alone, in
    process: a batch went block by block in PyTorch for every row before the thirty-eighth session
    (docs/experiments/rounds-and-serving.md)."""
    empty = [m.start(torch.zeros(1, 0, dtype=torch.long), [k]) for k in range(MIXED_ROWS)]
    states = [m.generate(e, k * MIXED_CHUNK, block_size=block)[1] if k else e for k, e in enumerate(empty)]
    batch = model.GenState.cat(states)
    fns = {
        "batched": lambda: m.generate(batch, MIXED_CHUNK, block_size=block),
        "one at a time": lambda: [m.generate(st, MIXED_CHUNK, block_size=block) for st in states],
    }
    timed = measure_interleaved(fns, s.limit_repeats)
    alone, together = timed["one at a time"].median_s, timed["batched"].median_s
    places = len(m._block_groups(batch, [block] * MIXED_ROWS))  # the groups the batch runs in, a call each
    log.info("%d sessions at %d places of block %d: one at a time / batched %.2fx", MIXED_ROWS, places, block,
             alone / together)  # fmt: skip
    return {
        "rows": MIXED_ROWS,
        "chunk": MIXED_CHUNK,
        "block_size": block,
        "places": places,
        "seconds": {k: t.as_dict() for k, t in timed.items()},
        "throughput_ratio": alone / together,
    }


@torch.no_grad()
def run_text(s: Settings, recipe: str = TEXT_RECIPES["vssm"]) -> dict[str, Any]:
    """A whole text sequence against block size: the text VSSM ``recipe``'s shapes beside the text
    baselines', in the same form as the MNIST part (``sequence``), with the served default's block size
    and, where it is served below observation temperature 1, that call at 1 as a reference."""
    T = s.text_length
    default = RECIPES[recipe].default_block_size
    served = T if default is None or default >= T else default  # None: one pass
    sizes = sorted({*s.text_block_sizes, served})
    return _served_part(text_models(vssm=recipe), s, T, {**TEXT_RECIPES, "vssm": recipe}, sizes, served, True)
