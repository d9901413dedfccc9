"""Shared pieces of the benchmark suite: settings, timing, matched models, machine description.

Every comparison is timed side by side in one process and reported as a ratio, so the numbers
stay meaningful on a loaded or slower machine; absolute times are kept for the plots only.
"""

from __future__ import annotations

import gc
import logging
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from vssm import model
from vssm.model import native
from vssm.model.checkpoint import observation_temperature
from vssm.model.presets import preset_config
from vssm.model.recipes import RECIPES

__all__ = [
    "BLOCK_RECIPE",
    "CHECKPOINTS",
    "FAMILIES",
    "FULL",
    "IMAGE_VSSMS",
    "LABELS",
    "QUICK",
    "Deadline",
    "Settings",
    "Timing",
    "build_models",
    "machine_info",
    "matched_configs",
    "measure",
    "measure_interleaved",
    "parameter_counts",
    "unprompted",
    "with_block_vssm",
]

log = logging.getLogger(__name__)

CHECKPOINTS = Path(__file__).resolve().parents[1] / "checkpoints"  # the bundled models
FAMILIES: tuple[str, ...] = ("vssm", "ar-ssm", "ar-transformer", "ar-gru", "tvae", "vrnn")
LABELS: dict[str, str] = {
    "vssm": "VSSM (parallel)",
    "ar-ssm": "AR-SSM (recurrent)",
    "ar-transformer": "AR-Transformer (KV cache)",
    "ar-gru": "AR-GRU",
    "tvae": "TVAE (parallel, KV caches)",
    "vrnn": "VRNN (sequential latents)",
}


@dataclass(frozen=True)
class Settings:
    """What one run measures; ``QUICK`` is the CI smoke test, ``FULL`` the committed results."""

    mode: str
    gen_lengths: tuple[int, ...]  # T of the generation-time curve
    batches: tuple[int, ...]  # (small, large) batch sizes
    repeats: int  # timed runs per point (best and median reported)
    run_cap_s: float  # an AR run longer than this ends that family's curve at that batch
    gen_budget_s: float  # the generation curve's share of the suite's wall-clock
    limit_length: int  # T of the "limit" comparison (a full MNIST image in the full run)
    limit_repeats: int  # cheap, so more runs: interleaved to cancel background load
    prompt_length: int  # prompt of the prompted-chunk comparison
    chunk: int  # tokens per resumed chunk
    resume_positions: tuple[int, ...] = field(default=(0, 64, 128, 256, 512, 1024))
    resume_repeats: int = 5
    train_batch: int = 32
    train_length: int = 784
    train_steps: int = 3
    round_ns: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64)  # tokens of one round from a state (blocks part)
    block_sizes: tuple[int, ...] = (1, 2, 4, 8, 16, 28, 56, 112, 196, 392, 784)  # the VSSM's dial (blocks part)
    blocks_length: int = 784  # T of a whole sequence in the blocks part (an MNIST image)
    text_block_sizes: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256)  # the text VSSM's dial: its curve's sizes
    text_length: int = 256  # bytes of a whole text sequence in the blocks part (the text targets' 256)
    parallel_lengths: tuple[int, ...] = (64, 256)  # T of one call vs T one-token calls (Table 1 part)
    parallel_budget_s: float = 30.0  # that comparison's share of the suite's wall-clock
    one_pass_budget_s: float = 20.0  # the VSSM's curve without generation windows, at long T (Table 1 part)


QUICK = Settings(
    mode="quick",
    gen_lengths=(64, 256),
    batches=(1, 4),
    repeats=2,
    run_cap_s=5.0,
    gen_budget_s=20.0,
    limit_length=256,
    limit_repeats=3,
    prompt_length=64,
    chunk=64,
    resume_repeats=2,
    train_batch=4,
    train_length=256,
    train_steps=2,
    round_ns=(1, 16),
    block_sizes=(16, 128),
    blocks_length=128,
    text_block_sizes=(16, 64),
    text_length=64,
    parallel_lengths=(32, 128),
    parallel_budget_s=10.0,
)
FULL = Settings(
    mode="full",
    gen_lengths=(64, 128, 256, 512, 784, 1024, 2048, 4096),
    batches=(1, 32),
    repeats=3,
    run_cap_s=20.0,
    gen_budget_s=330.0,
    limit_length=784,
    limit_repeats=7,
    prompt_length=392,
    chunk=64,
    resume_repeats=7,
    train_batch=32,
    train_length=784,
    train_steps=3,
)


@dataclass
class Timing:
    best_s: float
    median_s: float
    runs_s: list[float]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class Deadline:
    """Wall-clock budget of one part, so the full suite stays under its 10 minutes."""

    def __init__(self, seconds: float) -> None:
        self.end = time.perf_counter() + seconds

    def remaining(self) -> float:
        return self.end - time.perf_counter()


def _timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def measure(fn: Callable[[], object], repeats: int, warmup: int = 1) -> Timing:
    """Best and median of ``repeats`` runs after ``warmup`` untimed ones (caches, allocator)."""
    for _ in range(warmup):
        fn()
    gc.collect()
    gc.disable()  # a collection inside a timed run is noise, not the model's cost
    try:
        runs = [_timed(fn) for _ in range(repeats)]
    finally:
        gc.enable()
    return Timing(min(runs), statistics.median(runs), runs)


def measure_interleaved(fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 1) -> dict[str, Timing]:
    """Time several functions round-robin, so background load hits each of them alike.

    Their ratios are what the suite reports, and this machine may be busy with other jobs.
    """
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    runs: dict[str, list[float]] = {k: [] for k in fns}
    gc.collect()
    gc.disable()
    try:
        for _ in range(repeats):
            for k, fn in fns.items():
                runs[k].append(_timed(fn))
    finally:
        gc.enable()
    return {k: Timing(min(v), statistics.median(v), v) for k, v in runs.items()}


