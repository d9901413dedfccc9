"""A partial encoder that reads P tokens a step (a patch: an image row), for cheap block rounds.

Glossary of axis letters (docs/design.md):
    B  batch      T  tokens in one call      P  tokens a patch      k  patch slots      S  slots read
    Q  the period of the tables, in positions (Q = P unless set: below)
    H  width      N  SSM modes per channel      L  layers      V  vocabulary (EMPTY = V)
    O  outputs a position (the latents' logits, then the latent prior's context features)
    c  block size      nb  blocks

The token-level partial encoder (model/network.py, SSMNet) makes a round of block 28 two passes of
56 steps through 4 blocks; this one reads a whole patch as one input, so a round of an aligned
block of P is one step (docs/experiments/blocks.md, twenty-second session).  Patches are aligned
to absolute positions: patch p holds positions pP .. pP+P-1.  The network is an SSMNet over patch
steps, whose inputs are [START, patch 0, patch 1, ...]:

    u_0 = b + sum_j W[j, EMPTY]                 START: a patch of EMPTYs        (H,)
    u_p+1 = b + sum_j W[j, x_pP+j]               patch p, an EMPTY where no token is known yet
    y_p = blocks(u_0 .. u_p)                     the residual stream after reading patches < p
    out_t = Head_j(LayerNorm(y_p)) + A[j, x_t],  t = pP + j      (O,): position j's rows of the head (P O, H)

so the output at t reads the patches before t's own and the token at t: it is causal, as f_par
must be.  ``A`` ``(Q, V+1, O)`` is what lets an absorbed latent encode its own token (a block's
latents read EMPTY there, a per-position bias): without it the latents re-drawn when tokens are
absorbed could not see them.  A block that starts inside a patch reads the tokens before it in
that patch only through the decoder's absorbed state (the latent prior starts anew at every block).  Feeding
EMPTYs fills a patch with EMPTYs, exactly as the token-level network reads them.

With a period Q > P (``period``: an image row's width, where a patch is not a row) the tables are
indexed by a position's column col(t) = t mod Q instead of j, so that a position reads its own
column's weights wherever the patch holding it starts (docs/experiments/blocks.md, twenty-sixth
session).  With ``D[col, x] = W[col, x] - W[col, EMPTY]``:

    u_0 = b + sum_(col < P) W[col, EMPTY]        START
    u_p+1 = u_0 + sum_j D[col(pP+j), x_pP+j]     patch p (an EMPTY adds nothing)
    out_t = Head_col(t)(LayerNorm(y_p)) + A[col(t), x_t]

which is the form above where Q = P (then col(pP+j) = j), as the code computes it.

State (one complex tensor, so that GenState batches, selects and stores it as the SSMNet's):
``(B, L + 1, H, N)``; slots 0..L-1 are the blocks' SSM states after the patches read so far; slot L
holds the pending patch: ``[:, L, :, 0]`` is ``acc + i y``, ``acc`` ``(B, H)`` the sum of
``D[col, x]`` over the tokens of the current patch so far and ``y`` ``(B, H)`` the
residual stream its positions read; ``[:, L, 0, 1]`` the count of its tokens (0 .. P-1); with Q > P,
``[:, L, 1, 1]`` the patch's index modulo Q / gcd(P, Q) (its columns' phase; 0 where Q = P).  N >= 2.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .network import SSMNet, SSMNetConfig

__all__ = ["PatchNet"]


class PatchNet(nn.Module):
    """Causal network over tokens that advances once per patch of ``patch`` tokens (see above)."""

    def __init__(self, cfg: SSMNetConfig, patch: int, period: int = 0) -> None:
        super().__init__()
        if not cfg.tokens:
            raise ValueError("a patch network reads tokens, not vectors")
        if patch < 1 or cfg.state_size < 2:
            raise ValueError("a patch holds >= 1 token, and its pending part needs a state of >= 2 modes")
        Q = period or patch
        if period and period < patch:
            raise ValueError(f"the tables' period must be >= the patch ({patch}), got {period}")
        if period > patch and cfg.width < 2:
            raise ValueError("a period keeps its phase in the state's second channel: width >= 2")
        self.cfg, self.patch, self.period = cfg, patch, Q
        self.cycle = Q // math.gcd(patch, Q)  # patches after which the columns' phase repeats (1 where Q = P)
        V1, n_out = cfg.n_in, cfg.n_out  # V + 1 token ids (EMPTY included), outputs a position (O)
        inner = SSMNetConfig(
            n_in=Q * V1, n_out=Q * n_out, tokens=False, width=cfg.width, state_size=cfg.state_size,
            layers=cfg.layers, dropout=cfg.dropout,
        )  # fmt: skip
        self.net = SSMNet(inner)  # inp: W (H, Q (V+1)) and b; head: (Q O, H), column col's rows col O .. col O + O
        self.token_out = nn.Parameter(0.1 * torch.randn(Q, V1, n_out))  # A: what the token at t adds to its output

    # ----- the pieces ---------------------------------------------------------------------------------
    def _inputs(self) -> Tensor:
        """The input layer's weight as a table ``W`` ``(Q, V+1, H)``: column col's weights for token x."""
        return self.net.inp.weight.t().unflatten(0, (self.period, self.cfg.n_in))

    def table(self) -> tuple[Tensor, Tensor]:
        """``D`` ``(Q, V+1, H)``, ``W[col, x] - W[col, EMPTY]``, and the START input ``u_0`` ``(H,)``.

        Every path forms a patch's input as ``u_0 + acc``, ``acc`` the sum of ``D[col, x]`` over the patch's
        tokens so far taken one token at a time in order from 0 (an EMPTY adds nothing), the compiled rounds
        (csrc/patch_rounds.c) as well: so a call that stops inside a patch and one that goes on past it
        leave the same bits, whatever cuts the tokens into calls (docs/api.md: chunks do not change tokens)."""
        W = self._inputs()
        empty = W[:, -1]  # (Q, H)
        return W - empty[:, None], self.net.inp.bias + empty[: self.patch].sum(0)

    def _blocks(
        self, h: Tensor, ssm: Tensor | None, lengths: Tensor | int | None, return_state: bool
    ) -> tuple[Tensor, Tensor | None]:
        """The residual blocks over slot inputs ``h`` ``(B, k, H)`` -> residual stream ``(B, k, H)``,
        state ``(B, L, H, N)`` after ``lengths`` slots (>= 1).  Where the network's pass runs as one native
        call (SSMNet._native_ok), it does: its operations on a slot do not depend on how many slots the call
        has, so a prompt appended in pieces leaves the state one append leaves (the blocks' linear layers in
        PyTorch follow the row count in their sums)."""
        net, k = self.net, h.shape[1]
        if (lengths is None or isinstance(lengths, int)) and net._native_ok(h, k, ssm):
            streams: list[Tensor] = []
            _, nxt = net._native(h, ssm, k if lengths is None else lengths, return_state, residual=streams)
            return streams[0], nxt
        states = []
        for i, block in enumerate(self.net.blocks):
            h, s = block(h, None if ssm is None else ssm[:, i], lengths, return_state)
            states.append(s)
        return h, torch.stack(states, 1) if return_state else None

    def _head_slots(self, Y: Tensor, slot: Tensor, col: Tensor) -> Tensor:
        """Outputs ``(B, T, O)`` at slots ``slot`` and columns ``col`` ``(B, T)`` from the residuals ``Y``
        ``(B, S, H)`` each slot's positions read: every slot's whole head, then a gather."""
        n_out = self.cfg.n_out
        full = self.net.head(self.net.norm(Y)).unflatten(-1, (self.period, n_out)).flatten(1, 2)  # (B, S Q, O)
        return full.gather(1, (slot * self.period + col)[..., None].expand(-1, -1, n_out))

    def _head_grid(self, y: Tensor) -> Tensor:
        """Outputs ``(B, T, O)`` of residuals ``y`` ``(B, T, H)`` at positions 0 .. T-1: each position
        through its own column's rows of the head only."""
        T = y.shape[1]
        Q, n_out = self.period, self.cfg.n_out
        n = self.net.norm(nn.functional.pad(y, (0, 0, 0, -T % Q))).unflatten(1, (-1, Q))  # (B, T / Q, Q, H)
        head = self.net.head
        w, b = head.weight.unflatten(0, (Q, n_out)), head.bias.unflatten(0, (Q, n_out))  # (Q, O, H), (Q, O)
        return (torch.einsum("bkch,coh->bkco", n, w) + b).flatten(1, 2)[:, :T]

    @staticmethod
    def _pack(ssm: Tensor, acc: Tensor, y: Tensor, count: Tensor, phase: Tensor | None = None) -> Tensor:
        B, _, H, N = ssm.shape
        slot = ssm.new_zeros(B, 1, H, N)
        slot[:, 0, :, 0] = torch.complex(acc, y)
        slot[:, 0, 0, 1] = count.to(acc.dtype)
        if phase is not None:
            slot[:, 0, 1, 1] = phase.to(acc.dtype)
        return torch.cat([ssm, slot], 1)  # (B, L + 1, H, N)

    def _unpack(self, state: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """``(ssm (B, L, H, N), acc (B, H), y (B, H), count (B,) long, phase (B,) long)`` of a state."""
        pend = state[:, -1, :, 0]  # (B, H)
        if self.cycle > 1:
            phase = state[:, -1, 1, 1].real.round().long()  # (B,)
        else:
            phase = torch.zeros(state.shape[0], dtype=torch.long, device=state.device)
        return state[:, :-1], pend.real, pend.imag, PatchNet.pending(state), phase

    @staticmethod
    def pending(state: Tensor) -> Tensor:
        """How many tokens of its current patch a state holds ``(B,)`` long."""
        return state[:, -1, 0, 1].real.round().long()

    def _start(self, batch: int) -> tuple[Tensor, Tensor]:
        """The SSM states ``(B, L, H, N)`` and residual ``(B, H)`` after START."""
        _, u0 = self.table()
        y, ssm = self._blocks(u0.expand(batch, 1, -1), None, None, True)  # (B, 1, H)
        return ssm, y[:, 0]  # type: ignore[return-value]

    def at_boundary(self, ssm: Tensor, y: Tensor) -> Tensor:
        """The state at a patch boundary from its SSM states ``(B, L, H, N)`` and residual ``(B, H)``, at
        position 0 (a period's phase 0)."""
        return self._pack(ssm, torch.zeros_like(y), y, torch.zeros(y.shape[0], dtype=torch.long, device=y.device))

    # ----- the SSMNet interface -----------------------------------------------------------------------
    def initial_state(self, batch: int) -> Tensor:
        """The state after nothing: START read, no pending token ``(B, L + 1, H, N)``."""
        return self.at_boundary(*self._start(batch))

    def state_of_h(self, h: Tensor) -> Tensor:
        """The state ``(B, L + 1, H, N)`` of one whose SSM slots are held as ``h`` (model/state.py's format 1);
        the pending patch's slot is no SSM state and stays as it is."""
        return torch.cat([self.net.state_of_h(h[:, :-1]), h[:, -1:]], 1)

    def _slot_sums(self, contrib: Tensor, rows: Tensor, q: Tensor, k: int, acc: Tensor | None) -> Tensor:
        """Each slot's sum ``(B, k + 1, H)`` of the tokens' rows ``contrib`` ``(B, T, H)`` at offsets ``q``
        ``(B, T)`` from the pending patch's start, one position of the patch at a time in order, slot 0's from
        the pending sum ``acc`` ``(B, H)``: what a call that had not stopped inside the patch sums (:meth:`table`).
        Positions a call does not hold add zeros, which change no sum.  (An accumulating ``index_put`` adds in
        a serial loop only on one thread or a small call: past that its threads' atomic adds take any order.)"""
        B, _, H = contrib.shape
        P = self.patch
        grid = contrib.new_zeros(B, (k + 1) * P, H).index_put((rows, q), contrib)  # (B, (k+1) P, H): one per place
        grid = grid.view(B, k + 1, P, H)
        sums = contrib.new_zeros(B, k + 1, H)
        if acc is not None:
            sums[:, 0] = acc
        for j in range(P):
            sums = sums + grid[:, :, j]
        return sums

    def forward(
        self, x: Tensor, state: Tensor | None = None, lengths: Tensor | int | None = None, return_state: bool = True
    ) -> tuple[Tensor, Tensor | None]:
        """Tokens ``x`` ``(B, T)`` from ``state`` (None: the initial one) -> outputs ``(B, T, O)`` and the
        state after each row's first ``lengths`` tokens (None: all ``T``)."""
        B, T = x.shape
        P = self.patch
        D, u0 = self.table()
        if state is None:
            ssm, acc, y0 = None, None, None
            count = phase = torch.zeros(B, dtype=torch.long, device=x.device)
        else:
            ssm, acc, y0, count, phase = self._unpack(state)
        q = count[:, None] + torch.arange(T, device=x.device)  # (B, T) offsets from the pending patch's start
        slot, col = q // P, (phase[:, None] * P + q) % self.period  # (B, T) each; col: q % P where Q = P
        k = int(slot.max()) + 1 if T else 1  # slots the span touches
        rows = torch.arange(B, device=x.device)[:, None]
        contrib = D[col, x]  # (B, T, H)
        sums = self._slot_sums(contrib, rows, q, k, acc)  # (B, k + 1, H)
        h = u0 + sums[:, :k]  # (B, k, H): the slots' inputs (the last maybe incomplete)
        m = torch.full((B,), T, device=x.device) if lengths is None else torch.as_tensor(lengths, device=x.device)
        m = m.expand(B)
        done = (count + m) // P  # (B,) slots completed within the first m tokens
        lead = 0 if ssm is not None else 1  # from nothing, START runs first
        if ssm is None:
            h = torch.cat([u0.expand(B, 1, -1), h], 1)  # (B, 1 + k, H)
        at = done + lead  # (B,) slot steps the state is wanted after
        keep = return_state and bool((at > 0).any())
        uniform = bool((at == at[0]).all())
        n_at: Tensor | int | None = int(at[0]) if uniform else at.clamp_min(1)
        if uniform and n_at == h.shape[1]:
            n_at = None
        Y, ssm_next = self._blocks(h, ssm, n_at if keep else None, keep)  # (B, lead + k, H)
        if ssm is not None:
            Y = torch.cat([y0[:, None], Y], 1)  # (B, 1 + k, H): what each slot's positions read
        out = self._head_slots(Y, slot, col) + self.token_out[col, x]  # (B, T, O)
        if not return_state:
            return out, None
        # the state after m tokens: the SSM after `done` slots, the pending slot's sum and residual
        pend = sums  # (B, k + 1, H): the slots' sums of the tokens before m (all of them without lengths)
        if lengths is not None:
            before = (torch.arange(T, device=x.device) < m[:, None])[..., None]  # (B, T, 1)
            pend = self._slot_sums(contrib * before, rows, q, k, acc)
        acc_next = pend.gather(1, done[:, None, None].expand(-1, 1, pend.shape[-1]))[:, 0]  # (B, H)
        y_next = Y.gather(1, done[:, None, None].expand(-1, 1, Y.shape[-1]))[:, 0]  # (B, H)
        if ssm_next is None:  # nothing completed anywhere
            ssm_next = ssm
        elif (at == 0).any():
            ssm_next = torch.where((at == 0)[:, None, None, None], ssm, ssm_next)  # type: ignore[arg-type]
        phase_next = (phase + done) % self.cycle if self.cycle > 1 else None  # (B,)
        return out, self._pack(ssm_next, acc_next, y_next, (count + m) % P, phase_next)  # type: ignore[arg-type]

    def forward_blocks(self, x_a: Tensor, x_m: Tensor, block: int) -> tuple[Tensor, Tensor]:
        """As :meth:`SSMNet.forward_blocks`: the outputs over ``x_a`` ``(B, T)`` and, at step t of the
        block starting at s, over ``x_a[:, :s] ++ x_m[:, s:t+1]``.  Every block's mixed sequence is its
        own row of one pass over patches (T / P steps, so B T / c rows of them stay cheap); its slot
        inputs are those of ``x_a`` before the block's patch, of ``x_m`` after it, and in it the sum of
        ``x_a``'s tokens before s and ``x_m``'s from s, from within-patch prefix sums."""
        B, T = x_a.shape
        P, Q = self.patch, self.period
        D, u0 = self.table()
        t = torch.arange(T, device=x_a.device)
        pad = (0, 0, 0, -T % P)
        ca = nn.functional.pad(D[t % Q, x_a], pad).unflatten(1, (-1, P)).cumsum(2)  # (B, k, P, H) prefix sums
        cm = nn.functional.pad(D[t % Q, x_m], pad).unflatten(1, (-1, P)).cumsum(2)
        n_slots = ca.shape[1]
        sa, sm = ca[:, :, -1], cm[:, :, -1]  # (B, k, H) whole slots
        starts = torch.arange(0, T, block, device=x_a.device)  # (nb,)
        nb = starts.shape[0]
        kb, o = starts // P, starts % P  # (nb,) the patch each block starts in, its offset there
        zero = ca.new_zeros(B, n_slots, 1, ca.shape[-1])
        pa, pm = torch.cat([zero, ca], 2), torch.cat([zero, cm], 2)  # (B, k, P + 1, H): sums of the first i
        edge = pa[:, kb, o] + sm[:, kb] - pm[:, kb, o]  # (B, nb, H): the start's patch, mixed
        slots = torch.arange(n_slots, device=x_a.device)
        before, at = (slots < kb[:, None])[..., None], (slots == kb[:, None])[..., None]  # (nb, k, 1)
        mixed = torch.where(before, sa[:, None], torch.where(at, edge[:, :, None], sm[:, None]))  # (B, nb, k, H)
        h = u0 + torch.cat([sa[:, None], mixed], 1).flatten(0, 1)  # (B (1+nb), k, H)
        h = torch.cat([u0.expand(h.shape[0], 1, -1), h], 1)  # START first
        Y = self._blocks(h, None, None, False)[0].unflatten(0, (B, 1 + nb))  # (B, 1+nb, 1+k, H)
        A = self.token_out
        out_a = self._head_slots(Y[:, 0], (t // P).expand(B, T), (t % Q).expand(B, T)) + A[t % Q, x_a]  # (B, T, O)
        return out_a, self._head_grid(Y[:, 1 + t // block, t // P]) + A[t % Q, x_m]  # (B, T, O)
