"""Shared fixtures: tiny float64 models of every family, for exact equivalence tests."""

from __future__ import annotations

import os

import pytest
import torch

from vssm import model

# Under pytest-xdist (`make test` runs one worker per core) each worker gets its share of the cores:
# torch's default of every core per process would oversubscribe them.
if workers := os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(workers)))

V = 5  # a small vocabulary exercises the categorical paths without cost

TINY = {
    "vssm": {
        "vocab_size": V,
        "width": 16,
        "state_size": 8,
        "enc_layers": 1,
        "dec_layers": 2,
        "par_layers": 2,
        "n_latents": 3,
        "n_classes": 4,
    },
    "ar-ssm": {"vocab_size": V, "width": 16, "state_size": 8, "layers": 2},
    "ar-transformer": {"vocab_size": V, "width": 16, "heads": 2, "layers": 2, "max_position": 64},
    "ar-gru": {"vocab_size": V, "width": 16, "layers": 2},
    "tvae": {
        "vocab_size": V,
        "max_position": 64,
        "width": 16,
        "heads": 2,
        "enc_layers": 1,
        "dec_layers": 2,
        "par_layers": 2,
        "n_latents": 3,
        "n_classes": 4,
    },
    "vrnn": {"vocab_size": V, "width": 16, "n_latents": 3, "n_classes": 4},
}
# families whose NLL is an importance-weighted bound (``nll(..., samples=, seed=)``, ``log_weights``)
LATENT = ("vssm", "tvae", "vrnn")


def decoder_input(m: model.VSSM, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A VSSM decoder's input from its definition: one-hot latents ``z`` ``(B, n, Z)``, and for a
    model with ``decoder_tokens`` the one-hot tokens ``x`` ``(B, n)`` it reads (EMPTY where it draws)."""
    zh = torch.nn.functional.one_hot(z, m.config.n_classes).to(m.dtype).flatten(-2)  # (B, n, Z*K)
    if not m.config.decoder_tokens:
        return zh
    return torch.cat([zh, torch.nn.functional.one_hot(x, m.vocab_size + 1).to(m.dtype)], -1)


def tiny_model(family: str, dtype: torch.dtype = torch.float64, seed: int = 0, **overrides) -> model.SequenceModel:
    torch.manual_seed(seed)
    m = model.build_model(family, {**TINY[family], **overrides}).to(dtype).eval()
    prior = getattr(m, "latent_prior", None)
    if prior is not None:  # a fresh latent prior is the plain block prior: make it act (model/latent_prior.py)
        with torch.no_grad():
            prior.mlp[-1].weight.normal_(0.0, 1.0)
            prior.mlp[-1].bias.normal_(0.0, 1.0)
            if prior.context is not None:  # and its context features count as much as its state
                prior.context.weight.normal_(0.0, 0.5)
    return m


@pytest.fixture(params=sorted(TINY))
def family(request) -> str:
    return request.param


# Variants that change a family's layers run through the same contract tests: id -> (family, overrides)
VARIANTS = {
    "vssm-smoothing": ("vssm", {"posterior": "smoothing"}),  # generation must not change at all
    "vssm-decoder-tokens": ("vssm", {"decoder_tokens": True}),  # f_dec also reads the absorbed tokens
    "vssm-latent-prior": ("vssm", {"prior_width": 6}),  # a block's latents also read its earlier latents
    "vssm-prior-context": ("vssm", {"prior_width": 6, "prior_context": 3}),  # and the partial encoder's features
    "vssm-patch": ("vssm", {"prior_width": 6, "prior_context": 3, "par_patch": 3}),  # f_par reads 3 tokens a step
    # and its tables by column t mod 5, a phase that the state carries (model/patch.py)
    "vssm-patch-period": ("vssm", {"prior_width": 6, "prior_context": 3, "par_patch": 3, "par_period": 5}),
    "tvae-smoothing": ("tvae", {"posterior": "smoothing"}),  # a bidirectional encoder: training and bounds only
}


@pytest.fixture(params=sorted(TINY) + sorted(VARIANTS))
def tiny(request) -> model.SequenceModel:
    family, overrides = VARIANTS.get(request.param, (request.param, {}))
    return tiny_model(family, **overrides)
