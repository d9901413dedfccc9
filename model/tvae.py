"""Transformer VAE (the seeds' Table 1 "TVAE" row): the VSSM's recipe with causal transformer stacks.

Glossary of axis letters (docs/design.md):
    B  batch      T  sequence length      C  prompt length      n  tokens in one call
    V  vocabulary size, ``EMPTY = V`` the padding token of the partial encoder
    Z  categorical latent variables per step      K  classes per latent variable
    L  layers of one network      h  attention heads      S  cache slots      d  head width

Networks, as in model/vssm.py but each a :class:`~model.transformer.TransformerNet`:
    encoder   f_enc (psi):   x_1:t    -> logits of q_psi(z_t | x_1:t)       (B, T, Z, K)
              (posterior="smoothing": the encoder attends both ways, q_psi(z_t | x_1:T); training and bounds only)
    decoder   f_dec (phi):   z_1:t    -> logits of p_phi(x_t | z_1:t)       (B, T, V)
    partial   f_par (omega): xbar_1:t -> logits of q_omega(z_t | x_1:C)     (B, T, Z, K)
with xbar = (x_1:C, EMPTY, ..., EMPTY), a uniform prior over the K^Z values of each z_t, and the
VSSM's one-pass loss (``VSSMLoss``: reconstruction, KL to the prior, the partial encoder's KL).

Resumable state: every network's key/value cache, which grows with the position (Table 1's
O(T^2): a round of n tokens at position P attends to P + n slots).  Every cache has read exactly
``position`` steps, so the position is each row's cache length:
    dec_k, dec_v   decoder cache over the latents z_1:P it decoded          (B, L_dec, h, S, d)
    par_k, par_v   partial-encoder cache over every token x_1:P as observed  (B, L_par, h, S, d)
    gen_k, gen_v   partial-encoder cache over the observed tokens, then EMPTYs up to P
    observed       whether any token was observed; if not, latents come from the prior

Block size.  The TVAE accepts ``block_size`` and ignores it: every call samples its tokens in one
parallel pass after the last observed token (the VSSM with no block size).  The VSSM's block
sampling absorbs each block's tokens into a second decoder state; for the TVAE that is a fourth
cache growing with the position, a second decoder pass per round, and a block bound and block
loss of its own (a transformer form of ``SSMNet.forward_blocks``), none of which the Table 1 row
(parallel: yes, resumable: yes, O(T^2)) needs.  Generated tokens are read by ``par`` as they are
sampled, so an append after a generation continues from them as observed; the decoder keeps the
latents it generated them from (the VSSM re-draws them; with a cache, keeping them costs nothing).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import SequenceModel, check_config
from .sampling import (
    STREAM_LATENT,
    STREAM_TOKEN,
    keyed_uniform,
    latents_from,
    per_row,
    positional_draw,
    sample_categorical,
    sequence_seeds,
)
from .state import GenState
from .transformer import TransformerNet, TransformerNetConfig
from .vssm import VSSMLoss, straight_through_gumbel

__all__ = ["TVAE", "TVAEConfig"]

POSTERIORS = ("causal", "smoothing")  # forms of the encoder's posterior (TVAEConfig.posterior)

Cache = tuple[Tensor, Tensor]


@dataclass
class TVAEConfig:
    vocab_size: int = 2  # V: tokens 0..V-1 (2 for binarised MNIST, 256 for bytes)
    max_position: int = 1024  # longest sequence: learned positions 0..max_position-1 (784 for MNIST)
    width: int = 64  # H: model width of every network
    heads: int = 4  # h: attention heads (width must divide evenly)
    mlp_ratio: int = 4  # hidden width of each block's MLP, as a multiple of H
    enc_layers: int = 1  # transformer blocks in the encoder f_enc
    dec_layers: int = 3  # transformer blocks in the decoder f_dec
    par_layers: int = 1  # transformer blocks in the partial encoder f_par
    n_latents: int = 8  # Z: categorical latent variables per step
    n_classes: int = 8  # K: classes of each latent variable
    dropout: float = 0.0  # dropout inside blocks, training only
    posterior: str = "causal"  # q_psi(z_t | .): "causal" reads x_1:t; "smoothing" attends to all of x_1:T

    def __post_init__(self) -> None:
        check_config(
            self,
            (
                "vocab_size",
                "max_position",
                "width",
                "heads",
                "mlp_ratio",
                "enc_layers",
                "dec_layers",
                "par_layers",
                "n_latents",
            ),
            {"posterior": POSTERIORS},
        )
        if self.width % self.heads:
            raise ValueError(f"width {self.width} is not divisible by heads {self.heads}")
        if not isinstance(self.n_classes, int) or self.n_classes < 2:
            raise ValueError(f"n_classes must be an integer >= 2, got {self.n_classes!r}")


class TVAE(SequenceModel):
    family = "tvae"
    parallel_sampling = True  # a block (the whole sequence by default) in one pass
    config_class = TVAEConfig
    row_block_tokens = 32768  # a bound stacks its draws into decoder passes of about this many tokens (memory)

    def __init__(self, config: TVAEConfig | None = None) -> None:
        config = config or TVAEConfig()
        super().__init__(config)
        V, ZK = config.vocab_size, config.n_latents * config.n_classes

        def net(n_in: int, n_out: int, layers: int, tokens: bool = True) -> TransformerNet:
            return TransformerNet(
                TransformerNetConfig(
                    n_in=n_in,
                    n_out=n_out,
                    max_position=config.max_position,
                    tokens=tokens,
                    width=config.width,
                    heads=config.heads,
                    layers=layers,
                    mlp_ratio=config.mlp_ratio,
                    dropout=config.dropout,
                )
            )

        self.encoder = net(V, ZK, config.enc_layers)
        self.decoder = net(ZK, V, config.dec_layers, tokens=False)
        self.partial_encoder = net(V + 1, ZK, config.par_layers)

    @property
    def empty_token(self) -> int:
        return self.config.vocab_size

    def num_parameters(self, generation_only: bool = False) -> int:
        nets = [self.decoder, self.partial_encoder] if generation_only else [self]
        return sum(p.numel() for net in nets for p in net.parameters())

    # ----- pieces ----------------------------------------------------------------------------------
    def _latent_logits(self, out: Tensor) -> Tensor:
        return out.unflatten(-1, (self.config.n_latents, self.config.n_classes))  # (B, T, Z, K)

    def _one_hot(self, z: Tensor) -> Tensor:
        return F.one_hot(z, self.config.n_classes).to(self.dtype).flatten(-2)  # (B, T, Z*K)

    def _posterior_log_probs(self, x: Tensor) -> Tensor:
        """``log q_psi(z_t | x_1:t)`` (causal) or ``log q_psi(z_t | x_1:T)`` (smoothing), ``(B, T, Z, K)``."""
        causal = self.config.posterior == "causal"
        return self._latent_logits(self.encoder(x, return_state=False, causal=causal)[0]).log_softmax(-1)

    def _partial_log_probs(self, xbar: Tensor) -> Tensor:
        """``log q_omega(z_t | xbar_1:t)`` ``(B, T, Z, K)`` of a fresh sequence ``xbar`` ``(B, T)``."""
        return self._latent_logits(self.partial_encoder(xbar, return_state=False)[0]).log_softmax(-1)

    def _kl_to_prior(self, log_q: Tensor) -> Tensor:
        """``KL(q_t || uniform) = Z log K - H(q_t)`` of every step ``(B, T)``."""
        Z, K = self.config.n_latents, self.config.n_classes
        return (log_q.exp() * log_q).sum((-1, -2)) + Z * math.log(K)

    @staticmethod
    def _xent(x_logits: Tensor, x: Tensor) -> Tensor:
        """``-log p(x_t | z_1:t)`` of every step ``(B, T)``."""
        return F.cross_entropy(x_logits.transpose(1, 2), x, reduction="none")

    # ----- training -------------------------------------------------------------------------------
    def loss(
        self,
        x: Tensor,
        *,
        kl_weight: float = 1.0,
        tau: float = 1.0,
        block_size: int | None = None,
        prompt_lengths: Tensor | None = None,
    ) -> VSSMLoss:
        """The VSSM's one-pass loss (``VSSM.loss``) for a batch ``x`` ``(B, T)``: reconstruction with
        straight-through Gumbel latents at temperature ``tau``, KL to the uniform prior (weighted by
        ``kl_weight`` in ``total``), and the partial encoder's KL to the detached posterior with
        EMPTYs after ``prompt_lengths`` (default ``C ~ Uniform{0..T}``).  ``block_size`` does not
        apply: the TVAE samples in one pass (module docstring)."""
        Bsz, T = x.shape
        if prompt_lengths is None:
            prompt_lengths = torch.randint(0, T + 1, (Bsz,), device=x.device)
        log_q = self._posterior_log_probs(x)  # (B, T, Z, K)
        z = straight_through_gumbel(log_q, tau).flatten(-2)  # (B, T, Z*K) one-hot
        x_logits = self.decoder(z, return_state=False)[0]  # (B, T, V)
        rec = self._xent(x_logits, x).sum(-1)  # (B,)
        kl = self._kl_to_prior(log_q).sum(-1)  # (B,)
        prompt = torch.arange(T, device=x.device)[None, :] < prompt_lengths[:, None]  # (B, T)
        log_w = self._partial_log_probs(torch.where(prompt, x, self.empty_token))  # (B, T, Z, K)
        q_det = log_q.detach()
        partial_kl = (q_det.exp() * (q_det - log_w)).sum((-1, -2, -3))  # (B,)
        return VSSMLoss(rec, kl, partial_kl, kl_weight)

    # ----- likelihood -----------------------------------------------------------------------------
    def _nll(self, x: Tensor, prompt_len: int = 0, samples: int = 1, seed: int = 0) -> Tensor:
        """Importance-weighted bound with ``samples`` posterior draws (1: the negative ELBO)."""
        w = self._log_weights(x, prompt_len, samples, seed)  # (S, B)
        return -(torch.logsumexp(w, 0) - math.log(samples))

    @torch.no_grad()
    def log_weights(self, x: Tensor, prompt_len: int = 0, samples: int = 1, seed: int = 0) -> Tensor:
        """Log importance weights of ``samples`` draws, ``(S, B)``: what :meth:`nll` averages."""
        return self._log_weights(self._scored(x, prompt_len), prompt_len, samples, seed)

    def _log_weights(self, x: Tensor, prompt_len: int, samples: int, seed: int) -> Tensor:
        """``log p(x_C+1:T, z | x_1:C) - log q_psi(z | x)`` of ``samples`` draws, ``(S, B)``, as ``VSSM._log_weights``.

        The model scored is the one :meth:`generate` samples from: the prompt's latents come from
        the partial encoder reading it (drawn from the model itself, so their terms cancel), the
        later ones from the partial encoder over EMPTYs, or the uniform prior without a prompt;
        the proposal after the prompt is the encoder's posterior.  Draw k of a sequence is keyed
        on (a hash of its tokens, ``seed + k``): independent of batching, so the S-draw bound is
        never above the mean of its single-draw bounds.
        """
        T, C = x.shape[1], prompt_len
        log_q = self._posterior_log_probs(x)  # (B, T, Z, K)
        if C > 0:
            t = torch.arange(T, device=x.device)
            log_w = self._partial_log_probs(torch.where(t[None, :] < C, x, self.empty_token))  # (B, T, Z, K)
        else:
            log_w = torch.full_like(log_q, -math.log(self.config.n_classes))  # the uniform prior
        row_seed = sequence_seeds(x, seed)  # (B,)
        proposal = torch.cat([log_w[:, :C], log_q[:, C:]], dim=1)  # (B, T, Z, K)
        Bsz = x.shape[0]
        weights = []
        group = max(1, self.row_block_tokens // (Bsz * T))  # draws stacked into one decoder pass
        for k0 in range(0, samples, group):
            g = min(group, samples - k0)
            keys = (row_seed[None] + torch.arange(k0, k0 + g, device=x.device)[:, None]).reshape(-1)  # (g*B,)
            z = positional_draw(proposal.repeat(g, 1, 1, 1), keys, STREAM_LATENT)  # (g*B, T, Z)
            x_logits = self.decoder(self._one_hot(z), return_state=False)[0]  # (g*B, T, V)
            log_px = -self._xent(x_logits, x.repeat(g, 1))[:, C:].sum(-1)  # (g*B,)
            zc = z[:, C:, :, None]  # (g*B, T-C, Z, 1)
            lw, lq = log_w[:, C:].repeat(g, 1, 1, 1), log_q[:, C:].repeat(g, 1, 1, 1)
            log_ratio = (lw.gather(-1, zc) - lq.gather(-1, zc)).sum((-1, -2, -3))  # (g*B,)
            weights.append((log_px + log_ratio).view(g, Bsz))
        return torch.cat(weights)  # (S, B)

    @torch.no_grad()
    def step_terms(self, x: Tensor, seed: int = 0) -> tuple[Tensor, Tensor]:
        """Where the negative ELBO of ``x`` ``(B, T)`` goes, step by step, both ``(B, T)`` nats:
        ``-log p(x_t | z_1:t)`` for one keyed posterior draw, and ``KL(q_psi(z_t | x) || uniform)``."""
        x = self._scored(x, 0)
        log_q = self._posterior_log_probs(x)  # (B, T, Z, K)
        z = positional_draw(log_q, sequence_seeds(x, seed), STREAM_LATENT)  # (B, T, Z)
        x_logits = self.decoder(self._one_hot(z), return_state=False)[0]  # (B, T, V)
        return self._xent(x_logits, x), self._kl_to_prior(log_q)

    # ----- resumable generation ---------------------------------------------------------------------
    def _empty_state(self, batch: int, seed: Tensor) -> GenState:
        dec = self.decoder.initial_state(batch, self.dtype, self.device)
        par = self.partial_encoder.initial_state(batch, self.dtype, self.device)
        return self.new_state(
            position=torch.zeros(batch, dtype=torch.long, device=self.device),
            seed=seed,
            dec_k=dec[0],
            dec_v=dec[1],
            par_k=par[0],
            par_v=par[1],
            gen_k=par[0],
            gen_v=par[1],
            observed=torch.zeros(batch, dtype=torch.bool, device=self.device),
        )

    @staticmethod
    def _cache(state: GenState, name: str) -> Cache:
        return state[f"{name}_k"], state[f"{name}_v"]

    @staticmethod
    def _caches(used: int, **caches: Cache | None) -> dict[str, Tensor]:
        """State tensors of ``caches``, each cut to ``used`` slots (the longest row's position):
        past it every slot is padding, and every cache of a state keeps the same size."""
        out = {}
        for name, cache in caches.items():
            assert cache is not None
            out[f"{name}_k"], out[f"{name}_v"] = cache[0][:, :, :, :used], cache[1][:, :, :, :used]
        return out

    def _sample_latents(
        self, logits: Tensor | None, state: GenState, n: int, temperature: float | Tensor, observed: Tensor
    ) -> Tensor:
        """Latents ``(B, n, Z)``: from ``logits`` where ``observed``, else uniform from the prior
        (:func:`sampling.latents_from`)."""
        u = keyed_uniform(state.seed, self.positions(state, n), STREAM_LATENT, self.config.n_latents, self.dtype)
        return latents_from(logits, u, self.config.n_classes, temperature, observed)

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
        """One parallel pass of each network whatever ``blocks`` (module docstring): latents from
        ``f_par`` over EMPTYs continued from ``gen`` (or the prior), tokens from one decoder pass
        continued from ``dec``; a resumable call then reads the tokens into ``par`` as observed."""
        P, observed = state.position, state["observed"]
        Bsz = state.batch_size
        gen, z_logits = None, None
        if bool(observed.any()):
            empties = torch.full((Bsz, n), self.empty_token, device=self.device)
            out, gen = self.partial_encoder(empties, self._cache(state, "gen"), P, return_state=resumable)
            z_logits = self._latent_logits(out)  # (B, n, Z, K)
        z = self._sample_latents(z_logits, state, n, temperature, observed)  # (B, n, Z)
        x_logits, dec = self.decoder(self._one_hot(z), self._cache(state, "dec"), P, return_state=resumable)
        u = keyed_uniform(state.seed, self.positions(state, n), STREAM_TOKEN, 1, self.dtype)[..., 0]  # (B, n)
        tokens = sample_categorical(x_logits, u, per_row(self.token_temperature(temperature, ratio), 1))  # (B, n)
        if scores is not None:
            scores.append(x_logits.log_softmax(-1))  # (B, n, V): p(x_t | z_1:t)
        if not resumable:
            return tokens, None
        _, par = self.partial_encoder(tokens, self._cache(state, "par"), P)
        assert par is not None
        used = int(P.max()) + n
        if gen is None:  # no row observed anything: `gen` is not read until an append resets it to `par`
            gen = par
        else:  # rows that observed nothing drew from the prior: the same holds for them
            keep = observed[:, None, None, None, None]
            gen = (
                torch.where(keep, gen[0][:, :, :, :used], par[0][:, :, :, :used]),
                torch.where(keep, gen[1][:, :, :, :used], par[1][:, :, :, :used]),
            )
        return tokens, state.evolve(position=P + n, **self._caches(used, dec=dec, par=par, gen=gen))

    def _append(self, state: GenState, tokens: Tensor) -> GenState:
        """Observed tokens: ``f_par`` reads them, their latents are drawn from its logits and
        continue the decoder, and generation continues from here (``gen := par``)."""
        P, n = state.position, tokens.shape[1]
        out, par = self.partial_encoder(tokens, self._cache(state, "par"), P)  # (B, n, Z*K)
        everyone = torch.ones_like(state["observed"])
        z = self._sample_latents(self._latent_logits(out), state, n, 1.0, everyone)  # (B, n, Z)
        _, dec = self.decoder(self._one_hot(z), self._cache(state, "dec"), P)
        used = int(P.max()) + n
        return state.evolve(position=P + n, observed=everyone, **self._caches(used, dec=dec, par=par, gen=par))
