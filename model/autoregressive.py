"""Autoregressive baselines of the seeds' Table 1: SSM, GRU (here) and Transformer (transformer.py).

Glossary of axis letters:
    B  batch      T  time      n  tokens in one call      V  vocabulary size
    L  layers     H  width     N  SSM modes per channel

All three predict x_t from x_<t with a ``BOS = V`` token in front.  Their generation state holds
the network state after ``BOS, x_1..x_P`` and the logits of ``x_P+1``, so each generated token
costs exactly one recurrent step and nothing re-reads the prefix.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import native
from .base import LossOutput, SequenceModel, check_config
from .loops import CompiledLoops
from .network import SSMNet, SSMNetConfig, _affine
from .sampling import STREAM_TOKEN, keyed_uniform, row_temperatures, sample_categorical
from .state import GenState

__all__ = ["ARGRU", "ARSSM", "ARGRUConfig", "ARModel", "ARSSMConfig"]

NetState = dict[str, Tensor]


class ARModel(CompiledLoops, SequenceModel):
    """Resumable generation for any next-token network; subclasses provide the three ``_net_*``."""

    state_keys: tuple[str, ...] = ()  # names of the network's state tensors inside a GenState

    def _loop_keys(self) -> tuple[str, ...]:
        return ("logits", *self.state_keys)

    @property
    def bos_token(self) -> int:
        return self.vocab_size

    def _net_initial(self, batch: int) -> NetState:
        raise NotImplementedError

    def _net_forward(self, x: Tensor, state: NetState | None, return_state: bool = True) -> tuple[Tensor, NetState]:
        """``x`` ``(B, T)`` -> logits ``(B, T, V)`` and the state after ``x`` (None state: fresh)."""
        raise NotImplementedError

    def _net_step(self, x_t: Tensor, state: NetState, spare: NetState | None = None) -> tuple[Tensor, NetState]:
        """``x_t`` ``(B,)`` -> logits ``(B, V)``, next state.  ``spare``: a dead state of the same
        loop (never the caller's) whose tensors the next state may be written into."""
        raise NotImplementedError

    def loss(self, x: Tensor, **schedule: Any) -> LossOutput:
        """Teacher-forced NLL of ``x`` ``(B, T)``, with gradients; the schedule does not apply (see
        :meth:`SequenceModel.loss`)."""
        nll = self.token_nll(x).sum(-1)  # (B,)
        return LossOutput(total=nll.mean(), parts={"nll": nll})

    def logits(self, x: Tensor) -> Tensor:
        """Teacher-forced logits of ``p(x_t | x_<t)`` for every step of ``x`` ``(B, T)`` -> ``(B, T, V)``."""
        inp = torch.cat([torch.full_like(x[:, :1], self.bos_token), x[:, :-1]], dim=1)  # (B, T)
        logits, _ = self._net_forward(inp, None, return_state=False)  # (B, T, V)
        return logits

    def token_nll(self, x: Tensor) -> Tensor:
        """``-log p(x_t | x_<t)`` of every step, ``(B, T)`` nats, teacher-forced."""
        return F.cross_entropy(self.logits(x).transpose(1, 2), x, reduction="none")  # (B, T)

    def _nll(self, x: Tensor, prompt_len: int = 0) -> Tensor:
        return self.token_nll(x)[:, prompt_len:].sum(-1)

    def _net_state(self, state: GenState) -> NetState:
        return {k: state[k] for k in (*self.state_keys, "buffer") if k in state.tensors}

    def _empty_state(self, batch: int, seed: Tensor) -> GenState:
        bos = torch.full((batch, 1), self.bos_token, device=self.device)
        logits, net = self._net_forward(bos, self._net_initial(batch))
        zero = torch.zeros(batch, dtype=torch.long, device=self.device)
        return self.new_state(position=zero, seed=seed, logits=logits[:, -1], **net)

    def _append(self, state: GenState, tokens: Tensor) -> GenState:
        logits, net = self._net_forward(tokens, self._net_state(state))
        return state.evolve(position=state.position + tokens.shape[1], logits=logits[:, -1], **net)

    def _uniforms(self, state: GenState, n: int) -> Tensor:
        """The keyed uniforms ``(B, n)`` the next ``n`` tokens are drawn with, in PyTorch and in a compiled loop."""
        return keyed_uniform(state.seed, self.positions(state, n), STREAM_TOKEN, 1, self.dtype)[..., 0]

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
        u = self._uniforms(state, n)  # (B, n)
        logits, net = state["logits"], self._net_state(state)
        out, log_p = [], []
        # the state this loop made and has just read for the last time: the next step writes into it
        # instead of allocating (the caller's state is never one of them)
        spare: NetState | None = None
        for i in range(n):
            x_t = sample_categorical(logits, u[:, i], temperature)  # (B,)
            out.append(x_t)
            if scores is not None:
                log_p.append(logits.log_softmax(-1))  # (B, V): p(x_t | x_<t)
            if resumable or i < n - 1:
                logits, nxt = self._net_step(x_t, net, spare)
                spare, net = (net if i > 0 else None), nxt
        tokens = torch.stack(out, dim=1)  # (B, n)
        if scores is not None:
            scores.append(torch.stack(log_p, dim=1))  # (B, n, V)
        if not resumable:
            return tokens, None
        return tokens, state.evolve(position=state.position + n, logits=logits, **net)


# ----- autoregressive SSM ------------------------------------------------------------------------


@dataclass
class ARSSMConfig:
    vocab_size: int = 2  # V: tokens 0..V-1; the embedding also holds BOS = V
    max_position: int | None = None  # longest sequence the data has (784 for MNIST), None for text
    width: int = 64  # H: residual width
    state_size: int = 32  # N: complex SSM modes per channel
    layers: int = 4  # L: S4D blocks
    dropout: float = 0.0  # dropout inside blocks, training only

    def __post_init__(self) -> None:
        check_config(self, ("vocab_size", "width", "state_size", "layers"))


class ARSSM(ARModel):
    """Same S4D blocks as the VSSM, generating one token per recurrent step."""

    family = "ar-ssm"
    config_class = ARSSMConfig
    state_keys = ("h",)

    def __init__(self, config: ARSSMConfig | None = None) -> None:
        config = config or ARSSMConfig()
        super().__init__(config)
        self.net = SSMNet(
            SSMNetConfig(
                n_in=config.vocab_size + 1,
                n_out=config.vocab_size,
                width=config.width,
                state_size=config.state_size,
                layers=config.layers,
                dropout=config.dropout,
            )
        )

    def _net_initial(self, batch: int) -> NetState:
        return {"h": self.net.initial_state(batch)}

    def _upgrade_tensors(self, state: GenState) -> dict[str, Tensor]:
        return {**state.tensors, "h": self.net.state_of_h(state["h"])}

    def _net_forward(self, x: Tensor, state: NetState | None, return_state: bool = True) -> tuple[Tensor, NetState]:
        logits, h = self.net(x, None if state is None else state["h"], return_state=return_state)
        return logits, {"h": h} if return_state else {}

    def _net_step(self, x_t: Tensor, state: NetState, spare: NetState | None = None) -> tuple[Tensor, NetState]:
        logits, h = self.net.step(x_t, state["h"], None if spare is None else spare["h"])
        return logits, {"h": h}

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
        """On the CPU, where every step would be one native network pass, the whole loop is one
        compiled call (csrc/ar_loop.c): the same tokens and state as the loop in PyTorch, without
        its per-step Python (the latent prior's sequential draws have the same, csrc/latent_prior.c).
        Scored calls take it too, so asking for log-probabilities never changes a token."""
        # the checks kept as the VSSM's compiled calls keep theirs (SequenceModel._settled): the same treatment
        kind = ("ar loop", self.net.kernel_limit())
        loop = self._loop_or_none(kind, state, n, temperature, lambda: self._compiled_loop(state))
        out = None
        if loop is not None:
            temps = row_temperatures(temperature, state.batch_size)
            out = self._run_compiled(loop, state, self._uniforms(state, n), temps, resumable, scores)
        if out is None:
            return super()._generate(state, n, temperature, resumable, blocks, scores, ratio)
        tokens, logits, h_next, seen = out
        return self._compiled_state(state, n, resumable, tokens, scores, seen, logits=logits, h=h_next)

    def _compiled_loop(self, state: GenState) -> Callable[..., tuple[Tensor, Tensor, Tensor, Tensor | None]] | None:
        """The whole loop as one compiled call (csrc/ar_loop.c) where every step would be one native network
        pass over ``state``'s rows; else None."""
        loop = native.ar_loop()
        h = state["h"]
        # (B, 1, H): what a step reads, where the state is
        probe = torch.empty(h.shape[0], 1, self.config.width, dtype=self.dtype, device=h.device)
        if loop is None or not (
            self.net.inp._parameters.get("weight") is not None and self.net._native_ok(probe, 1, h)
        ):
            return None
        cfg = self.net.cfg
        # the pack once per weights, keyed as the VSSM's compiled calls key theirs (SequenceModel._laid_out),
        # not re-keyed from every parameter on each call: the same treatment for both families
        packed = self._laid_out("_ar_pack_cache", (), self.net._packed)  # eps goes beside it, not in it
        weight, eps = self.net.inp.weight, self.net.norm.eps

        def run(
            state: GenState, u: Tensor, temps: Tensor, keep: bool, scores: list[Tensor] | None
        ) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
            h, scored = state["h"], scores is not None
            return loop(state["logits"], h, u, temps, packed, weight, cfg.layers, cfg.state_size, eps, keep, scored)

        return run


# ----- autoregressive GRU ------------------------------------------------------------------------


@dataclass
class ARGRUConfig:
    vocab_size: int = 2  # V: tokens 0..V-1; the embedding also holds BOS = V
    max_position: int | None = None  # longest sequence the data has (784 for MNIST), None for text
    width: int = 64  # H: hidden size of every GRU layer
    layers: int = 2  # L: stacked GRU layers
    dropout: float = 0.0  # dropout between GRU layers, training only

    def __post_init__(self) -> None:
        check_config(self, ("vocab_size", "width", "layers"))


class ARGRU(ARModel):
    family = "ar-gru"
    config_class = ARGRUConfig
    state_keys = ("h",)

    def __init__(self, config: ARGRUConfig | None = None) -> None:
        config = config or ARGRUConfig()
        super().__init__(config)
        self.embed = nn.Embedding(config.vocab_size + 1, config.width)
        self.gru = nn.GRU(
            config.width,
            config.width,
            num_layers=config.layers,
            batch_first=True,
            dropout=config.dropout if config.layers > 1 else 0.0,
        )
        self.head = nn.Linear(config.width, config.vocab_size)

    def _net_initial(self, batch: int) -> NetState:
        return {"h": torch.zeros(batch, self.config.layers, self.config.width, dtype=self.dtype, device=self.device)}

    def _net_forward(self, x: Tensor, state: NetState | None, return_state: bool = True) -> tuple[Tensor, NetState]:
        h0 = None if state is None else state["h"].transpose(0, 1).contiguous()  # (L, B, H)
        y, hT = self.gru(self.embed(x), h0)  # (B, T, H), (L, B, H)
        return self.head(y), {"h": hT.transpose(0, 1)}

    def _net_step(self, x_t: Tensor, state: NetState, spare: NetState | None = None) -> tuple[Tensor, NetState]:
        logits, nxt = self._net_forward(x_t[:, None], state)
        return logits[:, 0], nxt

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
        """On the CPU the whole loop is one compiled call (csrc/gru_loop.c), as the AR-SSM's and the AR
        Transformer's are: the same treatment for every autoregressive baseline.  Scored calls take it too, so
        asking for log-probabilities never changes a token."""
        loop = self._loop_or_none(("gru loop",), state, n, temperature, self._compiled_loop)
        out = None
        if loop is not None:
            temps = row_temperatures(temperature, state.batch_size)
            out = self._run_compiled(
                loop, state["logits"], state["h"], self._uniforms(state, n), temps, resumable, scores
            )
        if out is None:
            return super()._generate(state, n, temperature, resumable, blocks, scores, ratio)
        tokens, logits, h_next, seen = out
        return self._compiled_state(state, n, resumable, tokens, scores, seen, logits=logits, h=h_next)

    def _compiled_loop(self) -> Callable[..., tuple[Tensor, Tensor, Tensor, Tensor | None]] | None:
        """The whole loop as one compiled call (csrc/gru_loop.c) where nothing in the stack is what one call
        cannot reproduce (a hook, dropout between layers in training, a missing bias, a projection, gradients, a
        device other than the CPU); else None."""
        loop = native.gru_loop()
        gru = self.gru
        if loop is None or not self._loop_may_run() or not gru.bias or gru.proj_size:
            return None
        if (gru.training and gru.dropout > 0) or not gru.batch_first or gru.bidirectional or not _affine(self.head):
            return None
        if gru.input_size != gru.hidden_size or self.embed._parameters.get("weight") is None:
            return None
        packed = self._laid_out("_gru_pack_cache", (), self._packed)
        emb = self.embed.weight

        def run(
            logits: Tensor, h: Tensor, u: Tensor, temps: Tensor, keep: bool, scores: list[Tensor] | None
        ) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
            return loop(logits, h, u, temps, packed, emb, keep, scores is not None)

        return run

    def _packed(self) -> Tensor:
        """The stack's weights as csrc/gru_loop.c reads them (model/native.py, pack_gru)."""
        g = self.gru
        layers = [
            (
                getattr(g, f"weight_ih_l{i}"),
                getattr(g, f"bias_ih_l{i}"),
                getattr(g, f"weight_hh_l{i}"),
                getattr(g, f"bias_hh_l{i}"),
            )
            for i in range(g.num_layers)
        ]
        return native.pack_gru(layers, (self.head.weight, self.head.bias))
