"""Training loop for every family: budgets, schedules, validation, resumable state, DDP.

Glossary of axis letters:
    B  batch      T  sequence length

Resuming: ``<out>/train.safetensors`` holds the weights, the Adam moments, the step, the
wall-clock seconds spent so far and the data generator's state (tensors plus JSON metadata; no
pickle).  A rerun of the same command continues where it stopped, and the budget counts the
time of every run.  With ``ema_decay`` the loop also keeps an exponential moving average of the
weights (in the same file): it is what validation scores and ``model.safetensors`` holds, while
``model-raw.safetensors`` holds the last step's weights.  Data-parallel training runs under
``torchrun`` (gloo on CPU, NCCL on GPU).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

from .base import SequenceModel, parse_block_sizes
from .checkpoint import build_model, current_config, load_checkpoint, save_checkpoint
from .data import Dataset, batches, eval_sequences, load_dataset
from .modality import of_dataset
from .presets import preset_config
from .recipes import RECIPES, recipe_fields

__all__ = ["LossModule", "TrainConfig", "model_config", "train"]

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    preset: str = ""  # a bundled checkpoint's whole recipe (model/recipes.py), e.g. mnist-vssm; other flags override it
    dataset: str = "mnist"  # mnist | mnist8 | shakespeare | cifar10
    family: str = "vssm"  # vssm | ar-ssm | ar-transformer | ar-gru | tvae | vrnn
    size: str = "small"  # preset name (model/presets.py)
    overrides: str = ""  # JSON object merged into the preset's model config, e.g. '{"n_latents": 4}'
    out: str = "runs/mnist-vssm"  # run directory: train state, model checkpoint, metrics
    data_dir: str | None = None  # dataset directory (default: $VSSM_DATA_DIR or ../shared/data)
    batch_size: int = 32  # sequences per step (per process under DDP)
    seq_len: int = 256  # training window for text (images use their full length)
    lr: float = 3e-3  # peak learning rate (SSM dynamics use min(lr, ssm_lr))
    ssm_lr: float = 1e-3  # learning rate cap for A, dt (no weight decay), as in S4
    weight_decay: float = 0.01  # AdamW decay on weight matrices
    warmup_steps: int = 200  # linear LR warm-up
    min_lr_ratio: float = 0.1  # cosine decays to this fraction of the peak
    max_steps: int = 0  # stop after this many steps (0: no step limit)
    budget_minutes: float = 0.0  # stop after this much training wall-clock (0: no time limit)
    budget_cpu_minutes: float = 0.0  # stop after this much CPU time of the training loop (0: no limit)
    kl_warmup_steps: int = 1000  # latent families (VSSM, TVAE, VRNN): KL weight ramps 0 -> 1 over these steps
    tau: float = 1.0  # latent families: Gumbel-softmax temperature at the start
    tau_min: float = 0.5  # latent families: temperature at the end of the schedule
    block_sizes: str = ""  # VSSM: train block sampling's ELBO, a block size per batch drawn from this list ("8,16,784")
    code_steps: int = 0  # VSSM block training: the first N steps fix the latents to the tokens' code, then the ELBO
    grad_clip: float = 1.0  # max gradient norm
    ema_decay: float = 0.0  # validate and save an exponential moving average of the weights with this decay (0: off)
    val_every: int = 250  # steps between validations
    val_sequences: int = 500  # validation sequences (a fixed prefix of the valid split)
    ckpt_every: int = 250  # steps between resumable checkpoints
    seed: int = 0  # weights and data order
    init_from: str = ""  # fine-tune: start from this checkpoint's weights (same family and config), fresh optimiser
    train_only: str = ""  # train only these top-level networks, e.g. "encoder,encoder_bwd"; the rest stay frozen
    threads: int = 0  # torch intra-op threads (0: leave torch's default)
    limit: int | None = None  # keep only this many sequences / bytes per split (tests)
    device: str = "auto"  # auto | cpu | cuda

    @classmethod
    def from_preset(cls, name: str, **explicit: Any) -> TrainConfig:
        """The recipe ``name`` (model/recipes.py) with ``explicit`` fields on top; an explicit
        ``overrides`` JSON object is merged into the recipe's model overrides, key by key."""
        if name not in RECIPES:
            raise ValueError(f"preset must be one of {', '.join(RECIPES)}, got {name!r}")
        fields = recipe_fields(RECIPES[name])
        if explicit.get("overrides"):
            merged = {**json.loads(fields.get("overrides") or "{}"), **json.loads(explicit["overrides"])}
            explicit = {**explicit, "overrides": json.dumps(merged)}
        return cls(**{"out": f"runs/{name}", **fields, **explicit, "preset": name})

    def __post_init__(self) -> None:
        if self.preset and self.preset not in RECIPES:
            raise ValueError(f"preset must be one of {', '.join(RECIPES)}, got {self.preset!r}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        self.block_choices()  # fail at once on a malformed list
        if self.code_steps < 0:
            raise ValueError(f"code_steps must be >= 0, got {self.code_steps}")
        if self.code_steps and (self.family != "vssm" or not self.block_sizes):
            raise ValueError("code_steps trains a VSSM for block sampling: give --block-sizes")

    def block_choices(self) -> list[int]:
        """The block sizes of ``block_sizes``, each a positive integer (empty: one-pass training)."""
        return parse_block_sizes(self.block_sizes)


def model_config(cfg: TrainConfig) -> dict[str, Any]:
    """The model config dict ``cfg`` trains: the size preset (model/presets.py) plus ``overrides``."""
    return {**preset_config(cfg.dataset, cfg.family, cfg.size, cfg.seq_len), **json.loads(cfg.overrides or "{}")}


class LossModule(nn.Module):
    """Wraps a model so that ``forward`` returns the training loss (what DDP synchronises)."""

    def __init__(self, model: SequenceModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor, **schedule: Any) -> tuple[Tensor, dict[str, float]]:
        out = self.model.loss(x, **schedule)
        return out.total, {k: v.mean().item() for k, v in out.parts.items()}


def _param_groups(model: nn.Module, cfg: TrainConfig) -> list[dict[str, Any]]:
    ssm, decay, no_decay = [], [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:  # frozen by train_only
            continue
        leaf = name.rsplit(".", 1)[-1]
        if leaf in ("log_dt", "A_log", "A_imag"):
            ssm.append(p)
        elif p.ndim >= 2 and leaf != "C" and "embed" not in name and ".pos." not in name:
            decay.append(p)
        else:
            no_decay.append(p)
    return [
        {"params": ssm, "lr": min(cfg.lr, cfg.ssm_lr), "weight_decay": 0.0, "base_lr": min(cfg.lr, cfg.ssm_lr)},
        {"params": decay, "lr": cfg.lr, "weight_decay": cfg.weight_decay, "base_lr": cfg.lr},
        {"params": no_decay, "lr": cfg.lr, "weight_decay": 0.0, "base_lr": cfg.lr},
    ]


def _progress(cfg: TrainConfig, step: int, elapsed: float, cpu: float = 0.0) -> float:
    """Fraction of the run done, by steps or by time, whichever is further along."""
    fracs = []
    if cfg.max_steps:
        fracs.append(step / cfg.max_steps)
    if cfg.budget_minutes:
        fracs.append(elapsed / (60 * cfg.budget_minutes))
    if cfg.budget_cpu_minutes:
        fracs.append(cpu / (60 * cfg.budget_cpu_minutes))
    return min(1.0, max(fracs)) if fracs else 0.0


def _finished(cfg: TrainConfig, step: int, elapsed: float, world: int, cpu: float = 0.0) -> bool:
    """Whether the budget is spent; under DDP rank 0's clock decides for everyone."""
    flag = torch.tensor([1.0 if _progress(cfg, step, elapsed, cpu) >= 1.0 else 0.0])
    if world > 1:
        dist.broadcast(flag, src=0)
    return bool(flag.item())


def _lr_factor(cfg: TrainConfig, step: int, progress: float) -> float:
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


# ----- resumable training state (safetensors, no pickle) --------------------------------------------
def save_train_state(
    path: Path,
    model: SequenceModel,
    opt: torch.optim.Optimizer,
    meta: dict[str, Any],
    gen: torch.Generator,
    ema: AveragedModel | None = None,
) -> None:
    tensors = {f"model.{k}": v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    if ema is not None:
        tensors.update({f"ema.{k}": v.detach().contiguous().cpu() for k, v in ema.state_dict().items()})
    params = [p for g in opt.param_groups for p in g["params"]]
    for i, p in enumerate(params):
        for key, value in opt.state.get(p, {}).items():
            if isinstance(value, Tensor):
                tensors[f"opt.{i}.{key}"] = value.detach().contiguous().cpu()
    tensors["rng.data"] = gen.get_state()
    info = {
        "meta": json.dumps(meta),
        "family": model.family,
        "config": json.dumps(dataclasses.asdict(model.config), sort_keys=True),
    }
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata=info)
    tmp.replace(path)


def load_train_state(
    path: Path,
    model: SequenceModel,
    opt: torch.optim.Optimizer,
    gen: torch.Generator,
    ema: AveragedModel | None = None,
    train_only: str = "",
) -> dict[str, Any]:
    """Restore a run's state into ``model``, ``opt``, ``gen`` and ``ema``; returns the run's meta.
    ``train_only`` must be the run's own: the optimiser's state is stored by position among the
    parameters it trains, so another frozen set would give it to the wrong tensors."""
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        same = meta.get("family") == model.family
        if not same or current_config(model.family, json.loads(meta["config"])) != dataclasses.asdict(model.config):
            raise ValueError(f"{path} holds a different model; use another --out or delete it")
        theirs = json.loads(meta["meta"]).get("config", {}).get("train_only", "")
        if theirs != train_only:
            run = f"{path} trained --train-only {theirs!r}, not {train_only!r}"
            raise ValueError(f"{run}; use another --out or delete it")
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not iterable)
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    if ema is not None:
        averaged = {k[4:]: v for k, v in tensors.items() if k.startswith("ema.")}
        if averaged:
            ema.load_state_dict(averaged)
        else:  # a run that started without an average: begin it from the weights reached so far
            ema.update_parameters(model)
    params = [p for g in opt.param_groups for p in g["params"]]
    for name, value in tensors.items():
        if name.startswith("opt."):
            _, i, key = name.split(".", 2)
            p = params[int(i)]
            opt.state[p][key] = value.to(p.device) if key != "step" else value
    gen.set_state(tensors["rng.data"])
    return json.loads(meta["meta"])


# ----- validation ---------------------------------------------------------------------------------
@torch.no_grad()
def validate(
    model: SequenceModel, seqs: Tensor, batch_size: int, block_sizes: tuple[int, ...] = ()
) -> dict[str, float]:
    """Validation figures; ``block_sizes`` adds the negative ELBO of block sampling at each (``nll_c<size>``)."""
    model.eval()
    totals: dict[str, float] = {}
    for i in range(0, len(seqs), batch_size):
        x = seqs[i : i + batch_size].to(model.device)
        parts = dict(model.loss(x, prompt_lengths=torch.zeros(len(x), dtype=torch.long, device=x.device)).parts)
        for c in block_sizes:
            parts[f"nll_c{c}"] = model.loss(x, block_size=c).parts["nll"]
        for k, v in parts.items():
            totals[k] = totals.get(k, 0.0) + float(v.sum())
    model.train()
    out = {k: v / len(seqs) for k, v in totals.items()}
    out["nll_per_token"] = out["nll"] / seqs.shape[1]
    return out


# ----- the loop -----------------------------------------------------------------------------------
def _init_from(model: SequenceModel, path: str) -> None:
    """Copy the weights of the checkpoint at ``path`` into ``model``, which must be of the same family
    and config (a resumed run reloads its own state over them)."""
    source = load_checkpoint(path)
    mine = dataclasses.asdict(model.config)
    theirs = dataclasses.asdict(source.config)
    if source.family != model.family or mine != theirs:
        diff = {k: (theirs.get(k), v) for k, v in mine.items() if theirs.get(k) != v}
        raise ValueError(f"--init-from {path}: a {source.family} with {diff or 'another family'} (checkpoint, run)")
    model.load_state_dict(source.state_dict())
    log.info("weights from %s", path)


def _freeze_all_but(model: SequenceModel, names: str) -> None:
    """Freeze every parameter outside the comma-separated top-level networks ``names``: e.g. a
    VSSM's encoder fitted to a fixed generative model, whose bounds tighten while what it samples
    stays the same (docs/experiments/blocks.md, eleventh session)."""
    keep = {n.strip() for n in names.split(",") if n.strip()}
    nets = {name for name, _ in model.named_children()}
    if not keep or keep - nets:
        raise ValueError(f"train_only: {sorted(keep - nets) or names!r} not among {sorted(nets)}")
    for name, p in model.named_parameters():
        p.requires_grad_(name.split(".", 1)[0] in keep)
    log.info("training only %s", ", ".join(sorted(keep)))


def train(cfg: TrainConfig, dataset: Dataset | None = None) -> Path:
    """Train (or resume) ``cfg`` and return the path of the model checkpoint."""
    if not cfg.max_steps and not cfg.budget_minutes and not cfg.budget_cpu_minutes:
        raise ValueError("give a budget: --max-steps, --budget-minutes and/or --budget-cpu-minutes")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = torch.device(
        "cuda"
        if cfg.device == "auto" and torch.cuda.is_available()
        else ("cpu" if cfg.device == "auto" else cfg.device)
    )
    if world > 1:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(device)
    main = rank == 0
    out = Path(cfg.out)
    if main:
        out.mkdir(parents=True, exist_ok=True)

    ds = dataset or load_dataset(cfg.dataset, cfg.data_dir, limit=cfg.limit)
    seq_len = ds.max_position or cfg.seq_len
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.family, model_config(cfg)).to(device)
    if getattr(model.config, "decoder_tokens", False) and not any(c < seq_len for c in cfg.block_choices()):
        # one-pass training feeds the decoder EMPTYs only: its token weights would stay at their init
        raise ValueError("decoder_tokens trains with block sampling: give --block-sizes with a size below the length")
    if cfg.init_from:
        _init_from(model, cfg.init_from)
    if cfg.train_only:
        if not cfg.init_from and not (out / "train.safetensors").exists():
            log.warning("--train-only without --init-from: the frozen networks keep their random initial weights")
        _freeze_all_but(model, cfg.train_only)
    model.modality = of_dataset(ds.name)  # before the average copies the model: both checkpoints record it
    model.train()
    opt = torch.optim.AdamW(_param_groups(model, cfg), lr=cfg.lr, betas=(0.9, 0.99))
    gen = torch.Generator().manual_seed(cfg.seed * 1009 + rank)
    # the average is what gets validated and saved: late in a noisy run it sits nearer the optimum
    # than the last step's weights; the raw weights keep training (and are saved beside it)
    ema = (
        AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay), use_buffers=True)
        if cfg.ema_decay
        else None
    )
    state_path = out / "train.safetensors"
    meta: dict[str, Any] = {"step": 0, "elapsed": 0.0, "cpu": 0.0, "best_val": None, "config": dataclasses.asdict(cfg)}
    if state_path.exists():
        meta = {**meta, **load_train_state(state_path, model, opt, gen, ema, cfg.train_only)}
        if main:
            log.info("resuming %s at step %d (%.1f min spent)", state_path, meta["step"], meta["elapsed"] / 60)
    wrapped: nn.Module = LossModule(model)
    if world > 1:
        wrapped = nn.parallel.DistributedDataParallel(wrapped, device_ids=[device] if device.type == "cuda" else None)
    val_seqs = eval_sequences(ds.valid, seq_len)[: cfg.val_sequences]
    blocks = cfg.block_choices()
    # validate block sampling at the smallest trained block size and at the middle one
    val_blocks = tuple(sorted({min(blocks), sorted(blocks)[len(blocks) // 2]})) if blocks else ()
    metrics_file = out / "metrics.jsonl"
    ckpt_path = out / "model.safetensors"
    raw_path = out / "model-raw.safetensors"  # the last step's weights, written when an average is kept
    served: SequenceModel = ema.module if ema is not None else model  # type: ignore[assignment]

    # elapsed: wall-clock seconds of training steps (the budget); cpu: this process's CPU seconds in
    # them, which shows how much of the budget a shared machine really gave the run
    step, elapsed, cpu = int(meta["step"]), float(meta["elapsed"]), float(meta.get("cpu", 0.0))
    bar = tqdm(
        total=cfg.max_steps or None,
        initial=step,
        disable=not main,
        dynamic_ncols=True,
        desc=f"{cfg.family}:{cfg.dataset}",
    )
    t_last, c_last = time.perf_counter(), time.process_time()
    tokens_seen = 0
    done = _finished(cfg, step, elapsed, world, cpu)
    while not done:
        progress = _progress(cfg, step, elapsed, cpu)
        factor = _lr_factor(cfg, step, progress)
        for g in opt.param_groups:
            g["lr"] = g["base_lr"] * factor
        kl_weight = min(1.0, (step + 1) / cfg.kl_warmup_steps) if cfg.kl_warmup_steps else 1.0
        tau = cfg.tau + (cfg.tau_min - cfg.tau) * progress
        x = batches(ds.train, cfg.batch_size, seq_len, gen).to(device)
        block = blocks[int(torch.randint(len(blocks), (1,), generator=gen))] if blocks else None
        stage = {"code": True} if step < cfg.code_steps else {}  # VSSM._code_loss
        loss, terms = wrapped(x, kl_weight=kl_weight, tau=tau, block_size=block, **stage)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = float(nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip))
        opt.step()
        if ema is not None:
            ema.update_parameters(model)
        step += 1
        now, cpu_now = time.perf_counter(), time.process_time()
        elapsed += now - t_last
        cpu += cpu_now - c_last
        t_last, c_last = now, cpu_now
        tokens_seen += x.numel()
        if main:
            bar.update(1)
            bar.set_postfix(
                {
                    **{k: f"{v:.1f}" for k, v in terms.items()},
                    "tok/s": f"{tokens_seen / max(elapsed, 1e-9):.0f}" if step > 1 else "-",
                    "min": f"{elapsed / 60:.1f}",
                },
                refresh=False,
            )
        done = _finished(cfg, step, elapsed, world, cpu)  # the final step is always validated and saved
        do_val = step % cfg.val_every == 0 or done
        do_ckpt = step % cfg.ckpt_every == 0 or done
        if main and (do_val or do_ckpt):
            record = {
                "step": step,
                "elapsed_s": round(elapsed, 1),
                "lr": opt.param_groups[1]["lr"],
                "kl_weight": kl_weight,
                "tau": tau,
                "grad_norm": gnorm,
                **{f"train_{k}": v for k, v in terms.items()},
            }
            if do_val:
                val = validate(served, val_seqs, max(cfg.batch_size, 64), val_blocks)
                record.update({f"val_{k}": v for k, v in val.items()})
                if ema is not None:
                    raw = validate(model, val_seqs, max(cfg.batch_size, 64), val_blocks)
                    record.update({f"val_raw_{k}": v for k, v in raw.items()})
                log.info("step %d val %s", step, json.dumps({k: round(v, 3) for k, v in val.items()}))
                if meta["best_val"] is None or val["nll"] < meta["best_val"]:
                    meta["best_val"] = val["nll"]
            with metrics_file.open("a") as f:
                f.write(json.dumps(record) + "\n")
            meta.update(step=step, elapsed=elapsed, cpu=cpu)
            save_train_state(state_path, model, opt, meta, gen, ema)
            save_checkpoint(served, ckpt_path, extra=_ckpt_meta(cfg, step, elapsed, cpu))
            if ema is not None:
                save_checkpoint(model, raw_path, extra=_ckpt_meta(cfg, step, elapsed, cpu))
        if do_val or do_ckpt:
            if world > 1:
                dist.barrier()
            # validation, saving and a rank's wait for rank 0 are not training time
            t_last, c_last = time.perf_counter(), time.process_time()
    bar.close()
    if main:
        log.info("done: %d steps in %.1f min -> %s", step, elapsed / 60, ckpt_path)
    if world > 1:
        # replicas must end identical; the log line lets anyone check (the DDP test does)
        log.info("rank %d of %d finished at step %d, weights %s", rank, world, step, model.fingerprint)
        dist.barrier()
        dist.destroy_process_group()
    return ckpt_path


def _ckpt_meta(cfg: TrainConfig, step: int, elapsed: float, cpu: float) -> dict[str, str]:
    return {
        "dataset": cfg.dataset,
        "train_steps": str(step),
        "train_seconds": f"{elapsed:.1f}",
        "train_cpu_seconds": f"{cpu:.1f}",
        "train_config": json.dumps(dataclasses.asdict(cfg), sort_keys=True),
        "train_machine": _machine(),
    }


@functools.cache  # read once per process, not at every checkpoint
def _machine() -> str:
    """CPU model and core count: a wall-clock budget means little without the machine it ran on."""
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass  # not Linux: platform's answer stands
    return f"{name}, {os.cpu_count()} CPUs"
