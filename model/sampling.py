"""Counter-based randomness keyed by (seed, absolute position, stream, index).

Glossary of axis letters:
    B  batch      T  positions in one call      W  draws per position (latent variables Z)
    V  categories of one draw (vocabulary, or K classes of a latent variable)

Every random number is a pure function of its key, so a token drawn at absolute position p with
seed s is the same whether it is generated alone or in a batch, in one call or in chunks, on
this replica or another.  The hash is a 32-bit integer mixer (xorshift-multiply rounds) written
in int64 tensor arithmetic with multipliers below 2**31, so no product overflows and the CPU
and CUDA results are bit-identical.  On the CPU the same hash runs compiled where a C compiler is
available (model/native.py, csrc/keyed.c), with the same bits.
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import native

__all__ = [
    "STREAM_ABSORB",
    "STREAM_LATENT",
    "STREAM_TOKEN",
    "as_seed_tensor",
    "finite_temperature",
    "keyed_uniform",
    "keyed_uniforms",
    "latents_from",
    "per_row",
    "positional_draw",
    "row_temperatures",
    "sample_categorical",
    "sequence_seeds",
]

STREAM_LATENT = 1  # latents z_t of the latent families (VSSM, TVAE, VRNN)
STREAM_TOKEN = 2  # tokens x_t of every family
STREAM_ABSORB = 3  # latents of the VSSM re-drawn when a block's generated tokens are absorbed

_M32 = 0xFFFFFFFF
_REAL = (torch.float32, torch.float64)


def _mix(x: Tensor) -> Tensor:
    """Bijective 32 -> 32 bit mixer; ``x`` holds values in [0, 2**32)."""
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _M32
    x = x ^ (x >> 15)
    x = (x * 0x346CA68B) & _M32
    return x ^ (x >> 16)


def as_seed_tensor(seed: int | list[int] | Tensor, batch: int, device: torch.device | None = None) -> Tensor:
    """Seeds as ``(B,)`` int64: one int for every row, or one per row."""
    if isinstance(seed, int):
        return torch.full((batch,), seed, dtype=torch.int64, device=device)
    t = torch.as_tensor(seed, dtype=torch.int64, device=device).reshape(-1)
    if t.numel() != batch:
        raise ValueError(f"got {t.numel()} seeds for a batch of {batch}")
    return t


def hash_rows(x: Tensor) -> Tensor:
    """A 32-bit hash of each row of tokens ``(B, T)`` -> ``(B,)``: a per-sequence seed that does not
    depend on which batch the sequence sits in."""
    T = x.shape[1]
    coeff = _mix(torch.arange(T, device=x.device, dtype=torch.int64) + 0x51ED)  # (T,) random odd-ish weights
    return _mix(((x.long() & _M32) * coeff).sum(-1) & _M32)  # (B,)


def sequence_seeds(x: Tensor, seed: int) -> Tensor:
    """``(B,)`` keys of the latent draws of a likelihood bound over ``x`` ``(B, T)``: a hash of each
    sequence's tokens, then ``seed`` (draw k of a bound is keyed ``seed + k``).  One key shared by a
    whole test set would make every sequence's noise the same, and it would not average out."""
    return hash_rows(x) * 1_000_003 + seed


def keyed_uniform(seed: Tensor, position: Tensor, stream: int, width: int, dtype: torch.dtype) -> Tensor:
    """Uniforms in (0, 1): ``seed`` ``(B,)``, ``position`` ``(B, T)`` absolute -> ``(B, T, W)``."""
    return keyed_uniforms(seed, position, (stream,), width, dtype)[:, 0]


def keyed_uniforms(seed: Tensor, position: Tensor, streams: tuple[int, ...], width: int, dtype: torch.dtype) -> Tensor:
    """:func:`keyed_uniform` of several streams at once, ``(B, S, T, W)``: the same numbers, in one
    pass of the hash's small integer kernels instead of one pass per stream (a block round draws
    from three streams, and at a few tokens the hash costs as much as a network layer).  On the CPU
    the compiled hash takes over: one call instead of about forty integer kernels."""
    compiled = native.keyed() if seed.device.type == "cpu" and dtype in (torch.float32, torch.float64) else None
    if compiled is not None and seed.ndim == 1 and position.ndim == 2 and position.shape[0] == seed.shape[0]:
        return compiled(seed, position, streams, width, dtype)
    lo = seed & _M32  # (B,)
    hi = (seed >> 32) & _M32  # (B,)
    s = torch.tensor(streams, dtype=torch.int64, device=seed.device)  # (S,)
    row = _mix(_mix((lo[:, None] + s) & _M32) ^ hi[:, None])  # (B, S)
    key = _mix(row[..., None] ^ (position[:, None] & _M32))  # (B, S, T)
    idx = torch.arange(width, device=seed.device, dtype=torch.int64)  # (W,)
    bits = _mix(_mix(key[..., None] ^ idx)) >> 8  # (B, S, T, W) 24 random bits
    return ((bits.to(torch.float64) + 0.5) / float(1 << 24)).to(dtype)


