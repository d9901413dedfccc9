"""How much KL a learned per-step prior would save a trained VSSM over the uniform one.

Glossary of axis letters:
    N  images   T  sequence length   Z  latent variables per step   K  classes per latent

The best prior that keeps the latents independent over time (so that generation stays one
parallel pass) is each step's average posterior m_t = mean_x q(z_t | x), one factor per latent
variable.  It is fitted on training images and scored on test images:
KL(q_t || uniform) - KL(q_t || m_t) summed over the steps is what it would save per image.

    .venv/bin/python scripts/prior_gain.py checkpoints/mnist-vssm.safetensors
"""

from __future__ import annotations

import argparse
import json
import sys

import torch
from torch import Tensor

from vssm.model import VSSM, load_checkpoint
from vssm.model.checkpoint import read_metadata
from vssm.model.data import load_dataset


@torch.no_grad()
def average_posterior(model: VSSM, x: Tensor, batch: int = 250) -> Tensor:
    """``m_t``: the model's (unprompted) posterior averaged over the images ``x``, ``(T, Z, K)``."""
    total = sum(model._posterior_log_probs(x[i : i + batch]).exp().sum(0) for i in range(0, len(x), batch))
    return total / len(x)


@torch.no_grad()
def kl_saving(model: VSSM, x: Tensor, prior: Tensor, batch: int = 250) -> tuple[Tensor, Tensor]:
    """Per image ``(N,)``: the KL of the posterior to the uniform prior and to ``prior`` ``(T, Z, K)``."""
    log_prior = prior.clamp_min(1e-12).log()  # (T, Z, K)
    uniform, learned = [], []
    for i in range(0, len(x), batch):
        log_q = model._posterior_log_probs(x[i : i + batch])  # (n, T, Z, K)
        uniform.append(model._kl_to_prior(log_q).sum(-1))  # (n,)
        learned.append((log_q.exp() * (log_q - log_prior)).sum((-1, -2, -3)))  # (n,)
    return torch.cat(uniform), torch.cat(learned)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint")
    p.add_argument("--fit", type=int, default=5000, help="training images the average posterior is taken over")
    p.add_argument("--score", type=int, default=2000, help="test images the KL is scored on")
    p.add_argument("--data-dir", default=None)
    args = p.parse_args()
    torch.set_num_threads(1)
    model = load_checkpoint(args.checkpoint).eval()
    if not isinstance(model, VSSM):
        raise SystemExit(f"{args.checkpoint} is a {model.family} model, not a VSSM")
    ds = load_dataset(read_metadata(args.checkpoint)["dataset"], args.data_dir)
    if ds.train.ndim != 2:
        raise SystemExit("this script scores image datasets (a fixed T per sequence)")
    prior = average_posterior(model, ds.train[: args.fit])  # (T, Z, K)
    kl_uniform, kl_learned = kl_saving(model, ds.test[: args.score], prior)  # (N,), (N,)
    out = {
        "checkpoint": args.checkpoint,
        "fit_images": args.fit,
        "score_images": args.score,
        "kl_uniform_prior": round(float(kl_uniform.mean()), 3),
        "kl_learned_prior": round(float(kl_learned.mean()), 3),
        "saving_nats_per_image": round(float((kl_uniform - kl_learned).mean()), 3),
    }
    sys.stdout.write(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
