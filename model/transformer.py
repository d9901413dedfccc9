"""Autoregressive Transformer baseline: causal self-attention with a key/value cache.

Glossary of axis letters:
    B  batch      T  new inputs in one call      S  cache slots (inputs consumed so far + T)
    L  layers     h  attention heads             d  head width      H  model width = h * d
    V  vocabulary size

Its generation state is the cache ``k, v`` ``(B, L, h, S, d)`` plus ``length`` ``(B,)``, the
inputs each row has consumed (BOS included).  Unlike the SSMs, the state grows with position
and each new token attends to all of it: O(T^2) generation, the seeds' Table 1 row.  Rows may
sit at different lengths: slots past a row's length are masked out, and new keys are written
at each row's own offset.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .autoregressive import ARModel, NetState
from .base import check_config
from .state import GenState

__all__ = ["ARTransformer", "ARTransformerConfig"]


@dataclass
class ARTransformerConfig:
    vocab_size: int = 2  # V: tokens 0..V-1; the embedding also holds BOS = V
    max_position: int = 1024  # context length: learned positions 0..max_position (BOS included)
    width: int = 64  # H: model width
    heads: int = 4  # h: attention heads (width must divide evenly)
    layers: int = 2  # L: transformer blocks
    mlp_ratio: int = 4  # hidden width of each MLP, as a multiple of H
    dropout: float = 0.0  # dropout on attention output and MLP, training only

    def __post_init__(self) -> None:
        check_config(self, ("vocab_size", "max_position", "width", "heads", "layers", "mlp_ratio"))
        if self.width % self.heads:
            raise ValueError(f"width {self.width} is not divisible by heads {self.heads}")


class Block(nn.Module):
    def __init__(self, cfg: ARTransformerConfig) -> None:
        super().__init__()
        self.heads = cfg.heads
        self.ln1 = nn.LayerNorm(cfg.width)
        self.qkv = nn.Linear(cfg.width, 3 * cfg.width)
        self.proj = nn.Linear(cfg.width, cfg.width)
        self.ln2 = nn.LayerNorm(cfg.width)
        self.mlp = nn.Sequential(
            nn.Linear(cfg.width, cfg.mlp_ratio * cfg.width),
            nn.GELU(),
            nn.Linear(cfg.mlp_ratio * cfg.width, cfg.width),
        )
        self.drop = nn.Dropout(cfg.dropout)

    def forward(
        self, x: Tensor, cache: tuple[Tensor, Tensor] | None, length: Tensor | None, inplace: bool = False
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """``x`` ``(B, T, H)``; ``cache`` ``(B, h, S0, d)`` twice with ``length`` ``(B,)``, or None.

        ``inplace``: the cache is a private buffer with room for ``T`` more slots per row (see
        :meth:`ARTransformer._generate`); new keys are written into it instead of copying it.
        """
        Bsz, T, H = x.shape
        q, k, v = (
            self.qkv(self.ln1(x)).view(Bsz, T, 3, self.heads, H // self.heads).permute(2, 0, 3, 1, 4)
        )  # (B, h, T, d)
        if cache is None:
            att = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, h, T, d)
            k_all, v_all = k, v
        else:
            k_all, v_all = _write(cache[0], k, length, inplace), _write(cache[1], v, length, inplace)  # (B, h, S, d)
            if inplace:  # attend over the used slots only
                used = int(length.max()) + T
                k_all, v_all = k_all[:, :, :used], v_all[:, :, :used]
            slot = torch.arange(k_all.shape[2], device=x.device)  # (S,)
            query_pos = length[:, None] + torch.arange(T, device=x.device)  # (B, T)
            mask = slot[None, None, :] <= query_pos[:, :, None]  # (B, T, S)
            att = F.scaled_dot_product_attention(q, k_all, v_all, attn_mask=mask[:, None])  # (B, h, T, d)
        x = x + self.drop(self.proj(att.transpose(1, 2).reshape(Bsz, T, H)))
        x = x + self.drop(self.mlp(self.ln2(x)))
        return x, (k_all, v_all)


def _write(cache: Tensor, new: Tensor, length: Tensor, inplace: bool = False) -> Tensor:
    """Cache ``(B, h, S0, d)`` with ``new`` ``(B, h, T, d)`` written at slots ``length[b] + 0..T-1``.

    Functional (a new tensor) unless ``inplace``, which writes into ``cache`` itself.
    """
    Bsz, nh, S0, d = cache.shape
    T = new.shape[2]
    idx = (length[:, None] + torch.arange(T, device=cache.device)).view(Bsz, 1, T, 1).expand(Bsz, nh, T, d)
    if inplace:
        return cache.scatter_(2, idx, new)
    if bool((length == S0).all()):  # every row full: a plain append
        return torch.cat([cache, new], dim=2)
    S = int(length.max()) + T
    out = F.pad(cache, (0, 0, 0, max(S - S0, 0)))  # (B, h, S, d)
    return out.scatter(2, idx, new)


class ARTransformer(ARModel):
    family = "ar-transformer"
    config_class = ARTransformerConfig
    state_keys = ("k", "v", "length")

    def __init__(self, config: ARTransformerConfig | None = None) -> None:
        config = config or ARTransformerConfig()
        super().__init__(config)
        self.embed = nn.Embedding(config.vocab_size + 1, config.width)
        self.pos = nn.Embedding(config.max_position + 1, config.width)  # slot 0 is BOS
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.layers))
        self.norm = nn.LayerNorm(config.width)
        self.head = nn.Linear(config.width, config.vocab_size)
        nn.init.normal_(self.pos.weight, std=0.02)

    def _net_initial(self, batch: int) -> NetState:
        c = self.config
        empty = torch.zeros(batch, c.layers, c.heads, 0, c.width // c.heads, dtype=self.dtype, device=self.device)
        return {"k": empty, "v": empty, "length": torch.zeros(batch, dtype=torch.long, device=self.device)}

    def _net_forward(self, x: Tensor, state: NetState | None, return_state: bool = True) -> tuple[Tensor, NetState]:
        Bsz, T = x.shape
        length = torch.zeros(Bsz, dtype=torch.long, device=x.device) if state is None else state["length"]
        pos = length[:, None] + torch.arange(T, device=x.device)  # (B, T)
        h = self.embed(x) + self.pos(pos)  # (B, T, H)
        inplace = state is not None and "buffer" in state
        ks, vs = [], []
        for i, block in enumerate(self.blocks):
            cache = None if state is None else (state["k"][:, i], state["v"][:, i])
            h, (k, v) = block(h, cache, None if state is None else length, inplace)
            ks.append(k)
            vs.append(v)
        logits = self.head(self.norm(h))  # (B, T, V)
        if not return_state:
            return logits, {}
        if inplace:  # the buffer itself was written: no copy of the cache per token
            assert state is not None
            return logits, {**state, "length": length + T}
        return logits, {"k": torch.stack(ks, 1), "v": torch.stack(vs, 1), "length": length + T}

    def _generate(
        self,
        state: GenState,
        n: int,
        temperature: float | Tensor,
        resumable: bool,
        blocks: Tensor | None = None,
        scores: list[Tensor] | None = None,
    ) -> tuple[Tensor, GenState | None]:
        """Copy the cache once into a buffer with room for ``n`` more slots, then decode into it.

        The caller's state is untouched (a value); the per-token cost is one attention read of the
        cache instead of a copy of it.
        """
        k, v, length = state["k"], state["v"], state["length"]
        room = int(length.max()) + n - k.shape[3]
        buf = {
            "k": F.pad(k, (0, 0, 0, max(room, 0))),
            "v": F.pad(v, (0, 0, 0, max(room, 0))),
            "length": length,
            "buffer": length,
        }  # "buffer" marks the private, writable cache
        tokens, nxt = super()._generate(state.evolve(**buf), n, temperature, resumable, scores=scores)
        if nxt is None:
            return tokens, None
        used = int(nxt["length"].max())
        tensors = {k_: t for k_, t in nxt.tensors.items() if k_ != "buffer"}
        tensors["k"], tensors["v"] = nxt["k"][:, :, :, :used], nxt["v"][:, :, :, :used]
        return tokens, GenState(nxt.family, nxt.fingerprint, tensors)

    def _net_step(self, x_t: Tensor, state: NetState) -> tuple[Tensor, NetState]:
        logits, nxt = self._net_forward(x_t[:, None], state)
        return logits[:, 0], nxt
