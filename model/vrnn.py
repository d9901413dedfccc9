"""Variational RNN (Chung et al., 2015; the seeds' Table 1 "VRNN" row): a GRU with a latent per step.

Glossary of axis letters:
    B  batch      T  sequence length      C  prompt length      n  tokens in one call
    V  vocabulary size      H  width (GRU state, features, MLP hidden layers)
    Z  categorical latent variables per step      K  classes per latent variable
    S  importance samples of a bound

One step, from the GRU state ``h_t-1`` ``(B, H)`` (the paper's equations 5-7, 9):
    prior      p(z_t | h_t-1)          = Cat(phi_prior(h_t-1))                    (B, Z, K)
    emission   p(x_t | z_t, h_t-1)     = Cat(phi_dec(phi_z(z_t), h_t-1))           (B, V)
    recurrence h_t = GRU([phi_x(x_t), phi_z(z_t)], h_t-1)                          (B, H)
    posterior  q(z_t | x_t, h_t-1)     = Cat(phi_enc(phi_x(x_t), h_t-1))           (B, Z, K)
phi_prior, phi_enc, phi_dec and phi_z are MLPs with one hidden layer of H (ReLU); phi_x is an
embedding, which is what an MLP's first layer is on a one-hot token (a deeper phi_x of a token
is still a table of V rows, so its layers would add parameters and nothing else).  Training
maximises the ELBO ``sum_t E_q[log p(x_t | z_t, h_t-1) - KL(q(z_t | x_t, h_t-1) || p(z_t | h_t-1))]``
with ``h`` run on posterior draws; both distributions are categorical, so each step's KL is exact.

Latents.  The paper's latents are Gaussian with the reparameterisation trick.  Here they are
discrete, Z categoricals of K classes with the straight-through Gumbel estimator the VSSM uses:
the comparison with the VSSM then changes the network (a recurrent, learned prior instead of a
uniform one) and nothing else (latent space, estimator, exact KL); every latent draw is one keyed
uniform per variable like the VSSM's, and a tiny model's likelihood is a finite sum, so the tests
check the bound against the exact value.  What is kept of Chung et al. is the structure above.

Generation is sequential, one step per token (z_t from the prior, x_t from the emission, then the
GRU), from a fixed-size state: ``h`` ``(B, H)``.  Observed tokens (a prompt, an append) are read by
the filter: each z_t is drawn from the posterior, keyed by (seed, position), and the GRU advances
over (x_t, z_t).  The likelihood (:meth:`VRNN.nll`) is the importance-weighted bound with the
posterior as proposal, of the process that generation samples.

Speed.  The recurrence cannot run in parallel over time: h_t needs z_t, which needs h_t-1.  The
training filter holds only what must be sequential (posterior, draw, phi_z, GRU); everything that
reads x alone is computed for all steps before it, and the prior and emission for all steps after
it.  On the CPU, without gradients, generation and the filter over observed tokens are each one
compiled call (csrc/vrnn_loop.c), as the autoregressive baselines' loops are.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import native
from .base import LossOutput, SequenceModel, check_config
from .loops import CompiledLoops
from .network import _affine
from .sampling import (
    STREAM_LATENT,
    STREAM_TOKEN,
    finite_temperature,
    keyed_uniform,
    row_temperatures,
    sample_categorical,
    sequence_seeds,
)
from .state import GenState

__all__ = ["VRNN", "VRNNConfig"]

# draw(t, log_q_t) -> one-hot z_t (B, Z*K): the filter's latent at step t from the posterior
Draw = Callable[[int, Tensor], Tensor]


@dataclass
class VRNNConfig:
    vocab_size: int = 2  # V: tokens 0..V-1 (2 for binarised MNIST, 256 for bytes)
    max_position: int | None = None  # longest sequence the data has (784 for MNIST), None for text
    width: int = 64  # H: GRU state, phi_x / phi_z features and every MLP's hidden layer
    n_latents: int = 8  # Z: categorical latent variables per step
    n_classes: int = 8  # K: classes of each latent variable

    def __post_init__(self) -> None:
        check_config(self, ("vocab_size", "width", "n_latents"))
        if not isinstance(self.n_classes, int) or self.n_classes < 2:
            raise ValueError(f"n_classes must be an integer >= 2, got {self.n_classes!r}")


@dataclass
class Filtered:
    """What the filter returns over ``T`` steps (see :meth:`VRNN._filter`)."""

    log_q: Tensor  # (B, T, Z, K) log q(z_t | x_t, h_t-1)
    z: Tensor  # (B, T, Z*K) one-hot latents drawn
    ez: Tensor  # (B, T, H) phi_z(z_t)
    h_prev: Tensor  # (B, T, H) h_t-1, the state each step read
    h: Tensor  # (B, H) the state after the last step


class VRNN(CompiledLoops, SequenceModel):
    family = "vrnn"
    config_class = VRNNConfig

    def __init__(self, config: VRNNConfig | None = None) -> None:
        config = config or VRNNConfig()
        super().__init__(config)
        H, V, ZK = config.width, config.vocab_size, config.n_latents * config.n_classes
        self.phi_x = nn.Embedding(V, H)
        self.phi_z = nn.Sequential(nn.Linear(ZK, H), nn.ReLU(), nn.Linear(H, H), nn.ReLU())
        self.prior = nn.Sequential(nn.Linear(H, H), nn.ReLU(), nn.Linear(H, ZK))
        # MLPs of two inputs, [a, h]: their first layer is split into a part per input (the same
        # map as one Linear of the concatenation), so the part that reads x runs for all steps at once
        self.enc_x, self.enc_h, self.enc_out = nn.Linear(H, H), nn.Linear(H, H, bias=False), nn.Linear(H, ZK)
        self.dec_z, self.dec_h, self.dec_out = nn.Linear(H, H), nn.Linear(H, H, bias=False), nn.Linear(H, V)
        # the GRU's input [phi_x(x_t), phi_z(z_t)], split the same way; gates as torch.nn.GRUCell's
        self.gru_x, self.gru_z, self.gru_h = nn.Linear(H, 3 * H), nn.Linear(H, 3 * H, bias=False), nn.Linear(H, 3 * H)

    def num_parameters(self, generation_only: bool = False) -> int:
        """Every parameter, either way: serving runs the posterior too, which reads prompts and appends."""
        return sum(p.numel() for p in self.parameters())

    # ----- one step's pieces --------------------------------------------------------------------------
    def _latent_logits(self, out: Tensor) -> Tensor:
        return out.unflatten(-1, (self.config.n_latents, self.config.n_classes))  # (..., Z, K)

    def _one_hot(self, z: Tensor) -> Tensor:
        return F.one_hot(z, self.config.n_classes).to(self.dtype).flatten(-2)  # (..., Z*K)

    def _cell(self, gx: Tensor, ez: Tensor, h: Tensor) -> Tensor:
        """GRU update ``(B, H)`` from ``gx = gru_x(phi_x(x_t))`` ``(B, 3H)``, ``ez = phi_z(z_t)`` and ``h_t-1``."""
        gi = gx + self.gru_z(ez)  # (B, 3H) input part of the gates
        gh = self.gru_h(h)  # (B, 3H)
        i_r, i_u, i_n = gi.chunk(3, -1)
        h_r, h_u, h_n = gh.chunk(3, -1)
        r = torch.sigmoid(i_r + h_r)  # reset gate
        u = torch.sigmoid(i_u + h_u)  # update gate
        cand = torch.tanh(i_n + r * h_n)
        return cand + u * (h - cand)  # (1 - u) cand + u h

    def _posterior(self, ax: Tensor, h: Tensor) -> Tensor:
        """``log q(z_t | x_t, h_t-1)`` ``(B, Z, K)`` from ``ax = enc_x(phi_x(x_t))`` ``(B, H)``."""
        return self._latent_logits(self.enc_out(torch.relu(ax + self.enc_h(h)))).log_softmax(-1)

    def _prior_log_probs(self, h: Tensor) -> Tensor:
        """``log p(z_t | h_t-1)`` ``(..., Z, K)`` from ``h_t-1`` ``(..., H)``."""
        return self._latent_logits(self.prior(h)).log_softmax(-1)

    def _emission(self, ez: Tensor, h: Tensor) -> Tensor:
        """Logits of ``p(x_t | z_t, h_t-1)`` ``(..., V)`` from ``phi_z(z_t)`` and ``h_t-1``, both ``(..., H)``."""
        return self.dec_out(torch.relu(self.dec_z(ez) + self.dec_h(h)))

    def _initial(self, batch: int) -> Tensor:
        return torch.zeros(batch, self.config.width, dtype=self.dtype, device=self.device)

    # ----- the filter: x observed, z drawn from the posterior -----------------------------------------
    def _filter(self, x: Tensor, h: Tensor, draw: Draw) -> Filtered:
        """Run the recurrence over observed ``x`` ``(B, T)``, T >= 1, from ``h`` ``(B, H)``, z_t from ``draw``."""
        ex = self.phi_x(x)  # (B, T, H)
        # unbind, not gx[:, t]: the backward of T indexings writes T gradients of the whole (B, T, .)
        gxs, axs = self.gru_x(ex).unbind(1), self.enc_x(ex).unbind(1)  # T x (B, 3H), T x (B, H)
        log_qs, zs, ezs, hs = [], [], [], []
        for t, (gx, ax) in enumerate(zip(gxs, axs, strict=True)):
            log_q = self._posterior(ax, h)  # (B, Z, K)
            z = draw(t, log_q)  # (B, Z*K)
            ez = self.phi_z(z)  # (B, H)
            log_qs.append(log_q)
            zs.append(z)
            ezs.append(ez)
            hs.append(h)
            h = self._cell(gx, ez, h)
        return Filtered(torch.stack(log_qs, 1), torch.stack(zs, 1), torch.stack(ezs, 1), torch.stack(hs, 1), h)

    def _keyed_draws(self, seed: Tensor, positions: Tensor) -> Draw:
        """Draws keyed on (``seed`` ``(B,)``, ``positions`` ``(B, T)``), one uniform per latent variable."""
        u = keyed_uniform(seed, positions, STREAM_LATENT, self.config.n_latents, self.dtype)  # (B, T, Z)
        return lambda t, log_q: self._one_hot(sample_categorical(log_q, u[:, t], 1.0))

    # ----- training -----------------------------------------------------------------------------------
    def loss(
        self,
        x: Tensor,
        *,
        kl_weight: float = 1.0,
        tau: float = 1.0,
        block_size: int | None = None,
        prompt_lengths: Tensor | None = None,
    ) -> LossOutput:
        """Negative ELBO terms of a batch ``x`` ``(B, T)`` (``parts``: ``rec``, ``kl``, ``nll`` = their
        sum, a bound on the NLL, all ``(B,)`` nats); z_t by straight-through Gumbel at temperature
        ``tau``; ``kl_weight`` scales the KL in ``total`` (warm-up).  ``block_size`` and
        ``prompt_lengths`` do not apply: there is no partial encoder, and generation is step by step."""
        shape = (*x.shape, self.config.n_latents, self.config.n_classes)
        gumbel = -torch.empty(shape, dtype=self.dtype, device=x.device).exponential_().log()  # (B, T, Z, K) at once

        def draw(t: int, log_q: Tensor) -> Tensor:
            perturbed = log_q + gumbel[:, t]  # (B, Z, K)
            hard = F.one_hot(perturbed.detach().argmax(-1), self.config.n_classes).to(log_q.dtype)
            soft = (perturbed / tau).softmax(-1)
            return (hard + soft - soft.detach()).flatten(-2)  # forward: the draw; gradient: the softmax's

        f = self._filter(x, self._initial(x.shape[0]), draw)
        rec = F.cross_entropy(self._emission(f.ez, f.h_prev).transpose(1, 2), x, reduction="none").sum(-1)  # (B,)
        log_p = self._prior_log_probs(f.h_prev)  # (B, T, Z, K)
        kl = (f.log_q.exp() * (f.log_q - log_p)).sum((-1, -2, -3))  # (B,)
        return LossOutput(total=(rec + kl_weight * kl).mean(), parts={"nll": rec + kl, "rec": rec, "kl": kl})

    # ----- likelihood ---------------------------------------------------------------------------------
    def _nll(self, x: Tensor, prompt_len: int = 0, samples: int = 1, seed: int = 0) -> Tensor:
        """Importance-weighted bound with ``samples`` posterior draws (1: the negative ELBO)."""
        w = self._log_weights(x, prompt_len, samples, seed)  # (S, B)
        return -(torch.logsumexp(w, 0) - math.log(samples))

    @torch.no_grad()
    def log_weights(self, x: Tensor, prompt_len: int = 0, samples: int = 1, seed: int = 0) -> Tensor:
        """Log importance weights of ``samples`` draws, ``(S, B)``: what :meth:`nll` averages."""
        return self._log_weights(self._scored(x, prompt_len), prompt_len, samples, seed)

    def _log_weights(self, x: Tensor, prompt_len: int, samples: int, seed: int) -> Tensor:
        """``sum_t>C [log p(x_t | z_t, h_t-1) + log p(z_t | h_t-1) - log q(z_t | x_t, h_t-1)]``, ``(S, B)``.

        All ``samples`` draws run as one batch of S x B rows through the filter.  The prompt's
        latents are drawn from the posterior, as :meth:`append` draws them, so their terms cancel:
        this bounds ``-log p(x_C+1:T | x_1:C)`` of what generation after that prompt samples.  Draw
        k of a sequence is keyed on (a hash of its tokens, ``seed + k``): independent of batching.
        """
        Bsz, T = x.shape
        C = prompt_len
        keys = (sequence_seeds(x, seed)[None] + torch.arange(samples, device=x.device)[:, None]).reshape(-1)  # (S*B,)
        xs = x.repeat(samples, 1)  # (S*B, T)
        pos = torch.arange(T, device=x.device).expand(len(xs), T)
        f = self._filter(xs, self._initial(len(xs)), self._keyed_draws(keys, pos))
        after = slice(C, T)
        z = f.z[:, after].unflatten(-1, (self.config.n_latents, self.config.n_classes))  # (S*B, T-C, Z, K)
        log_px = -F.cross_entropy(
            self._emission(f.ez[:, after], f.h_prev[:, after]).transpose(1, 2), xs[:, after], reduction="none"
        ).sum(-1)  # (S*B,)
        log_ratio = ((self._prior_log_probs(f.h_prev[:, after]) - f.log_q[:, after]) * z).sum((-1, -2, -3))  # (S*B,)
        return (log_px + log_ratio).view(samples, Bsz)

    # ----- resumable generation -----------------------------------------------------------------------
    def _empty_state(self, batch: int, seed: Tensor) -> GenState:
        zero = torch.zeros(batch, dtype=torch.long, device=self.device)
        return self.new_state(position=zero, seed=seed, h=self._initial(batch))

    def _append(self, state: GenState, tokens: Tensor) -> GenState:
        """The filter over observed ``tokens`` ``(B, n)``, z_t drawn from the posterior keyed on (seed, position)."""
        positions = self.positions(state, tokens.shape[1])  # (B, n)
        loop = self._loop_or_none(("vrnn loop",), state, tokens.shape[1], 1.0, self._compiled_loop)
        if loop is not None:  # (tokens are int64 on the model's device: SequenceModel.append)
            u = keyed_uniform(state.seed, positions, STREAM_LATENT, self.config.n_latents, self.dtype)  # (B, n, Z)
            out = self._run_compiled(loop, state["h"], u, observed=tokens)
            if out is not None:
                return state.evolve(position=state.position + tokens.shape[1], h=out[1])
        h = self._filter(tokens, state["h"], self._keyed_draws(state.seed, positions)).h
        return state.evolve(position=state.position + tokens.shape[1], h=h)

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
        """One step per token whatever ``blocks``: z_t from the prior at ``temperature``, x_t from the
        emission at :meth:`token_temperature`, then the GRU reads them.  On the CPU the whole loop is one
        compiled call (csrc/vrnn_loop.c); scored calls take it too, so asking for log-probabilities never changes
        a token."""
        positions = self.positions(state, n)  # (B, n)
        u_lat = keyed_uniform(state.seed, positions, STREAM_LATENT, self.config.n_latents, self.dtype)  # (B, n, Z)
        u_tok = keyed_uniform(state.seed, positions, STREAM_TOKEN, 1, self.dtype)[..., 0]  # (B, n)
        temp_x = self.token_temperature(temperature, ratio)
        loop = None
        if finite_temperature(temp_x):
            loop = self._loop_or_none(("vrnn loop",), state, n, temperature, self._compiled_loop)
        if loop is not None:
            B = state.batch_size
            temps = (row_temperatures(temperature, B), row_temperatures(temp_x, B))
            out = self._run_compiled(
                loop, state["h"], u_lat, u_tok=u_tok, temp_z=temps[0], temp_x=temps[1], last_step=resumable,
                scores=scores is not None,
            )  # fmt: skip
            if out is not None:
                tokens, h, seen = out  # seen: the logits of p(x_t | z_t, h_t-1) each token was drawn from
                return self._compiled_state(state, n, resumable, tokens, scores, seen, h=h)
        per_row = isinstance(temperature, Tensor) and temperature.ndim == 1
        temp_z = temperature[:, None] if per_row else temperature  # type: ignore[index]
        h = state["h"]
        out, log_p = [], []
        for i in range(n):
            z = sample_categorical(self._prior_log_probs(h), u_lat[:, i], temp_z)  # (B, Z)
            ez = self.phi_z(self._one_hot(z))  # (B, H)
            x_logits = self._emission(ez, h)  # (B, V)
            x_t = sample_categorical(x_logits, u_tok[:, i], temp_x)  # (B,)
            out.append(x_t)
            if scores is not None:
                log_p.append(x_logits.log_softmax(-1))  # p(x_t | z_t, h_t-1)
            if resumable or i < n - 1:
                h = self._cell(self.gru_x(self.phi_x(x_t)), ez, h)
        tokens = torch.stack(out, dim=1)  # (B, n)
        if scores is not None:
            scores.append(torch.stack(log_p, dim=1))  # (B, n, V)
        if not resumable:
            return tokens, None
        return tokens, state.evolve(position=state.position + n, h=h)

    # ----- the compiled loop --------------------------------------------------------------------------
    def _loop_keys(self) -> tuple[str, ...]:
        return ("h",)

    def _compiled_loop(self) -> Callable[..., tuple[Tensor | None, Tensor, Tensor | None]] | None:
        """The loop as one compiled call (csrc/vrnn_loop.c) where nothing in the network is what one call cannot
        reproduce (a hook, a removed or parametrised weight, an activation other than ReLU, an embedding that
        renormalises its rows, gradients, a device other than the CPU); else None."""
        loop = native.vrnn_loop()
        if loop is None or not self._loop_may_run():
            return None
        with_bias = (self.prior[0], self.prior[2], self.phi_z[0], self.phi_z[2], self.enc_x, self.enc_out)
        with_bias += (self.dec_z, self.dec_out, self.gru_x, self.gru_h)
        no_bias = (self.enc_h, self.dec_h, self.gru_z)
        if not all(_affine(m) for m in with_bias) or self.phi_x._parameters.get("weight") is None:
            return None
        if type(self.phi_x) is not nn.Embedding:  # (its max_norm: _loop_may_run)
            return None
        if any(m._parameters.get("weight") is None or m._parameters.get("bias") is not None for m in no_bias):
            return None
        if len(self.prior) != 3 or len(self.phi_z) != 4:
            return None
        # the MLPs' activations: ReLU in the loop (indexed: a slice of a Sequential registers a new module)
        if any(type(a) is not nn.ReLU for a in (self.prior[1], self.phi_z[1], self.phi_z[3])):
            return None
        packed = self._laid_out("_vrnn_pack_cache", (), self._packed)
        cfg = self.config
        dims = (cfg.vocab_size, cfg.n_latents, cfg.n_classes)

        def run(h: Tensor, u_lat: Tensor, **kw: Any) -> tuple[Tensor | None, Tensor, Tensor | None]:
            return loop(h, u_lat, packed, dims, **kw)

        return run

    def _packed(self) -> Tensor:
        """The network's weights as csrc/vrnn_loop.c reads them (model/native.py, pack_vrnn)."""
        ex = self.phi_x.weight  # (V, H): phi_x of every token
        zeros = ex.new_zeros(self.config.width)
        p1, p2, z1, z2 = self.prior[0], self.prior[2], self.phi_z[0], self.phi_z[2]
        w_h = torch.cat([p1.weight, self.dec_h.weight, self.gru_h.weight])  # (5H, H): the products of h
        gen = (w_h, torch.cat([p1.bias, zeros, self.gru_h.bias]))
        steps = [gen, (p2.weight, p2.bias), (z1.weight, z1.bias), (z2.weight, z2.bias)]
        steps += [(self.dec_z.weight, self.dec_z.bias), (self.gru_z.weight, ex.new_zeros(3 * self.config.width))]
        steps += [(self.dec_out.weight, self.dec_out.bias)]
        tables = (self.gru_x(ex), self.enc_x(ex))  # G (V, 3H), A (V, H): a token's parts of the GRU's input and q's
        fil = (torch.cat([self.enc_h.weight, self.gru_h.weight]), torch.cat([zeros, self.gru_h.bias]))
        return native.pack_vrnn(steps, tables, [fil, (self.enc_out.weight, self.enc_out.bias)])
