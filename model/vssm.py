"""Variational State Space Model (Lambrechts et al., 2024): a VAE of three causal SSM stacks.

Glossary of axis letters (docs/design.md):
    B  batch      T  sequence length      C  prompt length      n  tokens in one call
    c  block size
    V  vocabulary size, ``EMPTY = V`` the padding token of the partial encoder
    Z  categorical latent variables per step      K  classes per latent variable

Networks (names from the paper):
    encoder   f_enc (psi):   x_1:t        -> logits of q_psi(z_t | x_1:t)        (B, T, Z, K)
              (posterior="smoothing" adds a backward stack: q_psi(z_t | x_1:T); training and bounds only;
               posterior="split" trains with the causal form over the prompt, the smoothing one after)
    decoder   f_dec (phi):   z_1:t        -> logits of p_phi(x_t | z_1:t)        (B, T, V)
              (decoder_tokens=True: also x_1:s, the tokens before the current block, EMPTY inside
               it: p_phi(x_t | z_1:t, x_1:s); unprompted one-pass sampling has s = 0, the paper's model;
               trained with block sampling only, where the decoder learns to read tokens)
    partial   f_par (omega): xbar_1:t     -> logits of q_omega(z_t | x_1:C)      (B, T, Z, K)
with xbar = (x_1:C, EMPTY, ..., EMPTY) and a uniform prior over the K^Z values of each z_t (with
prior_width, a block's latents also read the block's earlier ones: model/latent_prior.py).

Resumable state (one row per sequence; every network state has a fixed size; docs/design.md):
    dec       decoder state the current block is generated from   (B, L_dec, H, N)
    dec_abs   decoder state after the absorbed latents z'          (B, L_dec, H, N)
    par       partial-encoder state after x_1:P, observed          (B, L_par, H, N)
    gen       partial-encoder state after the tokens before the current block, then EMPTYs up to P
    observed  whether any token was observed; if not, latents come from the prior
    prior     with prior_width only: the latent prior's state inside the current block   (B, R)
With prior_context = F the partial encoder's outputs are the latents' logits followed by F
features the latent prior's MLP reads beside them (model/latent_prior.py)     (B, T, Z*K + F)

Block sampling (the paper's Algorithm 5, docs/design.md "Blocks"): blocks of c positions aligned to
absolute positions; a block's latents come from f_par over EMPTYs continued from ``gen``, its tokens
from one decoder pass; then its tokens are absorbed (f_par reads them, their latents are re-drawn
and advance ``dec_abs``) and the next block starts from there.  No block size is one pass after the
last observed token.  Randomness is keyed by (seed, absolute position), so one call of a + b
tokens equals a call of a then b at any fixed block size.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import native
from .base import LossOutput, SequenceModel, check_config, memo
from .latent_prior import LatentPrior
from .network import SSMNet, SSMNetConfig, needs_own_forward, walked
from .patch import PatchNet
from .sampling import (
    STREAM_ABSORB,
    STREAM_LATENT,
    STREAM_TOKEN,
    finite_temperature,
    keyed_uniform,
    keyed_uniforms,
    latents_from,
    per_row,
    positional_draw,
    row_temperatures,
    sample_categorical,
    sequence_seeds,
)
from .ssm import SHORT
from .state import GenState, StateError

__all__ = ["VSSM", "VSSMConfig", "VSSMLoss", "straight_through_gumbel"]

log = logging.getLogger(__name__)

POSTERIORS = ("causal", "smoothing", "split")  # forms of the encoder's posterior (VSSMConfig.posterior)
DEVICE_ROW_TOKENS = 8192  # rows x steps of a large call's passes off the CPU (VSSM._row_group; not measured there)
BOUND_PASS_TOKENS = 32768  # a block bound stacks its draws into decoder passes of about this many tokens (memory)
LOOKUP_MIN_CLASSES = 32  # from this many classes a latent, generation reads the decoder's input as a lookup


@dataclass
class VSSMConfig:
    vocab_size: int = 2  # V: tokens 0..V-1 (2 for binarised MNIST, 256 for bytes)
    max_position: int | None = None  # longest sequence the data has (784 for MNIST), None for text
    width: int = 64  # H: residual width of every network
    state_size: int = 32  # N: complex SSM modes per channel
    enc_layers: int = 2  # S4D blocks in the encoder f_enc
    dec_layers: int = 3  # S4D blocks in the decoder f_dec
    par_layers: int = 2  # S4D blocks in the partial encoder f_par
    n_latents: int = 8  # Z: categorical latent variables per step
    n_classes: int = 8  # K: classes of each latent variable
    dropout: float = 0.0  # dropout inside blocks, training only
    posterior: str = "causal"  # q_psi(z_t | .): "causal" reads x_1:t (paper); "smoothing" also x_t:T, backwards;
    # "split": causal for t <= C and smoothing after, C the training prompt length (VSSM.loss)
    decoder_tokens: bool = False  # f_dec also reads the tokens before the current block (EMPTY inside it)
    prior_width: int = 0  # R: a block's latents also read its earlier latents (model/latent_prior.py); 0: independent
    prior_hidden: int = 0  # M: hidden width of the latent prior's MLP; 0: R
    prior_context: int = 0  # F: features of the partial encoder the latent prior's MLP also reads; 0: none
    par_patch: int = 0  # P: the partial encoder reads P tokens a step (aligned patches: model/patch.py); 0: one
    par_period: int = 0  # its tables by column t mod this (an image row, where a patch is not one); 0: the patch

    def __post_init__(self) -> None:
        check_config(
            self,
            ("vocab_size", "width", "state_size", "enc_layers", "dec_layers", "par_layers", "n_latents"),
            {"posterior": POSTERIORS},
        )
        for name in ("prior_width", "prior_hidden", "prior_context", "par_patch", "par_period"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
        for name in ("prior_hidden", "prior_context"):
            if getattr(self, name) and not self.prior_width:
                raise ValueError(f"{name} shapes the latent prior's MLP: set prior_width too")
        if self.par_patch and self.state_size < 2:
            raise ValueError("par_patch keeps its pending patch in the state's second mode: state_size >= 2")
        if self.par_period and not 0 < self.par_patch <= self.par_period:
            raise ValueError(f"par_period indexes a patch network's tables: set par_patch, at most {self.par_period}")
        if not isinstance(self.n_classes, int) or self.n_classes < 2:
            raise ValueError(f"n_classes must be an integer >= 2, got {self.n_classes!r}")


class VSSMLoss(LossOutput):
    """The VSSM's loss: ``parts`` holds the per-sequence terms ``(B,)`` in nats, also as attributes.

    ``rec`` -log p(x | z), z ~ q_psi; ``kl`` KL(q_psi(z | x) || prior), summed over steps and
    latent variables; ``pkl`` KL(q_psi(z | x) || q_omega(z | x_1:C)), encoder side detached;
    ``nll`` the negative ELBO rec + kl, an upper bound on the NLL.  ``total`` is the mean of
    rec + kl_weight kl + pkl: both training steps of the paper in one loop.
    """

    def __init__(self, reconstruction: Tensor, kl: Tensor, partial_kl: Tensor, kl_weight: float = 1.0) -> None:
        total = (reconstruction + kl_weight * kl + partial_kl).mean()
        parts = {"nll": reconstruction + kl, "rec": reconstruction, "kl": kl, "pkl": partial_kl}
        super().__init__(total=total, parts=parts)

    @property
    def reconstruction(self) -> Tensor:
        return self.parts["rec"]

    @property
    def kl(self) -> Tensor:
        return self.parts["kl"]

    @property
    def partial_kl(self) -> Tensor:
        return self.parts["pkl"]

    @property
    def nelbo(self) -> Tensor:
        """Negative ELBO: an upper bound on the NLL."""
        return self.parts["nll"]


class VSSM(SequenceModel):
    family = "vssm"
    parallel_sampling = True  # a block (the whole sequence by default) in one pass
    config_class = VSSMConfig
    row_block_tokens = 2048  # rows x steps of one pass of a large call, per torch thread (_row_group); speed only
    gen_window = 1024  # longest parallel pass of generation (bounds memory; an MNIST image stays one pass)
    fuse_rounds = True  # rows sharing a block size run two fused passes per block (_fused_rows), not four (fuses)

    def __init__(self, config: VSSMConfig | None = None) -> None:
        config = config or VSSMConfig()
        super().__init__(config)
        V, ZK = config.vocab_size, config.n_latents * config.n_classes
        common = dict(width=config.width, state_size=config.state_size, dropout=config.dropout)
        enc = SSMNetConfig(n_in=V, n_out=ZK, layers=config.enc_layers, **common)
        self.encoder = SSMNet(enc)
        # a smoothing posterior also reads the future through a second causal stack run backwards in
        # time; only training and the likelihood bounds use the encoder, so generation is unchanged
        self.encoder_bwd = SSMNet(enc) if config.posterior != "causal" else None
        # with decoder_tokens the input is [one-hot z_t, one-hot token]: the token is x_t where x_t was
        # observed or absorbed before the current block, EMPTY where it is being drawn (_dec_in)
        dec_in = ZK + (V + 1 if config.decoder_tokens else 0)
        self.decoder = SSMNet(SSMNetConfig(n_in=dec_in, n_out=V, tokens=False, layers=config.dec_layers, **common))
        par_out = ZK + config.prior_context  # the latents' logits, then the latent prior's context features
        par = SSMNetConfig(n_in=V + 1, n_out=par_out, layers=config.par_layers, **common)
        self.partial_encoder = PatchNet(par, config.par_patch, config.par_period) if config.par_patch else SSMNet(par)
        R, M = config.prior_width, config.prior_hidden or None  # M None: as wide as R (LatentPrior)
        lp = LatentPrior(config.n_latents, config.n_classes, R, M, config.prior_context) if R else None
        self.latent_prior = lp

    @property
    def empty_token(self) -> int:
        return self.config.vocab_size

    def num_parameters(self, generation_only: bool = False) -> int:
        nets = [self.decoder, self.partial_encoder, self.latent_prior] if generation_only else [self]
        return sum(p.numel() for net in nets if net is not None for p in net.parameters())

    def _latent_logits(self, out: Tensor) -> Tensor:
        """The latents' logits ``(B, T, Z, K)`` of a network's output ``(B, T, Z*K [+ F])``."""
        Z, K = self.config.n_latents, self.config.n_classes
        return out[..., : Z * K].unflatten(-1, (Z, K))

    def _context(self, out: Tensor) -> Tensor | None:
        """The latent prior's context ``(B, T, F)`` in the partial encoder's output (None without one)."""
        if not self.config.prior_context:
            return None
        return out[..., self.config.n_latents * self.config.n_classes :]

    def _block_prior_of(self, out: Tensor) -> tuple[Tensor, Tensor | None]:
        """The partial encoder's output ``(B, n, Z*K [+ F])`` over EMPTYs, as the block prior reads it:
        the latents' logits ``(B, n, Z, K)`` and the latent prior's context ``(B, n, F)`` (or None)."""
        return self._latent_logits(out), self._context(out)

    @staticmethod
    def _prompt_mask(prompt_lengths: Tensor, T: int) -> Tensor:
        """``(B, T)``: True on each row's prompt steps, t < C."""
        return torch.arange(T, device=prompt_lengths.device)[None, :] < prompt_lengths[:, None]

    def _posterior_log_probs(self, x: Tensor, causal: Tensor | None = None) -> Tensor:
        """``log q_psi(z_t | x_1:t)`` (causal) or ``log q_psi(z_t | x_1:T)`` (smoothing), ``(B, T, Z, K)``.

        Any q gives a valid ELBO and importance-weighted bound of the same generative model; the
        smoothing form can match the true posterior more closely, since x_t+1:T depend on z_t
        through the decoder.  ``causal`` ``(B, T)``: steps that keep the causal form (the forward
        stack alone), as the "split" posterior trains its prompts (:meth:`_prompt_mask`).
        """
        logits = self.encoder(x, return_state=False)[0]  # (B, T, Z*K)
        if self.encoder_bwd is not None:
            future = self.encoder_bwd(x.flip(1), return_state=False)[0].flip(1)  # (B, T, Z*K) reads x_t:T at t
            if causal is not None:
                future = future.masked_fill(causal[..., None], 0.0)  # (B, T, Z*K)
            logits = logits + future
        return self._latent_logits(logits).log_softmax(-1)

    def _one_hot(self, z: Tensor) -> Tensor:
        return F.one_hot(z, self.config.n_classes).to(self.dtype).flatten(-2)  # (B, T, Z*K)

    def _kl_to_prior(self, log_q: Tensor) -> Tensor:
        """``KL(q_t || uniform) = Z log K - H(q_t)`` of every step ``(B, T)``, given ``log_q`` ``(B, T, Z, K)``."""
        Z, K = self.config.n_latents, self.config.n_classes
        return (log_q.exp() * log_q).sum((-1, -2)) + Z * math.log(K)

    def _prior_log_probs(self, base: Tensor, z: Tensor, c: int, context: Tensor | None = None) -> Tensor:
        """The block prior ``(B, T, Z, K)`` given its log-probabilities ``base`` ``(B, T, Z, K)``:
        ``base`` itself, or with the latent prior reading the one-hot latents ``z`` ``(B, T, Z*K)``
        in blocks of ``c`` steps from step 0 and the partial encoder's ``context`` ``(B, T, F)``
        (None: zeros; model/latent_prior.py)."""
        if self.latent_prior is None:
            return base
        return self.latent_prior.log_probs(base, z, c, context)

    def _uniform(self, like: Tensor) -> Tensor:
        """The uniform prior's log-probabilities, shaped as ``like`` ``(..., K)``."""
        return torch.full_like(like, -math.log(self.config.n_classes))

    def _dec_in(self, z: Tensor, x: Tensor | None = None) -> Tensor:
        """The decoder's input ``(B, n, I)`` from one-hot latents ``z`` ``(B, n, Z*K)`` and, for a
        model with ``decoder_tokens``, the tokens it reads ``x`` ``(B, n)`` (None: all EMPTY).

        A token is only ever read at a position the decoder is not predicting: the outputs over
        absorbed or observed tokens advance a state and are discarded (or scored only past a prompt)."""
        if not self.config.decoder_tokens:
            return z
        if x is None:  # all EMPTY, the one-hot of the last class: no one_hot (it checks its input's range)
            tok = z.new_zeros(*z.shape[:2], self.config.vocab_size + 1)  # (B, n, V+1)
            tok[..., -1] = 1.0
        else:
            tok = F.one_hot(x, self.config.vocab_size + 1).to(z.dtype)  # (B, n, V+1)
        return torch.cat([z, tok], -1)

    def _decode(
        self,
        z: Tensor,
        state: Tensor | None,
        x: Tensor | None = None,
        lengths: int | None = None,
        keep: bool = True,
        exact: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        """``self.decoder(self._dec_in(self._one_hot(z), x), state, lengths, return_state=keep)`` for
        latents ``z`` ``(B, n, Z)``, equal up to float rounding (the order of the sums).  With many
        classes a latent the decoder's linear input layer is read as what it computes on a one-hot, a
        sum of its weight's rows and its bias: the lookup an embedding is (the autoregressive families'
        inputs are lookups).  At 256 classes the one-hot matmul took five times as long; at 8 classes
        of 8 latents the lookup was twice as slow (docs/experiments/blocks.md, nineteenth session), so
        few classes, and any hook the lookup would skip, keep the one-hot.  Generation only: training
        keeps the one-hot, whose straight-through gradient it needs.  ``exact``: the lookup at any number of
        classes, whose sums a row takes in one order however many rows the call has (an append: a prompt
        appended in pieces leaves one append's state; the one-hot product's sums follow the row count where
        a step has several latents)."""
        lin = self.decoder.inp
        Z, K = self.config.n_latents, self.config.n_classes
        lookup = (K >= LOOKUP_MIN_CLASSES or exact) and isinstance(lin, nn.Linear) and lin.bias is not None
        if not lookup or needs_own_forward((self.decoder, lin)):
            return self.decoder(self._dec_in(self._one_hot(z), x), state, lengths, return_state=keep)
        wt = lin.weight.t()  # (I, H): a row per input
        h = wt[z[..., 0]] + lin.bias  # (B, n, H)
        for j in range(1, Z):
            h = h + wt[j * K + z[..., j]]
        if self.config.decoder_tokens:
            h = h + (wt[Z * K + self.empty_token] if x is None else wt[Z * K + x])
        return self.decoder.forward_from(h, state, lengths, return_state=keep)

    @staticmethod
    def _xent(x_logits: Tensor, x: Tensor) -> Tensor:
        """``-log p(x_t | .)`` of every step, ``(B, T)``, from the decoder's logits ``(B, T, V)``."""
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
        code: bool = False,
    ) -> VSSMLoss:
        """ELBO terms and the partial-posterior KL for a batch ``x`` ``(B, T)``.

        Latents use the straight-through Gumbel-softmax estimator (hard one-hot forward, soft
        gradient at temperature ``tau``).  ``prompt_lengths`` (``(B,)``, default ``C ~
        Uniform{0..T}``) sets where the partial encoder's EMPTYs begin and, for the "split"
        posterior, where its causal form gives way to the smoothing one.  ``block_size``: train
        the ELBO of block sampling with blocks of that many steps instead (:meth:`_block_loss`);
        the prompt options do not apply to it.  ``kl_weight`` scales the KL in ``total`` (warm-up).
        ``code``: block training with every latent fixed to its token's code (:meth:`_code_loss`).
        """
        if code:
            if block_size is None:
                raise ValueError("the code stage trains block sampling: give a block_size")
            return self._code_loss(x, block_size)
        if block_size is not None:
            return self._block_loss(x, block_size, tau, kl_weight)
        Bsz, T = x.shape
        if prompt_lengths is None:
            prompt_lengths = torch.randint(0, T + 1, (Bsz,), device=x.device)
        # "split": a prompt's latents follow the causal posterior, which depends on the prompt
        # alone, so the partial encoder can match it exactly; the rest follow the smoothing one
        prompt = self._prompt_mask(prompt_lengths, T)  # (B, T)
        log_q = self._posterior_log_probs(x, prompt if self.config.posterior == "split" else None)  # (B, T, Z, K)
        z = straight_through_gumbel(log_q, tau).flatten(-2)  # (B, T, Z*K) one-hot
        # the unprompted one-pass ELBO: every token the decoder reads is EMPTY (with decoder_tokens,
        # reading the prompt would score tokens it reads; prompts train the partial encoder here)
        x_logits = self.decoder(self._dec_in(z), return_state=False)[0]  # (B, T, V)
        rec = self._xent(x_logits, x).sum(-1)  # (B,)
        if self.latent_prior is None:
            kl = self._kl_to_prior(log_q).sum(-1)  # (B,)
        else:  # one block from step 0: the latent prior over the uniform base
            log_p = self._prior_log_probs(self._uniform(log_q), z, T)  # (B, T, Z, K)
            kl = (log_q.exp() * (log_q - log_p)).sum((-1, -2, -3))  # (B,)

        xbar = torch.where(prompt, x, self.empty_token)  # (B, T)
        log_w = self._latent_logits(self.partial_encoder(xbar, return_state=False)[0]).log_softmax(-1)
        q_det = log_q.detach()
        partial_kl = (q_det.exp() * (q_det - log_w)).sum((-1, -2, -3))  # (B,)
        return VSSMLoss(rec, kl, partial_kl, kl_weight)

    def _block_priors(self, x: Tensor, c: int) -> tuple[Tensor, Tensor, Tensor | None]:
        """The partial encoder's roles in block sampling with blocks of ``c`` steps:

        - ``log_obs`` ``(B, T, Z, K)``: ``log q_omega(z'_t | x_1:t)``, the latents re-drawn when tokens
          are absorbed;
        - ``log_gen`` ``(B, T, Z, K)``: the block prior, ``log q_omega(z_t | x_1:s, EMPTY_s+1:t)`` for
          t in the block starting at s, and the uniform prior in the first block (nothing observed yet);
        - ``context`` ``(B, T, F)``: the latent prior's features from the same pass, zeros in the first
          block (None without ``prior_context``).
        """
        T = x.shape[1]
        empties = torch.full_like(x, self.empty_token)  # (B, T)
        obs, gen = self.partial_encoder.forward_blocks(x, empties, c)  # (B, T, Z*K) each
        log_obs = self._latent_logits(obs).log_softmax(-1)
        first = (torch.arange(T, device=x.device) < c)[None, :, None, None]  # (1, T, 1, 1)
        log_gen = torch.where(first, -math.log(self.config.n_classes), self._latent_logits(gen).log_softmax(-1))
        context = self._context(gen)
        if context is not None:
            context = context.masked_fill(first[..., 0], 0.0)  # (B, T, F)
        return log_obs, log_gen, context

    def _block_loss(self, x: Tensor, c: int, tau: float, kl_weight: float = 1.0) -> VSSMLoss:
        """Negative ELBO of block sampling with blocks of ``c`` steps (docs/design.md, "Blocks").

        The process served: block b's latents come from the block prior (the partial encoder over
        the tokens before the block, then EMPTYs), its tokens from the decoder reading the earlier
        blocks' *absorbed* latents ``z'`` (re-drawn from the partial encoder over the tokens, as an
        append draws them) followed by the block's own.  With the posterior ``q_psi(z | x)`` as
        proposal for the block latents and ``z' ~ q_omega(z' | x)`` drawn from the model itself::

            log p_c(x) >= E[ sum_t log p(x_t | z'_1:s, z_s+1:t) - KL(q_psi(z_t | x) || block prior_t) ]

        Both ``z`` and ``z'`` use the straight-through Gumbel estimator.  ``partial_kl`` keeps the
        partial encoder's absorbed latents close to the posterior's, so that the decoder reads
        one kind of latent wherever a block starts; it is outside the bound.
        """
        T = x.shape[1]
        log_q = self._posterior_log_probs(x)  # (B, T, Z, K)
        z = straight_through_gumbel(log_q, tau).flatten(-2)  # (B, T, Z*K)
        context = None
        if c >= T:  # one block: the uniform prior everywhere, nothing is absorbed
            x_logits = self.decoder(self._dec_in(z), return_state=False)[0]  # (B, T, V)
            log_obs = self._latent_logits(self.partial_encoder(x, return_state=False)[0]).log_softmax(-1)
            log_gen = self._uniform(log_q)
        else:
            log_obs, log_gen, context = self._block_priors(x, c)
            z_abs = straight_through_gumbel(log_obs, tau).flatten(-2)  # (B, T, Z*K)
            x_logits = self.decoder.forward_blocks(self._dec_in(z_abs, x), self._dec_in(z), c)[1]  # (B, T, V)
        log_gen = self._prior_log_probs(log_gen, z, c, context)  # (B, T, Z, K)
        rec = self._xent(x_logits, x).sum(-1)  # (B,)
        kl = (log_q.exp() * (log_q - log_gen)).sum((-1, -2, -3))  # (B,)
        q_det = log_q.detach()
        partial_kl = (q_det.exp() * (q_det - log_obs)).sum((-1, -2, -3))  # (B,)
        return VSSMLoss(rec, kl, partial_kl, kl_weight)

    def token_code(self, x: Tensor) -> Tensor:
        """``(B, T, Z)``: token ``x_t`` written in base K, least significant latent first (needs V <= K^Z)."""
        Z, K = self.config.n_latents, self.config.n_classes
        if self.config.vocab_size > K**Z:
            raise ValueError(f"a code of {Z} latent(s) of {K} classes cannot hold {self.config.vocab_size} tokens")
        powers = K ** torch.arange(Z, device=x.device)  # (Z,)
        return torch.div(x[..., None], powers, rounding_mode="floor") % K

    def _code_loss(self, x: Tensor, c: int) -> VSSMLoss:
        """Block sampling's terms at one point, every latent the code of its token: ``z_t = z'_t = code(x_t)``.

        ``p_c(x)`` sums ``q_omega(z' | x) prior(z) p(x | z', z)`` over all ``z'`` and ``z``, so its
        term at this one point bounds it: ``rec + kl`` is an upper bound on the block-c NLL, with
        ``kl = -log prior(code) - log q_omega(z' = code | x)`` (no ``z'`` in one pass: there the
        second part trains through ``pkl``).  The decoder learns to read the code back, the block
        prior (with the latent prior, which reads the block's earlier codes) to predict the
        block's codes, the partial encoder to re-draw the code of what it reads, and ``pkl``
        (outside the bound) the encoder to write it.  ``vssm train --code-steps N`` starts from
        latents that carry the tokens; the ELBO takes over after N steps.  Against the plain block
        prior the code collapsed once the ELBO took over; against the latent prior it held
        (docs/experiments/blocks.md, seventeenth and eighteenth sessions).
        """
        T = x.shape[1]
        code = self.token_code(x)  # (B, T, Z)
        z = self._one_hot(code)  # (B, T, Z*K)
        log_q = self._posterior_log_probs(x)  # (B, T, Z, K)
        context = None
        if c >= T:
            x_logits = self.decoder(self._dec_in(z), return_state=False)[0]  # (B, T, V)
            log_obs = self._latent_logits(self.partial_encoder(x, return_state=False)[0]).log_softmax(-1)
            log_gen = self._uniform(log_q)
        else:
            log_obs, log_gen, context = self._block_priors(x, c)
            x_logits = self.decoder.forward_blocks(self._dec_in(z, x), self._dec_in(z), c)[1]  # (B, T, V)
        log_gen = self._prior_log_probs(log_gen, z, c, context)  # (B, T, Z, K)

        def xent(log_p: Tensor) -> Tensor:  # -log p(code) summed over steps and latents, (B,)
            return -log_p.gather(-1, code[..., None]).sum((-1, -2, -3))

        rec = self._xent(x_logits, x).sum(-1)  # (B,)
        if c >= T:
            return VSSMLoss(rec, xent(log_gen), xent(log_obs) + xent(log_q))
        return VSSMLoss(rec, xent(log_gen) + xent(log_obs), xent(log_q))

    # ----- likelihood -----------------------------------------------------------------------------
    def _nll(
        self, x: Tensor, prompt_len: int = 0, samples: int = 1, seed: int = 0, block_size: int | None = None
    ) -> Tensor:
        """Importance-weighted bound with ``samples`` posterior draws (1: the negative ELBO), of
        one-pass sampling or, with ``block_size``, of block sampling (unprompted only)."""
        if block_size is not None:
            if prompt_len:
                raise ValueError("the block-sampling bound scores whole sequences (prompt_len = 0)")
            w = self._block_log_weights(x, block_size, samples, seed)  # (S, B)
        else:
            w = self._log_weights(x, prompt_len, samples, seed)  # (S, B)
        return -(torch.logsumexp(w, 0) - math.log(samples))

    @torch.no_grad()
    def block_log_weights(self, x: Tensor, block_size: int, samples: int = 1, seed: int = 0) -> Tensor:
        """Log importance weights ``(S, B)`` of the block-sampling bound (see :meth:`_block_log_weights`)."""
        return self._block_log_weights(self._scored(x, 0), block_size, samples, seed)

    def _block_log_weights(self, x: Tensor, c: int, samples: int, seed: int) -> Tensor:
        """Log weights ``log p(x, z | z') - log q_psi(z | x)`` of block sampling, ``(S, B)``.

        ``p_c(x) = E_{z' ~ q_omega(z' | x)} E_{z ~ q_psi(z | x)} [p(x, z | z') / q_psi(z | x)]``, since
        the absorbed latents ``z'`` are drawn given the tokens alone: draw k takes ``z'`` and ``z``
        keyed on (the sequence, ``seed + k``), so the S-sample average bounds ``-log p_c(x)`` and
        tightens as S grows.  The partial encoder runs once over x; the EMPTY continuations of
        every block and the decoder's blocks each run as one batched pass (SSMNet.forward_blocks).
        """
        Bsz, T = x.shape
        if c >= T:
            return self._log_weights(x, 0, samples, seed)  # one block: the one-pass bound
        log_q = self._posterior_log_probs(x)  # (B, T, Z, K)
        log_obs, log_gen, context = self._block_priors(x, c)  # (B, T, Z, K) each, (B, T, F) or None
        row_seed = sequence_seeds(x, seed)  # (B,)
        weights = []
        group = max(1, BOUND_PASS_TOKENS // (Bsz * T))  # draws stacked into one decoder pass
        for k0 in range(0, samples, group):
            g = min(group, samples - k0)
            keys = (row_seed[None] + torch.arange(k0, k0 + g, device=x.device)[:, None]).reshape(-1)  # (g*B,)
            lq, lg = log_q.repeat(g, 1, 1, 1), log_gen.repeat(g, 1, 1, 1)  # (g*B, T, Z, K)
            z = positional_draw(lq, keys, STREAM_LATENT)  # (g*B, T, Z)
            ctx = None if context is None else context.repeat(g, 1, 1)  # (g*B, T, F)
            lg = self._prior_log_probs(lg, self._one_hot(z), c, ctx)  # (g*B, T, Z, K)
            z_abs = positional_draw(log_obs.repeat(g, 1, 1, 1), keys, STREAM_ABSORB)  # (g*B, T, Z)
            z_in, abs_in = self._dec_in(self._one_hot(z)), self._dec_in(self._one_hot(z_abs), x.repeat(g, 1))
            x_logits = self.decoder.forward_blocks(abs_in, z_in, c)[1]  # (g*B, T, V)
            log_px = -self._xent(x_logits, x.repeat(g, 1)).sum(-1)  # (g*B,)
            zi = z[..., None]  # (g*B, T, Z, 1)
            log_ratio = (lg.gather(-1, zi) - lq.gather(-1, zi)).sum((-1, -2, -3))  # (g*B,)
            weights.append((log_px + log_ratio).view(g, Bsz))
        return torch.cat(weights)  # (S, B)

    @torch.no_grad()
    def step_terms(self, x: Tensor, seed: int = 0) -> tuple[Tensor, Tensor]:
        """Where the negative ELBO of ``x`` ``(B, T)`` goes, step by step, both ``(B, T)`` nats:
        ``-log p(x_t | z_1:t)`` for one posterior draw keyed on (the sequence, ``seed``), and
        ``KL(q_psi(z_t | x) || prior_t)`` in closed form, as the training loss counts them (the prior
        uniform, or with ``prior_width`` the latent prior given the draw's latents before t)."""
        x = self._scored(x, 0)
        log_q = self._posterior_log_probs(x)  # (B, T, Z, K)
        z = positional_draw(log_q, sequence_seeds(x, seed), STREAM_LATENT)  # (B, T, Z)
        x_logits = self.decoder(self._dec_in(self._one_hot(z)), return_state=False)[0]  # (B, T, V)
        if self.latent_prior is None:
            return self._xent(x_logits, x), self._kl_to_prior(log_q)
        log_p = self._prior_log_probs(self._uniform(log_q), self._one_hot(z), x.shape[1])  # (B, T, Z, K)
        return self._xent(x_logits, x), (log_q.exp() * (log_q - log_p)).sum((-1, -2))

    @torch.no_grad()
    def log_weights(self, x: Tensor, prompt_len: int = 0, samples: int = 1, seed: int = 0) -> Tensor:
        """Log importance weights of ``samples`` draws, ``(S, B)``: what :meth:`nll` averages (see
        :meth:`_log_weights`); ``x`` and ``prompt_len`` are checked as ``nll`` checks them."""
        return self._log_weights(self._scored(x, prompt_len), prompt_len, samples, seed)

    def _log_weights(self, x: Tensor, prompt_len: int, samples: int, seed: int) -> Tensor:
        """Log importance weights ``log p(x_C+1:T, z | ...) - log q(z | x)`` of ``samples`` draws, ``(S, B)``.

        The model scored is the one :meth:`generate` samples from: latents of the prompt come
        from the partial encoder reading it, latents after it from the partial encoder over
        EMPTYs (or the uniform prior when there is no prompt).  The proposal for the latents
        after the prompt is the encoder's posterior; the prompt's latents are drawn from the
        model itself, so their terms cancel.  Draw k of a sequence is keyed on (a hash of its tokens,
        ``seed + k``): reproducible, independent of batching, different for every sequence, so the
        first k of S draws are the draws of a k-sample bound, and the bound with S samples is never
        above the mean of the S single-sample bounds (Jensen).
        """
        T = x.shape[1]
        C = prompt_len
        log_q = self._posterior_log_probs(x)  # (B, T, Z, K)
        xbar = torch.where(torch.arange(T, device=x.device)[None, :] < C, x, self.empty_token)  # (B, T)
        context = None
        if C > 0:
            log_w, context = self._block_prior_of(self.partial_encoder(xbar, return_state=False)[0])
            log_w = log_w.log_softmax(-1)  # (B, T, Z, K)
        else:
            log_w = self._uniform(log_q)  # the uniform prior
        row_seed = sequence_seeds(x, seed)  # (B,)
        proposal = torch.cat([log_w[:, :C], log_q[:, C:]], dim=1)  # (B, T, Z, K)
        weights = []
        for k in range(samples):
            z = positional_draw(proposal, row_seed + k, STREAM_LATENT)  # (B, T, Z)
            # after the prompt one block: the latent prior reads the latents drawn since C
            ctx = None if context is None else context[:, C:]  # (B, T-C, F)
            lw = self._prior_log_probs(log_w[:, C:], self._one_hot(z[:, C:]), T - C, ctx) if C < T else log_w[:, C:]
            # the decoder reads the prompt's tokens as an append absorbs them; only steps past it are scored
            x_logits = self.decoder(self._dec_in(self._one_hot(z), xbar), return_state=False)[0]  # (B, T, V)
            log_px = -self._xent(x_logits, x)[:, C:].sum(-1)  # (B,)
            zc = z[:, C:, :, None]  # (B, T-C, Z, 1)
            log_ratio = lw.gather(-1, zc) - log_q[:, C:].gather(-1, zc)  # (B, T-C, Z, 1)
            weights.append(log_px + log_ratio.sum((-1, -2, -3)))
        return torch.stack(weights)  # (S, B)

    # ----- resumable generation ---------------------------------------------------------------------
    def _empty_state(self, batch: int, seed: Tensor) -> GenState:
        par0 = self.partial_encoder.initial_state(batch)
        dec0 = self.decoder.initial_state(batch)
        return self.new_state(
            position=torch.zeros(batch, dtype=torch.long, device=self.device),
            seed=seed,
            dec=dec0,
            dec_abs=dec0,
            par=par0,
            gen=par0,
            observed=torch.zeros(batch, dtype=torch.bool, device=self.device),
            **self._block_start(batch),
        )

    def _upgrade_tensors(self, state: GenState) -> dict[str, Tensor]:
        # the four SSM networks' states; ``observed``, ``prior`` (a real recurrence) and the rest did not change
        dec, par = self.decoder.state_of_h, self.partial_encoder.state_of_h
        out = dict(state.tensors)
        for name, convert in (("dec", dec), ("dec_abs", dec), ("par", par), ("gen", par)):
            if name in out:  # (a state made before block sampling has no dec_abs: _absorbed refuses it)
                out[name] = convert(out[name])
        return out

    def _block_start(self, batch: int) -> dict[str, Tensor]:
        """The latent prior's state at a block start, ``prior`` ``(B, R)`` zeros ({} without one)."""
        return {} if self.latent_prior is None else {"prior": self.latent_prior.initial_state(batch)}

    def _draw_latents(
        self,
        logits: Tensor | None,
        state: GenState,
        n: int,
        temperature: float | Tensor,
        observed: Tensor,
        r: Tensor | None = None,
        u: Tensor | None = None,
        context: Tensor | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """A block's latents ``(B, n, Z)`` from the block prior's ``logits`` (uniform where not
        ``observed``) and, with a latent prior, from its state ``r`` ``(B, R)`` (None: a block
        start) and the partial encoder's ``context`` ``(B, n, F)`` (zeros where not ``observed``);
        returns them and the latent prior's state after them (None without one)."""
        if self.latent_prior is None:
            return self._sample_latents(logits, state, n, temperature, observed, u=u), None
        if u is None:
            u = keyed_uniform(state.seed, self.positions(state, n), STREAM_LATENT, self.config.n_latents, self.dtype)
        logits, r, context = self._prior_inputs(logits, state, observed, r, context)
        return self.latent_prior.draw(logits, r, u, temperature, context)

    def _prior_inputs(
        self, logits: Tensor | None, state: GenState, observed: Tensor, r: Tensor | None, context: Tensor | None
    ) -> tuple[Tensor | None, Tensor, Tensor | None]:
        """What the latent prior draws a block's latents from (:meth:`_draw_latents`): the block prior's
        ``logits`` ``(B, n, Z, K)`` and ``context`` ``(B, n, F)``, each zero where not ``observed`` (the uniform
        base, no context), and its state ``r`` ``(B, R)`` (None: a block start, zeros)."""
        assert self.latent_prior is not None
        _prior_state(state)  # refuses a state without one
        if logits is not None and not bool(observed.all()):
            logits = logits.masked_fill(~observed[:, None, None, None], 0.0)  # the uniform base
            if context is not None:
                context = context.masked_fill(~observed[:, None, None], 0.0)  # (B, n, F)
        r = self.latent_prior.initial_state(state.batch_size) if r is None else r
        return logits, r, context

    def _sample_latents(
        self,
        logits: Tensor | None,
        state: GenState,
        n: int,
        temperature: float | Tensor,
        observed: Tensor,
        stream: int = STREAM_LATENT,
        u: Tensor | None = None,
    ) -> Tensor:
        """Latents ``(B, n, Z)``: from ``logits`` where ``observed``, else uniform from the prior.

        ``u``: the stream's uniforms ``(B, n, Z)`` when the caller drew them already
        (:func:`sampling.latents_from` says how a prior draw is made).
        """
        if u is None:
            u = keyed_uniform(state.seed, self.positions(state, n), stream, self.config.n_latents, self.dtype)
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
        """Rows are independent, so a large call runs in blocks of rows whose activations stay in
        the CPU's cache: about ``row_block_tokens`` tokens per pass and thread (:meth:`_row_group`).  A pass
        of block sampling spans about two blocks, not the call: cutting 32 rows of a block-16 image
        into groups sized by its 784 tokens made four times the rounds.
        ``scores``: a list that receives the decoder's log-probabilities ``(B, n, V)``."""
        _check_block_state(state)
        blocks = torch.zeros_like(state.position) if blocks is None else blocks
        rows = self._row_group(min(n, self.gen_window))  # a pass is at most a window long, whatever n
        if state.batch_size > rows and not bool((blocks == 0).any()):  # every row in blocks: passes of ~2c
            rows = self._row_group(min(n, 2 * int(blocks.max()), self.gen_window))
        if state.batch_size <= rows:
            return self._generate_rows(state, n, temperature, resumable, blocks, scores, ratio)
        groups = [list(range(i, min(i + rows, state.batch_size))) for i in range(0, state.batch_size, rows)]
        return self._by_groups(state, n, temperature, resumable, blocks, groups, scores, ratio)

    def _row_group(self, steps: int) -> int:
        """Rows per group of a large call whose passes run ``steps`` steps: about ``row_block_tokens``
        rows x steps per torch thread.  Measured on an AMD EPYC (AVX-512, 1 MB of second-level cache a
        core), 32 unprompted rows, 784 and 1,024 tokens, us per row-token (docs/experiments/rounds-and-serving.md,
        twenty-fifth session): on one thread 4.4-4.6 at 1,024-2,048 (passes on the recurrence kernel,
        within ``native.max_tokens()``) against 5.3-7.3 at 4,096-8,192; on two threads, whose larger
        passes run on both cores, 3.3 at 4,096 against 3.9-4.8 at 8,192 and 4.4-4.6 at 1,024.  More threads:
        assumed, not measured (a group's activations grow with them: at 64 threads, 128 rows of a 1,024-step
        window, about 33 MB a (rows, steps, width) activation at width 64).  Off the CPU nothing was
        measured: a group keeps the size it had before, ``DEVICE_ROW_TOKENS`` rows x steps (now of the pass,
        not the call), whatever the threads."""
        if self.device.type == "cpu":
            budget = self.row_block_tokens * max(1, torch.get_num_threads())
        else:
            budget = DEVICE_ROW_TOKENS
        return max(1, budget // max(1, steps))

    def _generate_rows(
        self,
        state: GenState,
        n: int,
        temperature: float | Tensor,
        resumable: bool,
        blocks: Tensor,
        scores: list[Tensor] | None = None,
        ratio: float | Tensor = 1.0,
    ) -> tuple[Tensor, GenState | None]:
        """Block sampling (docs/design.md, "Blocks"): the call is cut at every row's block
        boundaries, blocks aligned to absolute positions (``blocks`` ``(B,)``, 0: none); each piece
        is one parallel pass for every row, and a row whose block ends with the piece absorbs it."""
        sizes = blocks.tolist()  # one host read: the shared block, and whether any row samples in blocks
        c = self._shared_block(state, sizes)
        if not c and len(sizes) > 1:
            groups = self._block_groups(state, sizes)
            if len(groups) > 1:
                return self._by_groups(state, n, temperature, resumable, blocks, groups, scores, ratio)
        fused = self._fused_rows(state, n, temperature, resumable, c, scores, ratio) if c else None
        if fused is not None:
            return fused
        # one pass in every row: one compiled call where it can (without a state to keep or scores, a latent prior's
        # piece is one already where the decoder reads no tokens: csrc/prior_piece.c, _compiled_piece)
        if not any(sizes) and (resumable or scores is not None or not self._decoder_reads_prior_only):
            whole = self._compiled_open_block(state, n, temperature, scores, ratio, keep=resumable)
            if whole is not None:
                return whole
        pieces = []
        offset = 0
        in_blocks = any(sizes)  # some row samples in blocks
        while offset < n:
            left = n - offset
            # a long piece is cut into windows: peak memory stays bounded, the tokens do not change
            if not in_blocks:  # one pass in every row: no block ends, the piece is a window (ints, no tensor op)
                m, ends = min(left, self.gen_window), None
            else:
                to_end = torch.where(blocks > 0, blocks - state.position % blocks.clamp_min(1), left)  # (B,)
                m = min(int(to_end.clamp_max(left).min()), self.gen_window)
                ends = (blocks > 0) & (to_end == m)  # (B,) rows whose block ends with this piece
            more = m < left
            # a window left for later is absorbed only where a block may end in it, or the state is kept
            keep, absorb = resumable or more, resumable or (more and in_blocks)
            tokens, state = self._piece(
                state, m, temperature, ends, keep=keep, absorb=absorb, scores=scores, ratio=ratio
            )
            pieces.append(tokens)
            offset += m
        return pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=1), state if resumable else None

    def _finite_temperatures(self, temperature: float | Tensor, ratio: float | Tensor) -> bool:
        """Whether neither the latents' temperature nor the tokens' (``temperature`` times the observation
        temperature ``ratio``: an infinite one times 0 is NaN) is NaN, which the compiled calls read otherwise
        than PyTorch's draws do (:func:`finite_temperature`)."""
        return finite_temperature(temperature) and finite_temperature(self.token_temperature(temperature, ratio))

    def _compiled_open_block(
        self,
        state: GenState,
        n: int,
        temperature: float | Tensor,
        scores: list[Tensor] | None,
        ratio: float | Tensor,
        keep: bool = True,
    ) -> tuple[Tensor, GenState | None] | None:
        """A resumable call that stays inside the block it starts in (a one-pass call of one window, or a block
        call that ends inside its first block) as the compiled rounds' block 0 left open (csrc/rounds.c,
        ``open_end`` with pieces ``[n, 0]``): the tokens and state :meth:`_piece` gives (up to float rounding), in
        one C call instead of its four passes and the small ops around them (a 64-token chunk of the bundled
        mnist-vssm: 0.65 ms against 0.95; docs/experiments/rounds-and-serving.md, thirty-fifth session).  Without
        ``keep`` (a one-pass call that keeps no state) block 0 alone, pieces ``[n]``: no absorption, and the
        state comes back None (a 784-token image of the benchmark's mnist-vssm shapes at batch 1: 2.9 ms against
        3.4 through :meth:`_piece`, forty-fifth session).  ``scores`` receives the log-probabilities of the logits
        the tokens were drawn from (the same call, and tokens, as unscored).  None where it cannot run: a NaN
        temperature, a call past a window, no compiled rounds here."""
        if not self._finite_temperatures(temperature, ratio) or n > self.gen_window:
            return None
        Bsz = state.batch_size
        limits = self._kernel_limits()
        rounds = self._settled(("rounds", n, Bsz, *limits), lambda: self._compiled_rounds(n, state))
        if rounds is None:
            return None
        temps = self._row_temps(temperature, ratio, Bsz)
        seen = self._seen(scores, Bsz, n)
        if not keep:  # block 0 alone: no absorption, no state
            tokens = rounds([n], temps, state, False, seen=seen)[0]
            self._record_seen(scores, seen)
            return tokens, None
        tokens, par, dec_abs, opened = rounds([n, 0], temps, state, True, True, seen=seen)
        self._record_seen(scores, seen)
        return tokens, self._left_open(state, n, par, dec_abs, opened)  # observed stays: no block ended

    def _seen(self, scores: list[Tensor] | None, batch: int, n: int) -> Tensor | None:
        """Where a compiled call writes the logits ``(B, n, V)`` its ``n`` tokens were drawn from (None: no scores
        wanted)."""
        return None if scores is None else torch.empty(batch, n, self.config.vocab_size, dtype=self.dtype)

    @staticmethod
    def _record_seen(scores: list[Tensor] | None, seen: Tensor | None) -> None:
        """The log-probabilities of the logits a compiled call wrote to ``seen``, recorded in ``scores`` as
        :meth:`_piece` records a pass's."""
        if scores is not None:
            assert seen is not None
            scores.append(seen.log_softmax(-1))  # (B, n, V)

    @property
    def _decoder_reads_prior_only(self) -> bool:
        """Whether a latent prior draws the latents and the decoder reads them alone (no tokens): the models the
        compiled prior piece (csrc/prior_piece.c) and patch rounds (csrc/patch_rounds.c) take."""
        return self.latent_prior is not None and not self.config.decoder_tokens

    def _row_temps(self, temperature: float | Tensor, ratio: float | Tensor, batch: int) -> tuple[Tensor, Tensor]:
        """The latents' and the tokens' temperatures ``(B,)`` float64, as the compiled rounds read them."""
        return row_temperatures(temperature, batch), row_temperatures(self.token_temperature(temperature, ratio), batch)

    def _left_open(
        self,
        state: GenState,
        n: int,
        par: Tensor,
        dec_abs: Tensor,
        opened: tuple[Tensor, Tensor, Tensor | None],
        observed: Tensor | None = None,
    ) -> GenState:
        """The state after a compiled call of ``n`` tokens that stops inside a block, as :meth:`_piece` leaves one:
        the absorbed states ``par`` and ``dec_abs``, and ``opened``, generation's states (the partial encoder's,
        the decoder's) and the latent prior's (None without one) from :func:`native._fused_rounds` or
        :func:`native._patch_rounds`; ``observed``
        where blocks ended in the call (None: as it was)."""
        gen, dec, r = opened
        rest = ({} if r is None else {"prior": r}) | ({} if observed is None else {"observed": observed})
        return state.evolve(position=state.position + n, dec=dec, dec_abs=dec_abs, par=par, gen=gen, **rest)

    def fuses(self, c: int) -> bool:
        """Whether rounds of block size ``c`` may run fused (two passes of ``2c`` steps, not four of ``c``):
        compiled where they can be (csrc/rounds.c), else in PyTorch where that pays (:meth:`_fuses_in_torch`)."""
        if self.fuse_rounds and c > 0 and c == self.config.par_patch:  # a patch's rounds: compiled where they can be
            return True
        return self.fuse_rounds and c > 0 and 2 * c <= self.gen_window

    def _fuses_in_torch(self, c: int) -> bool:
        """Whether fused rounds of block size ``c`` beat four passes a block where they run in PyTorch
        (:meth:`_fused_loop`, when the compiled rounds cannot take them)."""
        # where c fits SHORT and 2c does not, fused passes would leave the short path that four
        # passes take: one thread, blocks 40-64, batches 1-32, four passes took 0.49-0.88 of the
        # fused time (one tie at 1.06); past SHORT both are long and fusing wins, 1.23-1.57x at
        # blocks 112 and 196 (docs/experiments/rounds-and-serving.md, fourteenth session).  The
        # compiled rounds have no such step: there blocks 33-64 fuse too (thirty-sixth session)
        return c == self.config.par_patch or not c <= SHORT < 2 * c

    def _shared_block(self, state: GenState, sizes: list[int]) -> int:
        """The block size every row shares (``sizes``: the rows' block sizes, 0 for one pass), at the same
        place (:meth:`_place`), if the fused path can run it; else 0."""
        c = sizes[0]
        if not self.fuses(c):
            return 0
        if len(sizes) == 1:  # a lone row: nothing to compare
            return c
        if any(b != c for b in sizes):
            return 0
        places = {self._place(c, p) for p in state.position_list}
        return c if len(places) == 1 else 0

    def _place(self, c: int, position: int) -> tuple[int, int]:
        """Where a row at ``position`` stands for fused rounds of block size ``c``: its phase in the block and,
        for a partial encoder that reads patches, in its patch where blocks are not whole patches (the compiled
        patch rounds step the network where a patch ends, for every row at once: csrc/patch_rounds.c)."""
        P = self.config.par_patch
        return position % c, position % P if P and c % P else 0

    def _block_groups(self, state: GenState, sizes: list[int]) -> list[list[int]]:
        """The rows of a batch that shares no fused block (:meth:`_shared_block`), grouped so that each group does:
        by block size and place (:meth:`_place`); rows in one pass in a group of their own, and rows whose blocks
        do not fuse by block size and phase (the piece loop then cuts them where they would be cut alone)."""
        groups: dict[tuple[int, ...], list[int]] = {}
        for row, (c, p) in enumerate(zip(sizes, state.position_list, strict=True)):
            key = (c, *self._place(c, p)) if self.fuses(c) else (-1, c, p % c) if c else (0,)
            groups.setdefault(key, []).append(row)
        return list(groups.values())

    def _by_groups(
        self,
        state: GenState,
        n: int,
        temperature: float | Tensor,
        resumable: bool,
        blocks: Tensor,
        groups: list[list[int]],
        scores: list[Tensor] | None,
        ratio: float | Tensor,
    ) -> tuple[Tensor, GenState | None]:
        """:meth:`_generate_rows` a group of rows at a time, the rows put back in their order: a large call's
        blocks of rows (:meth:`_generate`), or a batch's rows by block size and place (:meth:`_block_groups`).
        Rows are independent (randomness keyed by seed and position, blocks aligned to absolute positions), so each
        gets what it gets alone, and each group of a batch runs fused, compiled where it can be: a server's batch
        of sessions in 64-token chunks meets them at different places in their blocks, which
        otherwise went to the piece loop in PyTorch, block by block for every row (8 such sessions of
        mnist-vssm-prior at block 28: 122 ms batched against 3.2 ms one at a time; docs/experiments/
        rounds-and-serving.md, thirty-eighth session)."""
        per_row = isinstance(temperature, Tensor) and temperature.ndim == 1
        ratio_rows = isinstance(ratio, Tensor) and ratio.ndim == 1
        parts, part_scores = [], []
        for rows in groups:
            # a group of neighbouring rows (a lone row always) is a view of the batch's tensors, another a gather:
            # 8 rows in 7 groups took 0.49 ms of gathers, 0.18 of views and gathers (AMD EPYC, one thread)
            ix: slice | Tensor = (
                slice(rows[0], rows[-1] + 1)
                if rows == list(range(rows[0], rows[-1] + 1))
                else torch.tensor(rows, device=blocks.device)
            )
            temp = temperature[ix] if per_row else temperature  # type: ignore[index]
            r = ratio[ix] if ratio_rows else ratio  # type: ignore[index]
            got: list[Tensor] | None = None if scores is None else []
            parts.append(self._generate_rows(state.rows(ix), n, temp, resumable, blocks[ix], got, r))
            part_scores.append(got)
        runs = _runs(groups)
        tokens = _put_back([t for t, _ in parts], runs)  # (B, n)
        if scores is not None:
            scores.append(_put_back([torch.cat(g, 1) for g in part_scores if g is not None], runs))  # (B, n, V)
        if not resumable:
            return tokens, None
        first = parts[0][1]
        assert first is not None
        merged = {k: _put_back([s[k] for _, s in parts if s is not None], runs) for k in first.tensors}
        return tokens, first.evolve(**merged)

    def _fused_rows(
        self,
        state: GenState,
        n: int,
        temperature: float | Tensor,
        resumable: bool,
        c: int,
        scores: list[Tensor] | None = None,
        ratio: float | Tensor = 1.0,
    ) -> tuple[Tensor, GenState | None] | None:
        """Block sampling when every row has block size ``c`` and the same phase: the same tokens
        and state as :meth:`_piece` block by block (up to float rounding), in half the passes.

        A block's absorption and the next block's generation read the same states, so they share
        passes: f_par over ``[block i's tokens, block i+1's EMPTYs]`` from ``par`` gives the
        absorbed latents' logits, the next block's latent logits and (at the boundary) the next
        ``par``; f_dec over ``[z'_i, z_i+1]`` from ``dec_abs`` gives block i+1's token logits and the
        next ``dec_abs`` (docs/design.md, "Blocks").  A round is two passes of ``2c`` steps instead
        of four of ``c``, and each call draws its uniforms once, not per block.  None: nothing to fuse, or
        blocks that fuse only compiled (:meth:`_fuses_in_torch`) where the compiled rounds cannot run.
        """
        p0 = state.position_list[0]
        first = min(c - p0 % c, n)
        ms = [first] + [c] * ((n - first) // c) + ([(n - first) % c] if (n - first) % c else [])  # piece lengths
        last_ends = (p0 + n) % c == 0
        # pieces run before a part-block kept mid-block goes to _piece (the compiled rounds take it as well)
        fused = len(ms) if not resumable or last_ends else len(ms) - 1
        P = self.config.par_patch  # a partial encoder that reads patches (0: tokens)
        if fused == 0 and not P:  # a part-block kept mid-block: block 0 left open, compiled where it can be
            return self._compiled_open_block(state, n, temperature, scores, ratio)
        span = sum(ms[:fused])
        Bsz = state.batch_size
        temps = self._row_temps(temperature, ratio, Bsz)
        got, opened = None, None
        open_end = resumable and not last_ends  # the call stops inside a block: the compiled calls draw it too
        if self._finite_temperatures(temperature, ratio):  # every block, the first too, in one call
            limits = self._kernel_limits()  # beside the modules, what the checks read: in the keys
            if P:  # csrc/patch_rounds.c, for blocks of any size: the last block absorbed there too where the state
                # is kept, and a block the call stops inside drawn there as well (block 0 too), with generation's
                # states after it
                key = ("patch rounds", c, Bsz, *limits)
                patch = self._settled(key, lambda: self._compiled_patch_rounds(c, state))
                span_c = n if open_end else span  # the call's tokens, the block it stops inside included
                seen = None if patch is None else self._seen(scores, Bsz, span_c)
                done = None if patch is None else patch(p0 % c, span_c, temps, state, resumable, open_end, seen)
                if done is not None:
                    self._record_seen(scores, seen)
                    got, opened = done[:3], done[3]
            else:  # csrc/rounds.c: the last block absorbed there too where the state is kept, and a block the
                # call stops inside drawn there as well, with generation's states after it (else _piece's passes
                # and small ops: a session in 64-token chunks at block 28 took 2.5 times its compiled rounds'
                # time, docs/experiments/rounds-and-serving.md, thirty-fifth session)
                pieces = (ms if open_end else ms[:fused]) + ([0] if resumable else [])
                T = max([pieces[0], *(a + b for a, b in itertools.pairwise(pieces))])  # the longest pass
                rounds = self._settled(("rounds", T, Bsz, *limits), lambda: self._compiled_rounds(T, state))
                if rounds is not None:
                    seen = self._seen(scores, Bsz, sum(pieces))
                    out_tokens, par, dec_abs, opened = rounds(pieces, temps, state, resumable, open_end, seen)
                    self._record_seen(scores, seen)
                    got = (out_tokens, par, dec_abs)
        if got is None and (fused == 0 or not self._fuses_in_torch(c)):  # block 0 left open, or blocks that fuse
            return None  # only compiled: _piece, block by block
        if opened is not None:  # the whole call, the block it stops inside as _piece leaves one
            out_tokens, par, dec_abs = got  # type: ignore[misc]
            ended = torch.ones_like(state["observed"]) if fused else None  # blocks ended: every row has observed
            return out_tokens, self._left_open(state, n, par, dec_abs, opened, ended)
        if got is not None:  # where the state is kept, the compiled calls absorbed the last block too
            out_tokens, par, dec_abs = got
        else:
            positions = self.positions(state, span)  # (B, span)
            streams = (STREAM_LATENT, STREAM_ABSORB, STREAM_TOKEN)
            u = keyed_uniforms(state.seed, positions, streams, self.config.n_latents, self.dtype)  # (B, 3, span, Z)
            u_lat, u_abs, u_tok = u[:, 0], u[:, 1], u[:, 2, :, 0]  # (B, span, Z) twice, (B, span)
            pieces_out, par, dec_abs = self._fused_loop(
                state, ms[:fused], (u_lat, u_abs, u_tok), temperature, ratio, scores
            )
            out_tokens = torch.cat(pieces_out, 1)  # (B, span)
            if resumable:  # absorb the last fused block as an append does (unkept, every block is fused)
                start = span - ms[fused - 1]  # where the last fused block starts
                last = out_tokens[:, start:]  # (B, m)
                out, par = self.partial_encoder(last, par)  # (B, m, Z*K)
                z_abs = sample_categorical(self._latent_logits(out), u_abs[:, start:], 1.0)  # (B, m, Z)
                _, dec_abs = self._decode(z_abs, dec_abs, last)
        if not resumable:
            return out_tokens, None
        # the state after the fused blocks; a part-block left goes to _piece (where the compiled rounds did not run)
        everyone = torch.ones_like(state["observed"])
        state = state.evolve(
            position=state.position + span,
            dec=dec_abs,
            dec_abs=dec_abs,
            par=par,
            gen=par,
            observed=everyone,
            **self._block_start(Bsz),
        )
        if fused == len(ms):
            return out_tokens, state
        rest, state = self._piece(
            state, n - span, temperature, None, keep=True, absorb=True, scores=scores, ratio=ratio
        )
        return torch.cat([out_tokens, rest], 1), state

    def _fused_loop(
        self,
        state: GenState,
        ms: list[int],
        u: tuple[Tensor, Tensor, Tensor],
        temperature: float | Tensor,
        ratio: float | Tensor,
        scores: list[Tensor] | None,
    ) -> tuple[list[Tensor], Tensor, Tensor]:
        """:meth:`_fused_rows`'s blocks ``ms`` in PyTorch, where no compiled call takes them (a NaN temperature,
        gradients, off the CPU, no kernels, a hook, passes past the kernel's limit, or a state the patch rounds
        refuse), but for blocks that fuse only compiled (:meth:`_fuses_in_torch`: those go block by
        block): the first piece, then the rounds.  Returns the tokens (a list of pieces), ``par`` and ``dec_abs``
        before the last block."""
        u_lat, u_abs, u_tok = u  # (B, span, Z) twice, (B, span)
        Bsz = state.batch_size
        temp, temp_tok = per_row(temperature, 2), per_row(self.token_temperature(temperature, ratio), 1)
        # the first piece: latents from f_par over EMPTYs where a token was observed, else the prior
        m, observed, logits, context = ms[0], state["observed"], None, None
        if bool(observed.any()):
            empties = torch.full((Bsz, m), self.empty_token, device=self.device)
            logits, context = self._block_prior_of(self.partial_encoder(empties, state["gen"], return_state=False)[0])
        r = state.tensors.get("prior")
        z, _ = self._draw_latents(logits, state, m, temperature, observed, r, u_lat[:, :m], context)  # (B, m, Z)
        x_logits = self._decode(z, state["dec"], keep=False)[0]  # (B, m, V)
        tokens = [sample_categorical(x_logits, u_tok[:, :m], temp_tok)]  # (B, m) each
        if scores is not None:
            scores.append(x_logits.log_softmax(-1))
        par, dec_abs = state["par"], state["dec_abs"]
        everyone = torch.ones_like(observed)
        start = 0
        for i in range(1, len(ms)):
            m, nxt = ms[i - 1], ms[i]
            here, there = slice(start, start + m), slice(start + m, start + m + nxt)
            x_in = torch.cat([tokens[-1], torch.full((Bsz, nxt), self.empty_token, device=self.device)], 1)
            out, par = self.partial_encoder(x_in, par, lengths=m)  # (B, m + nxt, Z*K); par after the block
            logits = self._latent_logits(out)  # (B, m + nxt, Z, K)
            z_abs = sample_categorical(logits[:, :m], u_abs[:, here], 1.0)  # (B, m, Z)
            if self.latent_prior is None:
                z = sample_categorical(logits[:, m:], u_lat[:, there], temp)  # (B, nxt, Z)
            else:  # a new block: the latent prior from its start
                ctx, u_there = self._context(out[:, m:]), u_lat[:, there]  # (B, nxt, F) or None, (B, nxt, Z)
                z, _ = self._draw_latents(logits[:, m:], state, nxt, temperature, everyone, u=u_there, context=ctx)
            x_logits, dec_abs = self._decode(torch.cat([z_abs, z], 1), dec_abs, x_in, lengths=m)  # (B, m + nxt, V)
            tokens.append(sample_categorical(x_logits[:, m:], u_tok[:, there], temp_tok))
            if scores is not None:
                scores.append(x_logits[:, m:].log_softmax(-1))
            start += m
        return tokens, par, dec_abs

    def _compiled_rounds(
        self, T: int, state: GenState
    ) -> Callable[..., tuple[Tensor, Tensor | None, Tensor | None, tuple | None]] | None:
        """:meth:`_fused_rows`'s blocks and :meth:`_compiled_open_block`'s one (``ms`` a call's argument, a last 0: the
        last block absorbed too; with ``open_end`` that block is one the call stops inside, and generation's states
        after it come back too: :func:`native._fused_rounds`) as one compiled call (csrc/rounds.c), block 0
        included, where both networks can run their passes of up to ``T`` steps on the kernel on the CPU (batch x
        steps within ``native.max_tokens()``; model/native.py); else None (the loop in PyTorch, whose passes take
        the same kernel within that limit: SSMNet.forward_from)."""
        run = native.fused_rounds()
        if run is None or self.device.type != "cpu" or torch.is_grad_enabled():
            return None
        par_net, dec_net = self._modules["partial_encoder"], self._modules["decoder"]  # (no Module.__getattr__)
        if isinstance(par_net, PatchNet):  # its rounds: _compiled_patch_rounds
            return None
        probe = self._probe(state.batch_size, T)  # (B, T, H): what a pass reads
        if not (par_net._native_ok(probe, T, state["par"]) and dec_net._native_ok(probe, T, state["dec_abs"])):
            return None
        emb, lin = par_net.inp, dec_net.inp
        if not (isinstance(emb, nn.Embedding) and isinstance(lin, nn.Linear) and lin.bias is not None):
            return None
        if self.latent_prior is not None and not self.latent_prior._native_ok(probe):
            return None
        weights = self._round_weights()
        streams = (STREAM_LATENT, STREAM_ABSORB, STREAM_TOKEN)

        def rounds(
            ms: list[int],
            temps: tuple[Tensor, Tensor],
            state: GenState,
            keep: bool,
            open_end: bool = False,
            seen: Tensor | None = None,
        ) -> tuple[Tensor, Tensor | None, Tensor | None, tuple[Tensor, Tensor, Tensor | None] | None]:
            s = state.tensors
            r0 = None if self.latent_prior is None else _prior_state(state)
            states = (s["par"], s["gen"], s["dec_abs"], s["dec"], s["observed"], r0)
            return run(ms, (state.seed, state.position, streams), temps, states, weights, keep, open_end, seen=seen)

        return rounds

    def _kernel_limits(self) -> tuple[int, int]:
        """The partial encoder's and the decoder's :meth:`SSMNet.kernel_limit` (a patch encoder's inner network):
        what the compiled rounds' checks read beside the modules, in their kept checks' keys."""
        par, dec = self._modules["partial_encoder"], self._modules["decoder"]  # (no Module.__getattr__)
        inner = par._modules["net"] if isinstance(par, PatchNet) else par
        return inner.kernel_limit(), dec.kernel_limit()  # type: ignore[union-attr,operator]

    def _probe(self, batch: int, steps: int) -> Tensor:
        """An empty ``(B, T, H)`` tensor whose shape, dtype and device stand for a pass's input in the checks of
        the compiled calls (read, never written): kept per shape, an op less per call."""
        key = (batch, steps, self.dtype, self.device)
        width, dtype, device = self.config.width, self.dtype, self.device
        make = lambda: torch.empty(batch, steps, width, dtype=dtype, device=device)  # noqa: E731
        return memo(self.__dict__.setdefault("_probe_cache", {}), key, make)

    def _round_weights(self) -> native.RoundWeights:
        """The weights the compiled rounds read (:meth:`_laid_out`)."""
        par_net, dec_net, lp, cfg = self.partial_encoder, self.decoder, self.latent_prior, self.config

        def build() -> native.RoundWeights:
            prior = None
            if lp is not None:
                G = None if lp.context is None else lp.context.weight  # (M, F)
                prior = (lp._packed(), lp.width, lp.hidden, lp.mlp[0].eps, G)
            par = (par_net._packed(), par_net.norm.eps, par_net.inp.weight, cfg.par_layers)
            lin = dec_net.inp
            dec = (dec_net._packed(), dec_net.norm.eps, lin.weight, lin.bias, cfg.dec_layers, cfg.decoder_tokens)
            shape = (cfg.state_size, cfg.vocab_size, cfg.n_latents, cfg.n_classes)
            return native.round_weights(par, dec, prior, shape)

        eps = (par_net.norm.eps, dec_net.norm.eps, None if lp is None else lp.mlp[0].eps)
        return self._laid_out("_round_weights_cache", eps, build)

    def _compiled_patch_rounds(
        self, c: int, state: GenState
    ) -> Callable[..., tuple[Tensor, Tensor, Tensor, tuple[Tensor, Tensor, Tensor] | None] | None] | None:
        """:meth:`_fused_rows`'s blocks (block size ``c``) in one compiled call for a partial encoder that reads a
        patch a step (csrc/patch_rounds.c), the first block too: blocks of any size (the call may start or stop
        inside one, blocks and patches need not align), where the decoder reads latents only and a latent prior
        draws them, a round is a network step a patch the block ends (and one a later patch of the block drawn, over
        EMPTYs), the decoder's passes and the prior's draws.  None: not this model, or not these blocks.  The call
        itself returns None where the state's pending patch is not where the call starts (then nothing was
        drawn)."""
        run, lp, net = native.patch_rounds(), self.latent_prior, self.partial_encoder
        if run is None or not self._decoder_reads_prior_only or not isinstance(net, PatchNet):
            return None
        assert lp is not None
        if self.device.type != "cpu" or torch.is_grad_enabled():
            return None
        if needs_own_forward(walked(net)):
            return None
        inner, dec_net, lin = net.net, self.decoder, self.decoder.inp
        # whether the kernel can run both networks at all: a step's probe (B, 1, H), not the length
        # limit of one pass against PyTorch's matrices (S4D.scan_max_tokens), since the alternative to
        # this call is the loop of small passes in PyTorch, not one long pass
        probe = self._probe(state.batch_size, 1)
        if not (inner._native_ok(probe, 1, state["par"]) and dec_net._native_ok(probe, 1, state["dec_abs"])):
            return None
        if not (lp._native_ok(probe) and isinstance(lin, nn.Linear) and lin.bias is not None):
            return None
        weights = self._patch_weights(net)
        streams = (STREAM_LATENT, STREAM_ABSORB, STREAM_TOKEN)

        def rounds(
            phase: int,
            span: int,
            temps: tuple[Tensor, Tensor],
            state: GenState,
            keep: bool,
            open_end: bool = False,
            seen: Tensor | None = None,
        ) -> tuple[Tensor, Tensor, Tensor, tuple[Tensor, Tensor, Tensor] | None] | None:
            """``keep``: the absorbed states after the span's last block (where it ends at a block boundary);
            with ``open_end`` (the span stops inside its last block) after that part block, and generation's
            states after it; ``seen``: the logits the tokens were drawn from (:func:`native._patch_rounds`)."""
            s = state.tensors
            n_rounds = max(0, -(-(span - (c - phase)) // c)) + keep  # blocks after block 0, the absorbing round
            states = (s["par"], s["gen"], s["dec_abs"], s["dec"], s["observed"], _prior_state(state))
            keys = (state.seed, state.position, streams)
            got = run(phase, span, keys, temps, states, weights, keep, open_end, block=c, seen=seen)
            if got is None:
                return None
            tokens, par, dec_abs, opened, skipped = got
            log.debug("patch rounds: %d of %d skipped the pass over absorbed latents", skipped, n_rounds)
            return tokens, s["par"] if par is None else par, s["dec_abs"] if dec_abs is None else dec_abs, opened

        return rounds

    def _patch_weights(self, net: PatchNet) -> native.PatchWeights:
        """The weights the compiled patch rounds read (:meth:`_laid_out`)."""
        inner, dec_net, lp, cfg = net.net, self.decoder, self.latent_prior, self.config
        assert lp is not None

        def build() -> native.PatchWeights:
            lin = dec_net.inp
            G = None if lp.context is None else lp.context.weight  # (M, F)
            table, bias = net.table()  # D (Q, V+1, H), u_0 (H,): an EMPTY adds nothing
            par = (inner._packed(), inner.norm.eps, table, bias, net.token_out, cfg.par_layers, net.patch)
            dec = (dec_net._packed(), dec_net.norm.eps, lin.weight, lin.bias, cfg.dec_layers)
            prior = (lp._packed(), lp.width, lp.hidden, lp.mlp[0].eps, G)
            shape = (cfg.state_size, cfg.vocab_size, cfg.n_latents, cfg.n_classes)
            return native.patch_weights(par, dec, prior, shape)

        return self._laid_out("_patch_weights_cache", (inner.norm.eps, dec_net.norm.eps, lp.mlp[0].eps), build)

    def _piece(
        self,
        state: GenState,
        m: int,
        temperature: float | Tensor,
        ends: Tensor | None,
        keep: bool,
        absorb: bool,
        scores: list[Tensor] | None = None,
        ratio: float | Tensor = 1.0,
    ) -> tuple[Tensor, GenState]:
        """``m`` tokens ``(B, m)`` inside every row's current block, in one parallel pass, and the
        next state: ``keep=False`` returns the state unchanged; ``absorb=False`` (no block boundary
        can follow) advances only what generation continues from (``gen``, ``dec``).  ``ends`` ``(B,)``:
        the rows whose block ends with the piece (None: none does).  ``scores`` receives the decoder's
        log-probabilities of the piece ``(B, m, V)`` given its latents."""
        Bsz = state.batch_size
        observed = state["observed"]
        # 1. latents: f_par over EMPTYs from `gen` where a token was observed, else the uniform prior.
        gen, z_logits, context = state["gen"], None, None
        if bool(observed.any()):
            empties = torch.full((Bsz, m), self.empty_token, device=self.device)
            out, gen_next = self.partial_encoder(empties, gen, return_state=keep)
            z_logits, context = self._block_prior_of(out)  # (B, m, Z, K), (B, m, F) or None
            if keep:
                gen = torch.where(observed[:, None, None, None], gen_next, gen)
        r = state.tensors.get("prior")
        compiled = None
        if scores is None and self._finite_temperatures(temperature, ratio):  # per call; the rest kept (_settled)
            key = ("piece", Bsz, m, self.decoder.kernel_limit())
            compiled = self._settled(key, lambda: self._compiled_piece(state, m))
        if compiled is not None:  # 1. and 2. in one call (csrc/prior_piece.c)
            tokens, r, dec = compiled(z_logits, context, state, m, temperature, ratio, r, keep)
        else:
            z, r = self._draw_latents(z_logits, state, m, temperature, observed, r, context=context)  # (B, m, Z)
            # 2. one parallel decoder pass over the latents from the block's provisional state, then the tokens.
            x_logits, dec = self._decode(z, state["dec"], keep=keep)  # (B, m, V)
            u = keyed_uniform(state.seed, self.positions(state, m), STREAM_TOKEN, 1, self.dtype)[..., 0]
            tokens = sample_categorical(x_logits, u, per_row(self.token_temperature(temperature, ratio), 1))  # (B, m)
            if scores is not None:
                scores.append(x_logits.log_softmax(-1))
        prior = {} if r is None else {"prior": r}  # the latent prior's state after the piece
        if not keep:
            return tokens, state
        if not absorb:
            return tokens, state.evolve(position=state.position + m, dec=dec, gen=gen, **prior)
        # 3. absorb as an append does: the partial encoder reads the tokens as observed, their latents
        # are re-drawn from its logits and advance the absorbed decoder state.
        out, par = self.partial_encoder(tokens, state["par"])  # (B, m, Z*K)
        everyone = torch.ones_like(observed)
        z_abs = self._sample_latents(self._latent_logits(out), state, m, 1.0, everyone, STREAM_ABSORB)  # (B, m, Z)
        _, dec_abs = self._decode(z_abs, state["dec_abs"], tokens)
        # 4. where a block ends, the next block starts from what was absorbed.
        if ends is None:  # no row's: each goes on from where generation left it
            nxt = {"dec": dec, "dec_abs": dec_abs, "par": par, "gen": gen, **prior}
            return tokens, state.evolve(position=state.position + m, **nxt)
        e = ends[:, None, None, None]
        if r is not None:  # where a block ends the next starts the latent prior anew
            prior["prior"] = r.masked_fill(ends[:, None], 0.0)
        return tokens, state.evolve(
            position=state.position + m,
            dec=torch.where(e, dec_abs, dec),
            dec_abs=dec_abs,
            par=par,
            gen=torch.where(e, par, gen),
            observed=observed | ends,
            **prior,
        )

    def _compiled_piece(self, state: GenState, m: int) -> Callable[..., tuple[Tensor, Tensor, Tensor | None]] | None:
        """Steps 1 and 2 of :meth:`_piece` (``m`` steps, no scores wanted, a finite temperature), the latents
        through the latent prior, one decoder pass over them and the tokens, in one compiled call
        (csrc/prior_piece.c): where a latent prior draws the latents, the decoder reads them only, and both
        the prior's draws and the decoder's pass would run compiled on their own.  None: not this model, or
        not this call."""
        run, lp, cfg, dec_net = native.prior_piece(), self.latent_prior, self.config, self.decoder
        if run is None or not self._decoder_reads_prior_only:
            return None
        assert lp is not None
        if self.device.type != "cpu" or torch.is_grad_enabled():
            return None
        lin = dec_net.inp
        if not (isinstance(lin, nn.Linear) and lin.bias is not None):
            return None
        probe = torch.empty(state.batch_size, m, cfg.width, dtype=self.dtype)  # (B, m, H): what the pass reads
        if not (dec_net._native_ok(probe, m, state["dec"]) and lp._native_ok(probe)):
            return None
        weights = self._piece_weights()
        streams = (STREAM_LATENT, STREAM_TOKEN)

        def piece(
            z_logits: Tensor | None,
            context: Tensor | None,
            state: GenState,
            m: int,
            temperature: float | Tensor,
            ratio: float | Tensor,
            r: Tensor | None,
            keep: bool,
        ) -> tuple[Tensor, Tensor, Tensor | None]:
            B = state.batch_size
            base, r, context = self._prior_inputs(z_logits, state, state["observed"], r, context)
            block_prior = (None if base is None else base.flatten(-2), lp._pre(context))  # (B, m, Z K), (B, m, M)
            temps = self._row_temps(temperature, ratio, B)
            keys = (state.seed, state.position, streams)
            return run(m, keys, temps, block_prior, (r, state["dec"]), weights, keep)

        return piece

    def _piece_weights(self) -> native.PieceWeights:
        """The weights the compiled piece reads (:meth:`_laid_out`)."""
        dec_net, lp, cfg = self.decoder, self.latent_prior, self.config
        assert lp is not None

        def build() -> native.PieceWeights:
            lin = dec_net.inp
            prior = (lp._packed(), lp.width, lp.hidden, lp.mlp[0].eps)
            dec = (dec_net._packed(), dec_net.norm.eps, lin.weight, lin.bias, cfg.dec_layers)
            return native.piece_weights(prior, dec, (cfg.state_size, cfg.vocab_size, cfg.n_latents, cfg.n_classes))

        return self._laid_out("_piece_weights_cache", (dec_net.norm.eps, lp.mlp[0].eps), build)

    def _append(self, state: GenState, tokens: Tensor) -> GenState:
        """Observed tokens end the current block: they continue the absorbed decoder state."""
        _check_block_state(state)
        n = tokens.shape[1]
        out, par = self.partial_encoder(tokens, state["par"])  # (B, n, Z*K)
        z = self._sample_latents(self._latent_logits(out), state, n, 1.0, torch.ones_like(state["observed"]))
        _, dec = self._decode(z, state["dec_abs"], tokens, exact=True)
        return state.evolve(
            position=state.position + n,
            dec=dec,
            dec_abs=dec,
            par=par,
            gen=par,
            observed=torch.ones_like(state["observed"]),
            **self._block_start(state.batch_size),
        )


def _runs(groups: list[list[int]]) -> list[tuple[int, int, int]]:
    """The batch's rows, in order, as runs ``(g, j, k)`` of groups' rows: rows ``j .. j+k-1`` of group ``g``
    (``groups[g]`` its rows in the batch)."""
    where = {row: (g, j) for g, rows in enumerate(groups) for j, row in enumerate(rows)}
    runs: list[tuple[int, int, int]] = []
    for row in range(len(where)):
        g, j = where[row]
        if runs and runs[-1][0] == g and runs[-1][1] + runs[-1][2] == j:  # the next row of the same group
            runs[-1] = (g, runs[-1][1], runs[-1][2] + 1)
        else:
            runs.append((g, j, 1))
    return runs


def _put_back(parts: list[Tensor], runs: list[tuple[int, int, int]]) -> Tensor:
    """One tensor of every row from the groups' ``parts`` ``(b_g, ...)``, one concatenation of the runs of
    :func:`_runs`: 8 rows in 7 groups took 0.25 ms a state's tensors, 0.33 written by ``index_copy_`` into a new
    tensor, 1.1 concatenated and gathered (AMD EPYC, one thread)."""
    pieces = [parts[g] if k == len(parts[g]) else parts[g][j : j + k] for g, j, k in runs]
    return pieces[0] if len(pieces) == 1 else torch.cat(pieces)


def _prior_state(state: GenState) -> Tensor:
    """The latent prior's state ``(B, R)`` of a state; StateError where it has none (made by a model without one)."""
    r = state.tensors.get("prior")
    if r is None:
        raise StateError("this state has no latent prior state (made by a model without one); start anew")
    return r


def _check_block_state(state: GenState) -> None:
    if "dec_abs" not in state.tensors:
        raise StateError("this state was made before block sampling (it has no absorbed decoder state); start anew")


def straight_through_gumbel(log_p: Tensor, tau: float) -> Tensor:
    """One-hot samples of the categoricals ``log_p`` ``(..., K)`` (log-probabilities or logits)
    whose gradient is the straight-through Gumbel-softmax one at temperature ``tau``: the forward
    value is an exact draw (the Gumbel-max trick), the gradient that of the tempered softmax of
    the same perturbed logits.  (Gumbel-Rao and ReinMax gradients were tried and removed:
    docs/experiments/README.md.)"""
    g = -torch.empty_like(log_p).exponential_().log()  # (..., K) Gumbel(0, 1)
    hard = F.one_hot((log_p.detach() + g).argmax(-1), log_p.shape[-1]).to(log_p.dtype)  # (..., K)
    soft = ((log_p + g) / tau).softmax(-1)  # (..., K)
    return hard + soft - soft.detach()