# ----- models -----------------------------------------------------------------------------------
def matched_configs() -> dict[str, dict[str, Any]]:
    """The MNIST ``small`` preset of every family: baselines matched to the VSSM's generation params."""
    return {f: preset_config("mnist", f, "small") for f in FAMILIES}


BLOCK_RECIPE = "mnist-vssm-blocks"  # served at a block size: the blocks and rounds parts time its shapes
# the other MNIST VSSMs served at a block size: the blocks part times a whole image of each at its default
# (one served at block 16 also answers the block-16 targets: bench/targets.py)
IMAGE_VSSMS = ("mnist-vssm-prior", "mnist-vssm-prior16")


def block_config(recipe: str = BLOCK_RECIPE) -> dict[str, Any]:
    """A served block model's architecture: the MNIST ``small`` preset plus its recipe's overrides."""
    overrides = RECIPES[recipe].train.get("overrides", {})
    return {**preset_config("mnist", "vssm", "small"), **overrides}


def as_served(m: model.SequenceModel, recipe: str) -> model.SequenceModel:
    """``m`` at the recipe's observation temperature, as its bundled checkpoint is served (random
    weights carry none): at 0 its tokens given the latents are an argmax, not a categorical draw."""
    m.observation_temperature = observation_temperature(m, RECIPES[recipe].observation_temperature)
    return m


def with_block_vssm(
    models: dict[str, model.SequenceModel], seed: int = 0, recipe: str = BLOCK_RECIPE
) -> dict[str, model.SequenceModel]:
    """``models`` with the VSSM replaced by a random-weight one of a served block model's shapes.

    The one-pass parts time the ``small`` preset (the one-pass VSSMs' shapes); block sampling is
    served by ``mnist-vssm-blocks`` (``recipe``'s default), whose split of layers (decoder 4,
    partial encoder 3) and decoder input (the tokens before the block) differ, and whose rounds
    are what the speed targets count; ``IMAGE_VSSMS`` are the others served at a block size.
    """
    cfg = {**block_config(recipe), "max_position": None}
    with torch.random.fork_rng():  # the later parts' random draws stay what they were
        torch.manual_seed(seed)
        return {**models, "vssm": as_served(model.build_model("vssm", cfg).freeze(), recipe)}


# the bundled text models timed beside each other, by family: the served VSSM and the three baselines
# the text VSSMs the benchmark times, each beside the baselines (bench/blocks.py, run_text)
TEXT_VSSMS = ("shakespeare-vssm", "shakespeare-vssm-prior")
TEXT_RECIPES = {
    "vssm": "shakespeare-vssm",
    "ar-ssm": "shakespeare-ar-ssm",
    "ar-transformer": "shakespeare-ar-transformer",
    "ar-gru": "shakespeare-ar-gru",
}


def text_models(seed: int = 0, vssm: str = TEXT_RECIPES["vssm"]) -> dict[str, model.SequenceModel]:
    """Random-weight models of the bundled text models' shapes (their recipes), by family; the VSSM
    is the recipe ``vssm``'s, at its served observation temperature (:func:`as_served`)."""
    from vssm.model.train import TrainConfig, model_config

    out = {}
    for name in {**TEXT_RECIPES, "vssm": vssm}.values():
        cfg = TrainConfig.from_preset(name)
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            out[cfg.family] = as_served(model.build_model(cfg.family, model_config(cfg)).freeze(), name)
    return out


def build_models(configs: dict[str, dict[str, Any]], max_length: int, seed: int = 0) -> dict[str, model.SequenceModel]:
    """Random-weight models of the matched configs that accept ``max_length`` tokens.

    Random weights time the same as trained ones.  Sequences past the data's 784 need
    ``max_position=None`` (no limit) for the recurrent families, and a longer learned position
    table for the transformers (AR and TVAE): a lookup, so their compute is unchanged.  Frozen
    (``SequenceModel.freeze``), as the server holds every model it serves.
    """
    out = {}
    for family in FAMILIES:
        cfg = dict(configs[family])
        if family in ("ar-transformer", "tvae"):
            cfg["max_position"] = max(int(cfg["max_position"]), max_length)
        else:
            cfg["max_position"] = None
        torch.manual_seed(seed)
        out[family] = model.build_model(family, cfg).freeze()  # as the server holds it
    return out


def parameter_counts(configs: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Generation-time and total parameters of the matched configs (VSSM: decoder + partial encoder)."""
    counts = {}
    for family, cfg in configs.items():
        m = model.build_model(family, cfg)
        counts[family] = {
            "generation": m.num_parameters(generation_only=True),
            "total": m.num_parameters(),
            "config": cfg,
        }
    ref = counts["vssm"]["generation"]
    for c in counts.values():
        c["vs_vssm_generation"] = c["generation"] / ref
    return counts


def unprompted(m: model.SequenceModel, batch: int, length: int) -> torch.Tensor:
    """One-shot unprompted generation of ``length`` tokens for ``batch`` rows (the served request)."""
    state = m.start(torch.zeros(batch, 0, dtype=torch.long), list(range(batch)))
    tokens, _ = m.generate(state, length, resumable=False)
    return tokens


# ----- machine ----------------------------------------------------------------------------------
def machine_info(command: str) -> dict[str, Any]:
    """Everything a reader needs to judge the numbers, including the load other jobs put on it."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        usable = os.cpu_count() or 0
    return {
        **native.host_cpu(),
        "cores": os.cpu_count(),
        "usable_cores": usable,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average_start": list(os.getloadavg()),
        "command": command,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
