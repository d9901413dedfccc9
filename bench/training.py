"""Part 5: training throughput (tokens per second) per family at matched parameters.

One step = the family's training loss (the VSSM's: ELBO + partial-encoder KL, its three
networks), backward, clip and AdamW, as ``model/train.py`` runs it; data are random tokens,
which cost the same as real ones.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from vssm import model

from .common import Settings, measure_interleaved

__all__ = ["run_training"]

log = logging.getLogger(__name__)


def _step_fn(m: model.SequenceModel, x: torch.Tensor) -> Callable[[], None]:
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3)

    def step() -> None:
        loss = m.loss(x).total  # every family: model/base.py SequenceModel.loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(m.parameters(), 1.0)
        opt.step()

    return step


def run_training(configs: dict[str, dict[str, Any]], s: Settings) -> dict[str, Any]:
    B, T = s.train_batch, s.train_length
    steps = {}
    for family, cfg in configs.items():
        torch.manual_seed(0)
        m = model.build_model(family, cfg).train()
        x = torch.randint(0, m.vocab_size, (B, T))
        steps[family] = _step_fn(m, x)
    t = measure_interleaved(steps, repeats=s.train_steps)
    ref = B * T / t["vssm"].best_s
    rows = []
    for family, timing in t.items():
        tps = B * T / timing.best_s
        rows.append(
            {
                "family": family,
                "step": timing.as_dict(),
                "tokens_per_s": tps,
                "tokens_per_s_median": B * T / timing.median_s,
                "vs_vssm": tps / ref,
            }
        )
        log.info("training %-14s %.0f tokens/s (x%.2f of the VSSM)", family, tps, tps / ref)
    return {"batch": B, "T": T, "optimizer": "AdamW, grad clip 1.0", "results": rows}
