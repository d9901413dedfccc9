"""A within-block latent prior: step t of a block also reads the block's latents before it.

Glossary of axis letters (docs/design.md):
    B  batch      T  sequence length      n  steps in one call      c  block size
    Z  categorical latent variables per step      K  classes per latent variable
    R  width of the prior's state      M  hidden width of its MLP
    F  context features the partial encoder passes the MLP (``VSSMConfig.prior_context``)

The block prior of block sampling (model/vssm.py) draws a block's latents independently, each
from the partial encoder over the tokens before the block and EMPTYs (the uniform prior in the
first block).  With ``VSSMConfig.prior_width = R`` it also reads the block's earlier latents
through a diagonal linear recurrence, reset at every block start::

    r_t = a * r_(t-1) + E z_t                                   (B, R), r = 0 before a block
    log p(z_t | x_1:s, z_s+1:t-1) = log_softmax(base_t + MLP(r_(t-1)))

``base_t`` the block prior's logits, ``a = sigmoid(decay)`` per channel, ``E`` ``(R, Z*K)``.
With ``VSSMConfig.prior_context = F`` the MLP also reads ``g_t`` ``(F,)``, features the partial
encoder computes beside ``base_t`` (from the same pass over the tokens before the block and the
EMPTYs): its hidden layer is ``GELU(W1 LayerNorm(r_(t-1)) + b1 + G g_t)``, ``G`` ``(M, F)``.  The
sum ``base_t + MLP(r_(t-1))`` can only add what the rows above say to what the row so far says;
``G g_t`` lets the two interact (a stroke from above that the row so far has turned).  ``G g_t``
does not depend on the block's latents, so a block computes it for every step in one product before
its sequential draws.
So a block's latents are drawn one after another (a step is ``M (R + Z K)`` multiply-adds plus
the draw, ``M`` the MLP's hidden width) while the decoder still reads them in one parallel pass.
The ELBO keeps its form: the KL at step t is taken against this prior given the posterior's own
draws before t in the block.  Why it exists and what it did: docs/experiments/blocks.md,
seventeenth to nineteenth sessions.  The MLP's last layer starts at zero: a fresh prior is the
plain block prior.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import native
from .network import needs_own_forward, walked
from .sampling import finite_temperature, per_row, row_temperatures, sample_categorical
from .ssm import cached_pack

__all__ = ["LatentPrior"]


class LatentPrior(nn.Module):
    """The correction ``MLP(r_(t-1))`` of a block's latent logits from the block's earlier latents."""

    def __init__(self, n_latents: int, n_classes: int, width: int, hidden: int | None = None, context: int = 0) -> None:
        super().__init__()
        self.n_latents, self.n_classes = n_latents, n_classes
        zk = n_latents * n_classes
        self.embed = nn.Linear(zk, width, bias=False)  # E: the one-hot z_t -> (R,)
        self.decay = nn.Parameter(torch.linspace(-2.0, 4.0, width))  # a = sigmoid(decay): 0.12 .. 0.98
        M = hidden or width
        self.mlp = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, M), nn.GELU(), nn.Linear(M, zk))
        nn.init.zeros_(self.mlp[-1].weight)  # the start is the plain block prior
        nn.init.zeros_(self.mlp[-1].bias)
        # G: the partial encoder's context features into the MLP's hidden layer (None: no context)
        self.context = nn.Linear(context, M, bias=False) if context else None

    @property
    def width(self) -> int:
        return self.decay.shape[0]

    @property
    def hidden(self) -> int:
        return self.mlp[1].out_features

    def initial_state(self, batch: int) -> Tensor:
        """``r`` before a block's first step: zeros ``(B, R)``."""
        return self.decay.new_zeros(batch, self.width)

    def _pre(self, context: Tensor | None) -> Tensor | None:
        """``G g`` ``(..., M)`` of the partial encoder's ``context`` ``g`` ``(..., F)``: what it adds
        to the MLP's hidden layer (None without context, given or built)."""
        return None if context is None or self.context is None else self.context(context)

    def _mlp(self, h: Tensor, pre: Tensor | None) -> Tensor:
        """``MLP(h)`` ``(..., Z*K)`` of states ``h`` ``(..., R)``, with ``pre`` ``(..., M)`` (:meth:`_pre`)
        added to the hidden layer's input (None: nothing)."""
        if pre is None:
            return self.mlp(h)
        norm, first, act, last = self.mlp
        return last(act(first(norm(h)) + pre))

    def forward(self, z: Tensor, c: int, context: Tensor | None = None) -> Tensor:
        """The corrections ``(B, T, Z*K)`` of every step, given the one-hot latents ``z``
        ``(B, T, Z*K)`` in blocks of ``c`` steps from step 0 (``c >= T``: one block) and the
        partial encoder's ``context`` ``(B, T, F)`` (None: zeros)."""
        B, T, ZK = z.shape
        c = min(c, T)
        nb = -(-T // c)
        zp = F.pad(z, (0, 0, 0, nb * c - T)).view(B, nb, c, ZK)  # (B, nb, c, Z*K)
        e = self.embed(zp)  # (B, nb, c, R)
        a = torch.sigmoid(self.decay)  # (R,)
        r = e.new_zeros(B, nb, e.shape[-1])  # (B, nb, R)
        before = []
        for k in range(c):  # every block at once, one step of each at a time
            before.append(r)
            r = a * r + e[:, :, k]
        h = torch.stack(before, 2).view(B, nb * c, -1)[:, :T]  # (B, T, R): r_(t-1), 0 at a block start
        return self._mlp(h, self._pre(context))

    def log_probs(self, base: Tensor, z: Tensor, c: int, context: Tensor | None = None) -> Tensor:
        """``log p(z_t | ...)`` ``(B, T, Z, K)`` from the block prior's log-probabilities ``base``
        ``(B, T, Z, K)``, the one-hot latents ``z`` ``(B, T, Z*K)`` the prior reads and the partial
        encoder's ``context`` ``(B, T, F)`` (None: zeros)."""
        corr = self(z, c, context).unflatten(-1, (self.n_latents, self.n_classes))  # (B, T, Z, K)
        return (base + corr).log_softmax(-1)

    def draw(
        self,
        base: Tensor | None,
        r: Tensor,
        u: Tensor,
        temperature: float | Tensor,
        context: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Latents ``(B, n, Z)`` drawn one after another from uniforms ``u`` ``(B, n, Z)``, the
        block prior's logits ``base`` ``(B, n, Z, K)`` (None: the uniform prior), the partial
        encoder's ``context`` ``(B, n, F)`` (None: zeros) and the state ``r`` ``(B, R)`` before
        the first; returns them and ``r`` after the last.  The draws are inverse-CDF ones
        (model/sampling.py), so keyed ``u`` give the same latents at any batching.  On the CPU,
        without gradients, the whole loop is one compiled call (csrc/latent_prior.c)."""
        pre = self._pre(context)  # (B, n, M): every step's G g_t at once, or None
        compiled = native.prior_draws() if finite_temperature(temperature) and self._native_ok(u) else None
        if compiled is not None:
            flat = None if base is None else base.flatten(-2)  # (B, n, Z*K)
            temp = row_temperatures(temperature, u.shape[0])  # (B,)
            eps = self.mlp[0].eps
            return compiled(flat, r, u, temp, self._packed(), self.n_classes, self.hidden, eps, pre)
        a = torch.sigmoid(self.decay)  # (R,)
        E = self.embed.weight  # (R, Z*K)
        offsets = torch.arange(self.n_latents, device=u.device) * self.n_classes  # (Z,)
        temp = per_row(temperature, 1)
        out = []
        for t in range(u.shape[1]):
            logits = self._mlp(r, None if pre is None else pre[:, t]).unflatten(-1, (self.n_latents, self.n_classes))
            if base is not None:
                logits = logits + base[:, t]
            z = sample_categorical(logits, u[:, t], temp)  # (B, Z)
            r = a * r + E[:, z + offsets].sum(-1).t()  # (B, R)
            out.append(z)
        return torch.stack(out, 1) if out else u.new_zeros(u.shape, dtype=torch.long), r

    def _native_ok(self, u: Tensor) -> bool:
        """Whether :meth:`draw` can run compiled: on the CPU, in float32 or float64, with no gradient
        to keep and nothing whose own forward a compiled loop would skip (model/network.py, ``needs_own_forward``)."""
        if not u.is_cpu or u.dtype not in (torch.float32, torch.float64) or u.dtype != self.decay.dtype:
            return False
        if torch.is_grad_enabled() and self.decay.requires_grad:
            return False
        return not needs_own_forward(walked(self))

    def _packed(self) -> Tensor:
        """The weights for the compiled loop (model/native.py, ``pack_prior``), rebuilt when any of
        them changes, checked once per generation call (model/ssm.py, ``weights_fixed``) and, under a frozen
        model's guard, once while the guard stays the same (model/ssm.py, ``cached_pack``)."""
        norm, first, last = self.mlp[0], self.mlp[1], self.mlp[3]

        def build() -> Tensor:
            pairs = (norm.weight, norm.bias), (first.weight, first.bias), (last.weight, last.bias)
            return native.pack_prior(self.decay, self.embed.weight, *pairs)

        return cached_pack(self, lambda: list(self.parameters()), build)
