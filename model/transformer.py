"""Autoregressive Transformer baseline: causal self-attention with a key/value cache; and the
transformer stack the TVAE's three networks are made of (:class:`TransformerNet`, model/tvae.py).

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

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import native
from .autoregressive import ARModel, NetState
from .base import check_config
from .network import _affine
from .sampling import row_temperatures
from .state import GenState

__all__ = ["ARTransformer", "ARTransformerConfig", "Block", "TransformerNet", "TransformerNetConfig", "run_blocks"]


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
    """Pre-norm residual block: causal multi-head self-attention, then an MLP."""

    def __init__(self, width: int, heads: int, mlp_ratio: int = 4, dropout: float = 0.0) -> None:
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.ln2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(
            nn.Linear(width, mlp_ratio * width),
            nn.GELU(),
            nn.Linear(mlp_ratio * width, width),
        )
        self.drop = nn.Dropout(dropout)

    def forward(
        self,
        x: Tensor,
        cache: tuple[Tensor, Tensor] | None,
        length: Tensor | None,
        inplace: bool = False,
        causal: bool = True,
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """``x`` ``(B, T, H)``; ``cache`` ``(B, h, S0, d)`` twice with ``length`` ``(B,)``, or None.

        ``inplace``: the cache is a private buffer with room for ``T`` more slots per row (see
        :meth:`ARTransformer._generate`); new keys are written into it instead of copying it.
        ``causal=False`` (no cache only): every step attends to the whole sequence, as a
        smoothing posterior reads it (model/tvae.py).
        """
        if not causal and cache is not None:
            raise ValueError("a bidirectional pass reads a whole sequence: it takes no cache")
        Bsz, T, H = x.shape
        q, k, v = (
            self.qkv(self.ln1(x)).view(Bsz, T, 3, self.heads, H // self.heads).permute(2, 0, 3, 1, 4)
        )  # (B, h, T, d)
        if cache is None:
            att = F.scaled_dot_product_attention(q, k, v, is_causal=causal)  # (B, h, T, d)
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


def run_blocks(
    blocks: nn.ModuleList,
    h: Tensor,
    cache: tuple[Tensor, Tensor] | None,
    length: Tensor,
    inplace: bool = False,
    causal: bool = True,
    return_cache: bool = True,
) -> tuple[Tensor, tuple[Tensor, Tensor] | None]:
    """``h`` ``(B, T, H)`` through every block, each from its slice of ``cache`` (``k, v`` ``(B, L, h, S0, d)``
    with ``length`` ``(B,)`` slots used per row; None: a fresh sequence).  Returns ``h`` and the
    caches after it, ``(B, L, h, S, d)`` twice (the buffer itself when ``inplace``; None unless
    ``return_cache``)."""
    ks, vs = [], []
    for i, block in enumerate(blocks):
        layer_cache = None if cache is None else (cache[0][:, i], cache[1][:, i])
        h, (k, v) = block(h, layer_cache, None if cache is None else length, inplace, causal)
        ks.append(k)
        vs.append(v)
    if inplace:
        assert cache is not None
        return h, cache
    return h, (torch.stack(ks, 1), torch.stack(vs, 1)) if return_cache else None


@dataclass
class TransformerNetConfig:
    n_in: int  # I: token count (embedding input) or feature size (linear input)
    n_out: int  # O: output features (logits)
    max_position: int  # learned positions 0..max_position-1: the longest sequence the net reads
    tokens: bool = True  # True: inputs are token ids (embedding); False: float vectors (linear)
    width: int = 64  # H: model width
    heads: int = 4  # h: attention heads (width must divide evenly)
    layers: int = 2  # L: transformer blocks
    mlp_ratio: int = 4  # hidden width of each MLP, as a multiple of H
    dropout: float = 0.0  # dropout on attention output and MLP, training only

    def __post_init__(self) -> None:
        check_config(self, ("n_in", "n_out", "max_position", "width", "heads", "layers", "mlp_ratio"))
        if self.width % self.heads:
            raise ValueError(f"width {self.width} is not divisible by heads {self.heads}")


class TransformerNet(nn.Module):
    """A sequence network of transformer blocks with SSMNet's shape (model/network.py): input layer,
    blocks, head; output at step t reads inputs 1..t (or all of them with ``causal=False``).

    Its state is the key/value cache ``(k, v)``, ``(B, L, h, S, d)`` each, with the steps each row
    has read, ``length`` ``(B,)``, held by the caller (model/tvae.py keeps it equal to the position).
    """

    def __init__(self, cfg: TransformerNetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.inp: nn.Module = nn.Embedding(cfg.n_in, cfg.width) if cfg.tokens else nn.Linear(cfg.n_in, cfg.width)
        self.pos = nn.Embedding(cfg.max_position, cfg.width)
        self.blocks = nn.ModuleList(Block(cfg.width, cfg.heads, cfg.mlp_ratio, cfg.dropout) for _ in range(cfg.layers))
        self.norm = nn.LayerNorm(cfg.width)
        self.head = nn.Linear(cfg.width, cfg.n_out)
        nn.init.normal_(self.pos.weight, std=0.02)

    def initial_state(self, batch: int, dtype: torch.dtype, device: torch.device) -> tuple[Tensor, Tensor]:
        """An empty cache ``(B, L, h, 0, d)`` twice."""
        c = self.cfg
        empty = torch.zeros(batch, c.layers, c.heads, 0, c.width // c.heads, dtype=dtype, device=device)
        return empty, empty

    def forward(
        self,
        x: Tensor,
        cache: tuple[Tensor, Tensor] | None = None,
        length: Tensor | None = None,
        return_state: bool = True,
        causal: bool = True,
    ) -> tuple[Tensor, tuple[Tensor, Tensor] | None]:
        """``x``: ``(B, T)`` tokens or ``(B, T, I)`` vectors -> logits ``(B, T, O)`` and the cache after them.

        ``cache`` None reads a fresh sequence from position 0; otherwise ``x`` continues each row
        from its ``length`` (positions ``length .. length + T - 1``), as if the rows' earlier
        inputs were read in the same pass.  ``causal=False`` (fresh sequences only) attends both ways.
        """
        Bsz, T = x.shape[:2]
        if cache is None:
            length = torch.zeros(Bsz, dtype=torch.long, device=x.device)
        assert length is not None
        pos = length[:, None] + torch.arange(T, device=x.device)  # (B, T)
        h = self.inp(x) + self.pos(pos)  # (B, T, H)
        h, kv = run_blocks(self.blocks, h, cache, length, causal=causal, return_cache=return_state)
        return self.head(self.norm(h)), kv


class ARTransformer(ARModel):
    family = "ar-transformer"
    config_class = ARTransformerConfig
    state_keys = ("k", "v", "length")

    def __init__(self, config: ARTransformerConfig | None = None) -> None:
        config = config or ARTransformerConfig()
        super().__init__(config)
        self.embed = nn.Embedding(config.vocab_size + 1, config.width)
        self.pos = nn.Embedding(config.max_position + 1, config.width)  # slot 0 is BOS
        self.blocks = nn.ModuleList(
            Block(config.width, config.heads, config.mlp_ratio, config.dropout) for _ in range(config.layers)
        )
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
        cache = None if state is None else (state["k"], state["v"])
        h, kv = run_blocks(self.blocks, h, cache, length, inplace, return_cache=return_state)
        logits = self.head(self.norm(h))  # (B, T, V)
        if not return_state:
            return logits, {}
        if inplace:  # the buffer itself was written: no copy of the cache per token
            assert state is not None
            return logits, {**state, "length": length + T}
        assert kv is not None
        return logits, {"k": kv[0], "v": kv[1], "length": length + T}

    def _generate(
        self,
        state: GenState,
        n: int,
        temperature: float | Tensor,
        resumable: bool,
        blocks: Tensor | None = None,
        scores: list[Tensor] | None = None,
        ratio: float | Tensor = 1.0,
    ) -> tuple[Tensor, GenState | None]:
        """Copy the cache once into a buffer with room for ``n`` more slots, then decode into it.

        The caller's state is untouched (a value); the per-token cost is one attention read of the
        cache instead of a copy of it.  On the CPU the whole loop is one compiled call
        (csrc/transformer_loop.c), as the AR-SSM's is (csrc/ar_loop.c): the same treatment for every
        autoregressive baseline, so that the comparisons stay ones of arithmetic, not of Python.
        """
        k, v, length = state["k"], state["v"], state["length"]
        room = int(length.max()) + n - k.shape[3]
        buf = {
            "k": F.pad(k, (0, 0, 0, max(room, 0))).contiguous(),  # (a pad of nothing keeps the strides)
            "v": F.pad(v, (0, 0, 0, max(room, 0))).contiguous(),
            "length": length,
            "buffer": length,
        }  # "buffer" marks the private, writable cache
        loop = self._loop_or_none(("transformer loop",), state, n, temperature, self._compiled_loop)
        out = None
        if loop is not None:
            lengths = length.clone()  # advanced in place, with the buffer's slots
            temps = row_temperatures(temperature, state.batch_size)
            u = self._uniforms(state, n)
            out = self._run_compiled(loop, state["logits"], buf["k"], buf["v"], lengths, u, temps, resumable, scores)
        if out is not None:
            tokens, logits, seen = out
            net = {"k": buf["k"], "v": buf["v"], "length": lengths}
            tokens, nxt = self._compiled_state(state, n, resumable, tokens, scores, seen, logits=logits, **net)
        else:
            tokens, nxt = super()._generate(state.evolve(**buf), n, temperature, resumable, scores=scores)
        if nxt is None:
            return tokens, None
        used = int(nxt["length"].max())
        tensors = {k_: t for k_, t in nxt.tensors.items() if k_ != "buffer"}
        tensors["k"], tensors["v"] = nxt["k"][:, :, :, :used], nxt["v"][:, :, :, :used]
        return tokens, GenState(nxt.family, nxt.fingerprint, tensors)

    def _compiled_loop(self) -> Callable[..., tuple[Tensor, Tensor, Tensor | None]] | None:
        """The whole loop as one compiled call (csrc/transformer_loop.c) where nothing in the network is what
        one call cannot reproduce (a hook, an active dropout, a parametrised or missing weight, LayerNorms of
        different eps, an approximate GELU, gradients, a device other than the CPU); else None."""
        loop = native.transformer_loop()
        if loop is None or not self._loop_may_run():
            return None
        c = self.config
        norms = [self.norm]
        for b in self.blocks:
            mlp = b.mlp
            if len(mlp) != 3 or not (isinstance(mlp[1], nn.GELU) and mlp[1].approximate == "none"):
                return None
            if (b.drop.training and b.drop.p > 0) or b.heads != c.heads:
                return None
            linears = (b.qkv, b.proj, mlp[0], mlp[2])
            if not all(_affine(m) for m in (*linears, b.ln1, b.ln2)):
                return None
            if mlp[0].out_features != c.mlp_ratio * c.width:  # every block's MLP as wide: one F for the call
                return None
            norms += [b.ln1, b.ln2]
        eps = self.norm.eps
        if any(ln.eps != eps for ln in norms) or not _affine(self.head) or not _affine(self.norm):
            return None
        if self.embed._parameters.get("weight") is None or self.pos._parameters.get("weight") is None:
            return None
        packed = self._laid_out("_tr_pack_cache", (), self._packed)  # eps goes beside it, not in it
        mlp_width = c.mlp_ratio * c.width
        emb, pos = self.embed.weight, self.pos.weight

        def run(
            logits: Tensor,
            k: Tensor,
            v: Tensor,
            length: Tensor,
            u: Tensor,
            temps: Tensor,
            keep: bool,
            scores: list[Tensor] | None,
        ) -> tuple[Tensor, Tensor, Tensor | None]:
            return loop(logits, k, v, length, u, temps, packed, emb, pos, mlp_width, eps, keep, scores is not None)

        return run

    def _packed(self) -> Tensor:
        """The network's weights as csrc/transformer_loop.c reads them (model/native.py, pack_transformer)."""
        layers = [
            (
                *(b.ln1.weight, b.ln1.bias, b.qkv.weight, b.qkv.bias, b.proj.weight, b.proj.bias),
                *(b.ln2.weight, b.ln2.bias, b.mlp[0].weight, b.mlp[0].bias, b.mlp[2].weight, b.mlp[2].bias),
            )
            for b in self.blocks
        ]
        return native.pack_transformer(layers, (self.norm.weight, self.norm.bias), (self.head.weight, self.head.bias))

    def _net_step(self, x_t: Tensor, state: NetState, spare: NetState | None = None) -> tuple[Tensor, NetState]:
        logits, nxt = self._net_forward(x_t[:, None], state)
        return logits[:, 0], nxt
