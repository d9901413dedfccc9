"""A causal stack of S4D blocks: input layer, residual blocks, output head.

Glossary of axis letters:
    B  batch      T  time      H  width      N  SSM modes per channel      L  layers
    I  input size (tokens in the embedding, or features of a vector input)
    O  output size

The state of the whole network is one complex tensor ``(B, L, H, N)``: fixed size, whatever the
position, and stacked so that batching, splitting and serialising states are index operations.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.module import _global_forward_hooks, _global_forward_pre_hooks

from . import native
from .base import _structure, check_config
from .ssm import S4D, SHORT, S4DConfig, cached_pack, fixed_call, fixed_guard

__all__ = ["SSMNet", "SSMNetConfig", "needs_own_forward", "walked"]


def needs_own_forward(modules: Iterable[nn.Module]) -> bool:
    """Whether ``modules``' own forward does something a compiled pass or loop would skip, so that they keep it:
    a forward hook would run (global, or on any of them), or an embedding has a ``max_norm`` (its forward
    renormalises, in the weight itself, the rows it looks up; a compiled call reads the rows as they are)."""
    if _global_forward_hooks or _global_forward_pre_hooks:
        return True
    return any(
        m._forward_hooks or m._forward_pre_hooks or (isinstance(m, nn.Embedding) and m.max_norm is not None)
        for m in modules
    )


def walked(module: nn.Module) -> list[nn.Module]:
    """Every module of ``module``'s tree, kept in its ``__dict__`` until any module registers a parameter or
    submodule (model/base.py, ``_structure``): a short pass checks them for hooks on every call, and
    ``Module.modules()`` walks the tree through generators (a latent prior's walk took 6.7 us of a
    block-16 image's 0.3 ms of Python, 1.5 us kept; docs/experiments/rounds-and-serving.md, twenty-eighth session)."""
    hit = module.__dict__.get("_walked")
    if hit is None or hit[0] != _structure[0]:
        hit = module.__dict__["_walked"] = (_structure[0], list(module.modules()))
    return hit[1]


@dataclass
class SSMNetConfig:
    n_in: int  # I: token count (embedding input) or feature size (linear input)
    n_out: int  # O: output features (logits)
    tokens: bool = True  # True: inputs are token ids (embedding); False: float vectors (linear)
    width: int = 64  # H: residual stream width
    state_size: int = 32  # N: complex SSM modes per channel
    layers: int = 2  # L: residual S4D blocks
    dropout: float = 0.0  # dropout inside each block (training only)

    def __post_init__(self) -> None:
        check_config(self, ())


class SSMBlock(nn.Module):
    """Pre-norm residual block around one S4D layer: x + Dropout(GLU(Linear(GELU(S4D(LayerNorm(x)))))).

    (A gated form, the SSM output times a gate of the block input, lost its ablations and was
    removed: docs/experiments/README.md.)
    """

    def __init__(self, width: int, state_size: int, dropout: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.ssm = S4D(S4DConfig(width=width, state_size=state_size))
        self.out = nn.Linear(width, 2 * width)
        self.drop = nn.Dropout(dropout)

    def _mix(self, y: Tensor, activated: bool = False) -> Tensor:
        """SSM output ``y`` ``(..., H)`` (``activated``: GELU(y) already) -> residual update ``(..., H)``.

        The modules' dicts, not attributes: a layer call of one step is a few tens of microseconds in
        all, each Module.__getattr__ a few hundred nanoseconds, and the AR-SSM makes 4,704 such calls
        an image.  The output layer runs as ``F.linear`` unless a hook or a parametrised weight needs
        the module call."""
        g = y if activated else F.gelu(y)
        mods = self._modules
        out = mods["out"]
        lin = out._parameters  # type: ignore[union-attr]
        if out._forward_hooks or out._forward_pre_hooks or "weight" not in lin:  # type: ignore[union-attr]
            mixed = F.glu(out(g), dim=-1)  # type: ignore[misc]
        else:
            mixed = F.glu(F.linear(g, lin["weight"], lin["bias"]), dim=-1)
        # an identity dropout is still a call per layer: a short round makes a few hundred
        drop = mods["drop"]
        return drop(mixed) if self.training and drop.p > 0 else mixed  # type: ignore[misc,union-attr]

    def _fused(self, x: Tensor, T: int, state: Tensor | None, whole_network: bool = False) -> bool:
        """Whether LayerNorm, the SSM and GELU run as one native call over ``x`` (``T`` steps) from
        ``state`` (one per row: a state broadcast over the batch takes the reference path); with
        ``whole_network``, as part of one native call for the whole network (S4D.runs_scan)."""
        norm = self._modules["norm"]._parameters  # type: ignore[union-attr]  # (Module.__getattr__ costs)
        return (
            not torch.is_grad_enabled()
            and norm["weight"] is not None
            and norm["bias"] is not None
            and (state is None or state.shape[0] == x.shape[0])
            and self._modules["ssm"].runs_scan(x, T, whole_network)  # type: ignore[union-attr,operator]
        )

    def _native(
        self, x: Tensor, state: Tensor | None, return_state: bool, at: int | None
    ) -> tuple[Tensor, Tensor | None]:
        mods = self._modules  # (see _mix: no Module.__getattr__ on this path)
        norm = mods["norm"]
        ln = (norm._parameters["weight"], norm._parameters["bias"], norm.eps)  # type: ignore[union-attr]
        # g: GELU(S4D(LayerNorm(x))) (B, T, H), in one native call
        g, nxt = mods["ssm"].scan(x, state, return_state, at, norm=ln, gelu=True)  # type: ignore[union-attr,operator]
        return x + self._mix(g, activated=True), nxt  # (B, T, H)

    def forward(
        self, x: Tensor, state: Tensor | None, lengths: Tensor | None, return_state: bool
    ) -> tuple[Tensor, Tensor | None]:
        short = self.ssm.runs_short(x.shape[1], lengths)
        if short and self._fused(x, x.shape[1], state):
            return self._native(x, state, return_state, lengths)  # type: ignore[arg-type]
        n = self.norm(x)  # (B, T, H)
        if short:  # channels first: one layout change in, one out
            y, nxt = self.ssm.short(n.permute(2, 0, 1), state, return_state, lengths)  # type: ignore[arg-type]
            return x + self._mix(y.permute(1, 2, 0).contiguous()), nxt  # (B, T, H)
        y, nxt = self.ssm(n.transpose(1, 2), state, lengths=lengths, return_state=return_state)  # (B, H, T)
        # contiguous: GELU's backward over the strided transpose of the FFT output is 2-4x slower
        return x + self._mix(y.transpose(1, 2).contiguous()), nxt  # (B, T, H)

    def forward_blocks(self, x_a: Tensor, x_m: Tensor, block: int) -> tuple[Tensor, Tensor]:
        """Both streams of :meth:`S4D.forward_blocks` through the block, ``(B, T, H)`` each."""
        n_a, n_m = self.norm(x_a), self.norm(x_m)  # (B, T, H)
        y_a, y_m = self.ssm.forward_blocks(n_a.transpose(1, 2), n_m.transpose(1, 2), block)  # (B, H, T)
        return (
            x_a + self._mix(y_a.transpose(1, 2).contiguous()),
            x_m + self._mix(y_m.transpose(1, 2).contiguous()),
        )

    def step(self, x_t: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        if self._fused(x_t, 1, state):  # a step is a pass of one: the autoregressive SSM gets the kernel too
            y, nxt = self._native(x_t[:, None], state, True, None)  # (B, 1, H)
            return y[:, 0], nxt  # type: ignore[return-value]
        n = self.norm(x_t)  # (B, H)
        y, nxt = self.ssm.step(n, state)  # (B, H)
        return x_t + self._mix(y), nxt


def _affine(mod: nn.Module) -> bool:
    """A LayerNorm or Linear with its own weight and bias tensors (not parametrised, not removed)."""
    p = mod._parameters
    return p.get("weight") is not None and p.get("bias") is not None


class SSMNet(nn.Module):
    """Causal sequence network: output at t depends on inputs 1..t only."""

    def __init__(self, cfg: SSMNetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.inp: nn.Module = nn.Embedding(cfg.n_in, cfg.width) if cfg.tokens else nn.Linear(cfg.n_in, cfg.width)
        self.blocks = nn.ModuleList(SSMBlock(cfg.width, cfg.state_size, cfg.dropout) for _ in range(cfg.layers))
        self.norm = nn.LayerNorm(cfg.width)
        self.head = nn.Linear(cfg.width, cfg.n_out)

    def initial_state(self, batch: int) -> Tensor:
        return torch.stack([b.ssm.initial_state(batch) for b in self.blocks], dim=1)  # (B, L, H, N)

    def state_of_h(self, h: Tensor) -> Tensor:
        """The network's state ``(B, L, H, N)`` of one held as ``h`` (model/state.py's format 1; S4D.state_of_h)."""
        return torch.stack([b.ssm.state_of_h(h[:, i]) for i, b in enumerate(self.blocks)], dim=1)

    def kernel_limit(self) -> int:
        """Batch x steps up to which :meth:`_native_ok` lets a pass run in one native call: its first layer's
        (S4D.kernel_max_tokens, the layer the check reads; 0 without layers).  The compiled calls' kept checks
        are keyed on it (model/base.py, ``SequenceModel._settled``): it follows the thread count and a limit
        set by hand."""
        blocks = self._modules["blocks"]._modules  # (no Module.__getattr__ on this path)
        return blocks["0"]._modules["ssm"].kernel_max_tokens() if blocks else 0  # type: ignore[union-attr,operator]

    def _native_ok(self, h: Tensor, T: int, state: Tensor | None) -> bool:
        """Whether the blocks, final norm and head over ``h`` ``(B, T, H)`` run as one native call: every
        block would take its fused kernel (short, small, no gradient), and nothing in the network is
        what one call cannot reproduce (a hook, an active dropout, a parametrised or missing weight,
        LayerNorms of different eps).  Checked from the modules' own dicts on every call, the modules'
        part once per generation call (model/ssm.py, ``weights_fixed``), and under a frozen model's guard
        a pass found fit once while the guard stays the same (model/base.py, ``SequenceModel._guard``)."""
        blocks = self._modules["blocks"]._modules  # (Module.__getattr__ costs: see SSMBlock._mix)
        first = blocks["0"] if blocks else None
        # the state's rows, not a layer's slice: _fused reads only its batch size
        if first is None or not first._fused(h, T, state, whole_network=True):  # type: ignore[union-attr,operator]
            return False
        if state is not None and state.shape[0] != h.shape[0]:
            return False
        call, guard = fixed_call(), fixed_guard()
        hit = self.__dict__.get("_modules_ok")
        if call is not None and hit is not None and hit[0] == call:  # checked already in this generation call
            return hit[1]
        if guard is not None and hit is not None and hit[1] and hit[2] == guard:  # found fit under this guard
            return True  # (not a refusal: a hook removed since does not move the guard)
        ok = self._modules_native_ok()
        self.__dict__["_modules_ok"] = (call, ok, guard)
        return ok

    def _modules_native_ok(self) -> bool:
        """The part of :meth:`_native_ok` that depends on the modules only, not on the pass."""
        if needs_own_forward(walked(self)):
            return False
        mods = self._modules
        blocks = mods["blocks"]._modules  # type: ignore[union-attr]
        eps = mods["norm"].eps  # type: ignore[union-attr]
        for b in blocks.values():
            bm = b._modules
            drop = bm["drop"]
            if (drop.training and drop.p > 0) or bm["norm"].eps != eps:  # type: ignore[union-attr,operator]
                return False
            if not (_affine(bm["norm"]) and _affine(bm["out"])):  # type: ignore[arg-type]
                return False
        return _affine(mods["norm"]) and _affine(mods["head"])  # type: ignore[arg-type]

    def _packed(self) -> Tensor:
        """The weights of :func:`model.native.pack`, rebuilt when any of them changes: the key of
        :func:`model.ssm.weights_key` over the modules' live parameter entries (an optimiser step,
        ``load_state_dict``, ``.to()``, a parameter replaced or set to None); once per generation call
        (model/ssm.py, ``weights_fixed``), so a weight changed by another thread during a call is read by the
        next call, and under a frozen model's guard once while it stays the same (a parameter set to None on
        a frozen model is then not seen: freeze again).  Like every weights cache here it cannot see writes
        that bypass the version counter (``p.data.mul_()``, fused optimisers)."""

        def build() -> Tensor:
            layers = []
            for b in self.blocks:
                scan = b.ssm._cached("scan", b.ssm._build_scan)
                layers.append((b.norm.weight, b.norm.bias, scan["w"], scan["D"], b.out.weight, b.out.bias))
            return native.pack(layers, (self.norm.weight, self.norm.bias), (self.head.weight, self.head.bias))

        return cached_pack(self, lambda: [p for m in walked(self) for p in m._parameters.values()], build)

    def _native(
        self,
        h: Tensor,
        state: Tensor | None,
        at: int,
        return_state: bool,
        out: Tensor | None = None,
        residual: list[Tensor] | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """Blocks, final norm and head over ``h`` ``(B, T, H)`` in one native call (model/native.py);
        ``residual`` receives the stream after the blocks."""
        run = native.net()
        assert run is not None
        cfg = self.cfg
        eps = self._modules["norm"].eps  # type: ignore[union-attr]
        return run(
            h, state, self._packed(), cfg.layers, cfg.state_size, cfg.n_out, eps, at, return_state, out, residual
        )

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
        return self.forward_from(self.inp(x), state, lengths, return_state)

    def forward_from(
        self,
        h: Tensor,
        state: Tensor | None = None,
        lengths: Tensor | None = None,
        return_state: bool = True,
    ) -> tuple[Tensor, Tensor | None]:
        """:meth:`forward` after the input layer: ``h`` ``(B, T, H)`` is ``self.inp(x)`` (a caller
        that can compute it more cheaply, e.g. a linear layer of one-hot inputs as a sum of columns)."""
        T = h.shape[1]
        if state is not None and T > SHORT and not bool(state.any()):
            # a fresh state: skip every layer's initial-state readout, the costliest part of a long pass
            # (on the short path the readout is a few matmul rows, cheaper than this check's host sync)
            state = None
        # the kernel also past SHORT (the block's rows within its limit, S4D.runs_scan), as the compiled
        # rounds already run it: one row's 256-784-step decoder pass took 0.8 of the FFT path's time
        # (docs/experiments/rounds-and-serving.md, nineteenth session)
        if (lengths is None or isinstance(lengths, int)) and self._native_ok(h, T, state):
            return self._native(h, state, T if lengths is None else lengths, return_state)
        states = []
        for i, block in enumerate(self.blocks):
            h, s = block(h, None if state is None else state[:, i], lengths, return_state)
            states.append(s)
        nxt = torch.stack(states, dim=1) if return_state else None  # (B, L, H, N)
        return self.head(self.norm(h)), nxt

    def forward_blocks(self, x_a: Tensor, x_m: Tensor, block: int) -> tuple[Tensor, Tensor]:
        """Every block of ``block`` steps continued from an absorbed prefix, in one pass from the zero state.

        ``x_a`` and ``x_m`` are inputs as in :meth:`forward`, ``(B, T)`` or ``(B, T, I)``.  Returns the
        logits ``(B, T, O)`` over ``x_a`` and the mixed logits ``(B, T, O)``: at step t of the block
        starting at s, the network's output at t over ``x_a[:, :s] ++ x_m[:, s:t+1]`` (what block
        sampling computes block by block from states, ``docs/design.md``; tested against that).
        The absorbed stream's head costs little next to the blocks, so both are returned.
        """
        h_a, h_m = self.inp(x_a), self.inp(x_m)  # (B, T, H)
        for block_layer in self.blocks:
            h_a, h_m = block_layer.forward_blocks(h_a, h_m, block)
        return self.head(self.norm(h_a)), self.head(self.norm(h_m))

    def step(self, x_t: Tensor, state: Tensor, out: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``x_t``: ``(B,)`` tokens or ``(B, I)`` vectors -> logits ``(B, O)``, next state.  ``out``: a
        state the caller will never read again, whose memory the native pass may write the next
        state into (a generation loop's spare); the result is the same either way."""
        h = self.inp(x_t)  # (B, H)
        if self._native_ok(h[:, None], 1, state):  # a step is a pass of one: the AR-SSM gets the kernel too
            logits, nxt = self._native(h[:, None], state, 1, True, out)
            return logits[:, 0], nxt  # type: ignore[return-value]
        states = []
        for i, block in enumerate(self.blocks):
            h, s = block.step(h, state[:, i])
            states.append(s)
        return self.head(self.norm(h)), torch.stack(states, dim=1)