def sample_categorical(logits: Tensor, u: Tensor, temperature: float | Tensor) -> Tensor:
    """Inverse-CDF draws: ``logits`` ``(..., V)``, ``u`` ``(...)`` uniforms -> ``(...)`` int64.

    One uniform per draw (not V Gumbels) keeps large vocabularies cheap.  ``temperature`` is a
    float or a tensor broadcastable to ``logits[..., 0]``; 0 selects the argmax.  A float takes a
    short path: a block round draws a few small categoricals, so each kernel saved counts; on the CPU
    it is one compiled call (csrc/categorical.c), whose draw may differ from this arithmetic's only
    where ``u`` falls within rounding of a category boundary.
    """
    if not isinstance(temperature, Tensor):
        compiled = native.categorical() if logits.is_cpu else None
        # same dtype, one uniform per draw; a NaN temperature keeps PyTorch's answer (its NaNs draw 0)
        same = u.dtype == logits.dtype and u.shape == logits.shape[:-1] and logits.dtype in _REAL
        if compiled is not None and same and logits.shape[-1] > 0 and temperature == temperature:
            return compiled(logits, u, temperature)  # the same draw in one call (csrc/categorical.c)
        if temperature == 0.0:
            return logits.argmax(-1)
        scaled = logits if temperature == 1.0 else logits / max(temperature, 1e-6)
        return _inverse_cdf(torch.softmax(scaled, dim=-1), u)
    temp = temperature.to(dtype=logits.dtype, device=logits.device)
    drawn = _inverse_cdf(torch.softmax(logits / temp.clamp_min(1e-6)[..., None], dim=-1), u)  # (...)
    return torch.where(temp == 0, logits.argmax(-1), drawn)


def _inverse_cdf(probs: Tensor, u: Tensor) -> Tensor:
    """The first category whose cumulative probability reaches ``u`` times the total, ``(...)``.

    Counting the categories below the target is ``searchsorted`` on a non-decreasing CDF, in two
    kernels and without its contiguous copies."""
    cdf = probs.cumsum(-1)  # (..., V)
    drawn = (cdf < (u * cdf[..., -1]).unsqueeze(-1)).sum(-1)  # (...)
    return drawn.clamp_max(probs.shape[-1] - 1)


def finite_temperature(temperature: float | Tensor) -> bool:
    """Whether no temperature is NaN.  The compiled sampling loops (model/native.py) read a NaN as
    almost 0 where PyTorch's draw gives category 0, so a NaN keeps the PyTorch path, as
    :func:`sample_categorical` does for its compiled draw."""
    if isinstance(temperature, Tensor):
        return not bool(temperature.isnan().any())
    return temperature == temperature


_ROW_TEMPERATURES: dict[float, Tensor] = {}  # a float temperature as a (1,) tensor, made once (read only)


def row_temperatures(temperature: float | Tensor, batch: int) -> Tensor:
    """A float or per-row temperature as the compiled loops read it: ``(B,)`` float64 on the CPU (a float's
    tensor is made once and shared: the compiled calls only read it)."""
    if isinstance(temperature, Tensor):
        return temperature.to(torch.float64).reshape(-1).expand(batch)
    one = _ROW_TEMPERATURES.get(temperature)
    if one is None:
        one = torch.tensor([temperature], dtype=torch.float64)
        if len(_ROW_TEMPERATURES) < 256 and temperature == temperature:  # bounded; NaN never matches a key
            _ROW_TEMPERATURES[temperature] = one
    return one if batch == 1 else one.expand(batch)


def per_row(temperature: float | Tensor, extra_dims: int) -> float | Tensor:
    """A per-row temperature ``(B,)`` reshaped to broadcast over ``extra_dims`` more axes."""
    if isinstance(temperature, Tensor) and temperature.ndim == 1:
        return temperature.reshape(-1, *([1] * extra_dims))
    return temperature


def positional_draw(log_p: Tensor, row_seed: Tensor, stream: int) -> Tensor:
    """Latents ``(B, T, W)`` drawn from ``log_p`` ``(B, T, W, K)`` at positions ``0..T-1``, keyed on
    (``row_seed`` ``(B,)``, position): the draws of a likelihood bound or a training pass."""
    Bsz, T, W = log_p.shape[:3]
    pos = torch.arange(T, device=log_p.device).expand(Bsz, T)
    return sample_categorical(log_p, keyed_uniform(row_seed, pos, stream, W, log_p.dtype), 1.0)


def latents_from(
    logits: Tensor | None, u: Tensor, n_classes: int, temperature: float | Tensor, observed: Tensor
) -> Tensor:
    """Latents ``(B, n, W)`` from uniforms ``u`` ``(B, n, W)``: drawn from ``logits`` where ``observed``
    ``(B,)``, else from the uniform prior as ``floor(u K)`` (exact for a uniform categorical, with no
    softmax work on the unprompted path; temperature leaves the uniform prior unchanged)."""
    prior = (u * n_classes).long().clamp_max(n_classes - 1)  # (B, n, W)
    if logits is None:
        return prior
    drawn = sample_categorical(logits, u, per_row(temperature, 2))  # (B, n, W)
    return torch.where(observed[:, None, None], drawn, prior)
