"""A causal stack of S4D blocks: input layer, residual blocks, output head.

Glossary of axis letters:
    B  batch      T  time      H  width      N  SSM modes per channel      L  layers
    I  input size (tokens in the embedding, or features of a vector input)
    O  output size

The state of the whole network is one complex tensor ``(B, L, H, N)``: fixed size, whatever the
position, and stacked so that batching, splitting and serialising states are index operations.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import check_config
from .ssm import S4D, S4DConfig

__all__ = ["BLOCKS", "SSMNet", "SSMNetConfig"]


BLOCKS = ("glu", "gated")  # residual block forms (SSMBlock)


@dataclass
class SSMNetConfig:
    n_in: int  # I: token count (embedding input) or feature size (linear input)
    n_out: int  # O: output features (logits)
    tokens: bool = True  # True: inputs are token ids (embedding); False: float vectors (linear)
    width: int = 64  # H: residual stream width
    state_size: int = 32  # N: complex SSM modes per channel
    layers: int = 2  # L: residual S4D blocks
    dropout: float = 0.0  # dropout inside each block (training only)
    block: str = "glu"  # "glu": GLU over the SSM output; "gated": SSM output times a gate of the block input
    estimates: int = 0  # intermediate output estimates, evenly spaced between blocks, fed back (SSMNet)

    def __post_init__(self) -> None:
        check_config(self, (), {"block": BLOCKS})
        if not isinstance(self.estimates, int) or not 0 <= self.estimates < self.layers:
            raise ValueError(f"estimates must be an integer in [0, layers), got {self.estimates!r}")

    def estimate_after(self) -> list[int]:
        """Indices of the blocks after which an estimate is made, evenly spaced: (6 blocks, 1) -> [2]."""
        return [round(self.layers * (e + 1) / (self.estimates + 1)) - 1 for e in range(self.estimates)]


class SSMBlock(nn.Module):
    """Pre-norm residual block around one S4D layer, with n = LayerNorm(x):

    - ``glu``:   x + Dropout(GLU(Linear(GELU(S4D(n)))))
    - ``gated``: x + Dropout(Linear(GELU(S4D(n)) * SiLU(Linear(n))))

    The gated form (as in GSS, H3 and Mamba) multiplies what the SSM read from the past by a gate
    computed from the current input alone: a direct product of "now" and "context" features,
    which a VSSM decoder needs, since what latent z_t means depends on the pixels before t.  Both
    forms have 2 H^2 weights besides the SSM's, and the same state.
    """

    def __init__(self, width: int, state_size: int, dropout: float, block: str = "glu") -> None:
        super().__init__()
        gated = block == "gated"
        self.norm = nn.LayerNorm(width)
        self.ssm = S4D(S4DConfig(width=width, state_size=state_size))
        self.gate = nn.Linear(width, width) if gated else None
        self.out = nn.Linear(width, width if gated else 2 * width)
        self.drop = nn.Dropout(dropout)

    def _mix(self, y: Tensor, n: Tensor) -> Tensor:
        """SSM output ``y`` and block input ``n`` (both ``(..., H)``) -> residual update ``(..., H)``."""
        if self.gate is not None:
            return self.drop(self.out(F.gelu(y) * F.silu(self.gate(n))))
        return self.drop(F.glu(self.out(F.gelu(y)), dim=-1))

    def forward(
        self, x: Tensor, state: Tensor | None, lengths: Tensor | None, return_state: bool
    ) -> tuple[Tensor, Tensor | None]:
        n = self.norm(x)  # (B, T, H)
        y, nxt = self.ssm(n.transpose(1, 2), state, lengths=lengths, return_state=return_state)  # (B, H, T)
        # contiguous: GELU's backward over the strided transpose of the FFT output is 2-4x slower
        return x + self._mix(y.transpose(1, 2).contiguous(), n), nxt  # (B, T, H)

    def forward_blocks(self, x_a: Tensor, x_m: Tensor, block: int) -> tuple[Tensor, Tensor]:
        """Both streams of :meth:`S4D.forward_blocks` through the block, ``(B, T, H)`` each."""
        n_a, n_m = self.norm(x_a), self.norm(x_m)  # (B, T, H)
        y_a, y_m = self.ssm.forward_blocks(n_a.transpose(1, 2), n_m.transpose(1, 2), block)  # (B, H, T)
        return (
            x_a + self._mix(y_a.transpose(1, 2).contiguous(), n_a),
            x_m + self._mix(y_m.transpose(1, 2).contiguous(), n_m),
        )

    def step(self, x_t: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        n = self.norm(x_t)  # (B, H)
        y, nxt = self.ssm.step(n, state)  # (B, H)
        return x_t + self._mix(y, n), nxt


class SSMNet(nn.Module):
    """Causal sequence network: output at t depends on inputs 1..t only.

    With ``estimates = E > 0`` the stack also predicts its output after E inner blocks (a head of
    its own each) and adds a projection of that estimate's softmax back into the residual stream,
    so the blocks above read an explicit guess of the output at every step, their SSMs one of
    every earlier step too.  Trained with a loss on each estimate (:meth:`forward_estimates`), this
    is deep supervision with feedback: the decoder of a VSSM must rebuild the tokens before t from
    latents alone, and each estimate is one round of that reconstruction.  It adds no state.
    """

    def __init__(self, cfg: SSMNetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.inp: nn.Module = nn.Embedding(cfg.n_in, cfg.width) if cfg.tokens else nn.Linear(cfg.n_in, cfg.width)
        self.blocks = nn.ModuleList(
            SSMBlock(cfg.width, cfg.state_size, cfg.dropout, cfg.block) for _ in range(cfg.layers)
        )
        self.norm = nn.LayerNorm(cfg.width)
        self.head = nn.Linear(cfg.width, cfg.n_out)
        self.est_at = {block: e for e, block in enumerate(cfg.estimate_after())}  # block index -> estimate
        self.est_heads = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(cfg.width), nn.Linear(cfg.width, cfg.n_out)) for _ in self.est_at
        )
        self.est_in = nn.ModuleList(nn.Linear(cfg.n_out, cfg.width) for _ in self.est_at)

    def _estimate(self, h: Tensor, i: int, estimates: list[Tensor] | None) -> Tensor:
        """After block ``i``: if an estimate is made there, record its logits and feed it back into ``h``."""
        e = self.est_at.get(i)
        if e is None:
            return h
        logits = self.est_heads[e](h)  # (..., O)
        if estimates is not None:
            estimates.append(logits)
        return h + self.est_in[e](logits.softmax(-1))  # (..., H)

    def initial_state(self, batch: int) -> Tensor:
        return torch.stack([b.ssm.initial_state(batch) for b in self.blocks], dim=1)  # (B, L, H, N)

    def forward(
        self,
        x: Tensor,
        state: Tensor | None = None,
        lengths: Tensor | None = None,
        return_state: bool = True,
    ) -> tuple[Tensor, Tensor | None]:
        """``x``: ``(B, T)`` tokens or ``(B, T, I)`` vectors -> logits ``(B, T, O)``, state ``(B, L, H, N)``.

        ``state`` None means the zero state; ``lengths`` gives per-row final-state positions
        (see :meth:`S4D.forward`); ``return_state=False`` skips the state (training).
        """
        if state is not None and not bool(state.any()):
            state = None  # a fresh state: skip every layer's initial-state readout, the costliest part of a decode
        return self._run(x, state, lengths, return_state, None)

    def forward_estimates(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        """Training: logits ``(B, T, O)`` from the zero state, and each inner estimate's logits ``(B, T, O)``."""
        estimates: list[Tensor] = []
        return self._run(x, None, None, False, estimates)[0], estimates

    def inner_estimates(self, x: Tensor) -> list[Tensor]:
        """Training: each inner estimate's logits ``(B, T, O)`` from the zero state; the blocks
        above the last estimate are not run."""
        h = self.inp(x)  # (B, T, H)
        estimates: list[Tensor] = []
        for i, block in enumerate(self.blocks[: max(self.est_at, default=-1) + 1]):
            h = self._estimate(block(h, None, None, False)[0], i, estimates)  # (B, T, H)
        return estimates

    def forward_blocks(self, x_a: Tensor, x_m: Tensor, block: int) -> tuple[Tensor, Tensor]:
        """Every block of ``block`` steps continued from an absorbed prefix, in one pass from the zero state.

        ``x_a`` and ``x_m`` are inputs as in :meth:`forward`, ``(B, T)`` or ``(B, T, I)``.  Returns the
        logits ``(B, T, O)`` over ``x_a`` and the mixed logits ``(B, T, O)``: at step t of the block
        starting at s, the network's output at t over ``x_a[:, :s] ++ x_m[:, s:t+1]`` (what block
        sampling computes block by block from states, ``docs/design.md``; tested against that).
        The absorbed stream's head costs little next to the blocks, so both are returned.
        """
        if self.est_at:
            raise ValueError("block passes do not support inner estimates")
        h_a, h_m = self.inp(x_a), self.inp(x_m)  # (B, T, H)
        for block_layer in self.blocks:
            h_a, h_m = block_layer.forward_blocks(h_a, h_m, block)
        return self.head(self.norm(h_a)), self.head(self.norm(h_m))

    def _run(
        self,
        x: Tensor,
        state: Tensor | None,
        lengths: Tensor | None,
        return_state: bool,
        estimates: list[Tensor] | None,
    ) -> tuple[Tensor, Tensor | None]:
        h = self.inp(x)  # (B, T, H)
        states = []
        for i, block in enumerate(self.blocks):
            h, s = block(h, None if state is None else state[:, i], lengths, return_state)
            h = self._estimate(h, i, estimates)  # (B, T, H)
            states.append(s)
        nxt = torch.stack(states, dim=1) if return_state else None  # (B, L, H, N)
        return self.head(self.norm(h)), nxt

    def step(self, x_t: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        """``x_t``: ``(B,)`` tokens or ``(B, I)`` vectors -> logits ``(B, O)``, next state."""
        h = self.inp(x_t)  # (B, H)
        states = []
        for i, block in enumerate(self.blocks):
            h, s = block.step(h, state[:, i])
            h = self._estimate(h, i, None)  # (B, H)
            states.append(s)
        return self.head(self.norm(h)), torch.stack(states, dim=1)
