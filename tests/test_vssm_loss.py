"""The ELBO terms and the partial-posterior KL of the VSSM (docs/design.md)."""

from __future__ import annotations

import math

import pytest
import torch

from tests.conftest import decoder_input, tiny_model
from tests.test_blocks import latent_prior_log_probs
from vssm.model import VSSM, LossOutput, VSSMConfig
from vssm.model.vssm import straight_through_gumbel


def test_default_config_is_a_valid_small_model():
    m = VSSM()
    assert isinstance(m.config, VSSMConfig) and m.num_parameters() < 1_000_000
    loss = m.loss(torch.randint(0, 2, (2, 16)))
    assert torch.isfinite(loss.total)


def test_terms_kl_nonnegative_reconstruction_finite_and_bounded():
    m = tiny_model("vssm")
    x = torch.randint(0, 5, (4, 20))
    terms = m.loss(x)
    Z, K, T = m.config.n_latents, m.config.n_classes, x.shape[1]
    for t in (terms.reconstruction, terms.kl, terms.partial_kl):
        assert t.shape == (4,) and torch.isfinite(t).all()
    assert (terms.kl >= 0).all() and (terms.partial_kl >= -1e-9).all()
    assert (terms.kl <= T * Z * math.log(K) + 1e-9).all()
    assert torch.allclose(terms.nelbo, terms.reconstruction + terms.kl)


def test_gradients_reach_every_parameter_of_all_three_networks():
    m = tiny_model("vssm").train()
    m.loss(torch.randint(0, 5, (4, 12))).total.backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    # the partial KL trains the partial encoder only: the encoder side is detached
    m.zero_grad()
    m.loss(torch.randint(0, 5, (4, 12))).partial_kl.sum().backward()
    assert all(p.grad is None or not p.grad.any() for p in m.encoder.parameters())
    assert all(p.grad is None or not p.grad.any() for p in m.decoder.parameters())
    assert any(p.grad is not None and p.grad.any() for p in m.partial_encoder.parameters())


def test_prompt_lengths_control_the_partial_encoder_inputs():
    m = tiny_model("vssm")
    x = torch.randint(0, 5, (1, 8))
    full = m.loss(x, prompt_lengths=torch.tensor([8])).partial_kl
    none = m.loss(x, prompt_lengths=torch.tensor([0])).partial_kl
    assert not torch.allclose(full, none)


@pytest.mark.slow
def test_tiny_model_learns_a_toy_dataset_in_a_few_steps():
    # 150 steps of a 10k-parameter model: a few seconds on an idle CPU (no timer here: timing belongs in bench/).
    # The bundled recipe's ingredients (smoothing posterior, tau 0.5, a KL warm-up): without them the
    # latents collapse to the prior within 150 steps here and the bound stays at 32 log 2 nats.
    torch.manual_seed(0)
    m = VSSM(
        VSSMConfig(
            vocab_size=2,
            width=32,
            state_size=8,
            enc_layers=1,
            dec_layers=2,
            par_layers=1,
            n_latents=2,
            n_classes=4,
            posterior="smoothing",
        )
    ).train()
    # toy data: alternating stripes with a random phase, so each sequence is one bit of information
    phase = torch.randint(0, 2, (256, 1))
    data = (torch.arange(32)[None, :] + phase) % 2
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    first = last = None
    for step in range(150):
        x = data[torch.randint(0, 256, (32,))]
        terms = m.loss(x, tau=0.5, kl_weight=min(1.0, (step + 1) / 100))
        opt.zero_grad()
        terms.total.backward()
        opt.step()
        if step == 0:
            first = terms.nelbo.mean().item()
        last = terms.nelbo.mean().item()
    assert last < 0.5 * first, (first, last)


def test_importance_weighted_bound_is_reproducible_and_never_looser_than_its_draws():
    m = tiny_model("vssm")
    x = torch.randint(0, 5, (6, 10))
    b1 = m.nll(x, samples=1, seed=3)
    assert torch.equal(b1, m.nll(x, samples=1, seed=3))
    b16 = m.nll(x, samples=16, seed=3)
    singles = torch.stack([m.nll(x, samples=1, seed=3 + k) for k in range(16)])  # the same 16 draws
    assert (b16 <= singles.mean(0) + 1e-9).all()  # Jensen: log-mean-exp >= mean of logs, per sequence
    assert (b16 < singles.mean(0) - 1e-6).any()  # and strictly tighter somewhere


def test_bound_is_per_sequence_and_independent_of_batching():
    m = tiny_model("vssm")
    x = torch.randint(0, 5, (6, 10), generator=torch.Generator().manual_seed(5))
    batch = m.nll(x, samples=3, seed=2)
    alone = torch.cat([m.nll(x[i : i + 1], samples=3, seed=2) for i in range(6)])
    torch.testing.assert_close(batch, alone)
    twins = m.nll(torch.cat([x[:1], x[:1]]), samples=1, seed=2)
    assert twins[0] == twins[1]  # a sequence's draws are its own, wherever it sits


def test_sequences_get_their_own_latent_draws():
    from vssm.model.sampling import hash_rows

    x = torch.randint(0, 2, (500, 64), generator=torch.Generator().manual_seed(0))
    h = hash_rows(x)
    assert len(set(h.tolist())) == len({tuple(r) for r in x.tolist()})  # distinct rows, distinct keys
    assert torch.equal(hash_rows(x[100:200]), h[100:200])


def _st_gradients(rows: int = 20000) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row gradients of a fixed linear function of straight-through samples, and the draws."""
    torch.manual_seed(1)
    log_p = torch.tensor([0.1, 0.6, 0.2, 0.1], dtype=torch.float64).log()
    rows_p = log_p.repeat(rows, 1).requires_grad_()
    out = straight_through_gumbel(rows_p, tau=0.5)  # (rows, K)
    weights = torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=torch.float64)
    (grad,) = torch.autograd.grad((out * weights).sum(), rows_p)
    return grad, out.detach()


def test_straight_through_draws_are_one_hot_with_the_right_frequencies():
    grad, out = _st_gradients()
    torch.testing.assert_close(out, out.round(), atol=1e-12, rtol=0)  # one-hot, up to rounding
    assert torch.equal(out.round().sum(-1), torch.ones(len(out), dtype=out.dtype))
    freq = out.mean(0)
    torch.testing.assert_close(freq, torch.tensor([0.1, 0.6, 0.2, 0.1], dtype=freq.dtype), atol=0.012, rtol=0)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_log_weights_refuse_a_prompt_as_long_as_the_sequence():
    m = tiny_model("vssm")
    x = torch.randint(0, 5, (2, 6))
    assert m.log_weights(x, prompt_len=5, samples=3).shape == (3, 2)
    with pytest.raises(ValueError, match="prompt_len"):
        m.log_weights(x, prompt_len=6)


def _exact(m: VSSM, x: torch.Tensor, C: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The NLL ``-log p(x_C+1:T | x_1:C)`` of the model that generation samples from, and the
    negative ELBO of the posterior that the bounds draw from, by summing over every latent sequence
    (K^T of them; Z = 1).  Latents come from the prior (C = 0) or the partial encoder (C > 0); the
    proposal takes the prompt's latents from the partial encoder and the rest from the posterior."""
    import itertools

    B, T = x.shape
    K = m.config.n_classes
    if C > 0:
        t = torch.arange(T)
        xbar = torch.where(t[None, :] < C, x, m.empty_token)
        log_w = m._latent_logits(m.partial_encoder(xbar)[0]).log_softmax(-1)[:, :, 0]  # (B, T, K)
    else:
        log_w = torch.full((B, T, K), -math.log(K), dtype=m.dtype)
    log_q = m._posterior_log_probs(x)[:, :, 0]  # (B, T, K)
    log_prop = torch.cat([log_w[:, :C], log_q[:, C:]], 1)  # (B, T, K)
    joint, elbo = [], torch.zeros(B, dtype=m.dtype)
    for seq in itertools.product(range(K), repeat=T):
        z = torch.tensor(seq).expand(B, T)[..., None]  # (B, T, 1)
        read = xbar if C > 0 else torch.full_like(x, m.empty_token)  # the tokens the decoder reads
        x_logits = m.decoder(decoder_input(m, z, read))[0]  # (B, T, V)
        log_px = x_logits.log_softmax(-1).gather(-1, x[..., None])[:, C:, 0].sum(-1)  # (B,)
        lw = log_w
        if m.latent_prior is not None:  # after the prompt one block, whose latents read the ones before
            after = latent_prior_log_probs(m, log_w[:, C:, None], z[:, C:])[:, :, 0]  # (B, T - C, K)
            lw = torch.cat([log_w[:, :C], after], 1)
        log_pz = lw.gather(-1, z)[..., 0]  # (B, T)
        joint.append(log_px + log_pz.sum(-1))
        log_ratio = (log_pz - log_prop.gather(-1, z)[..., 0])[:, C:].sum(-1)  # (B,)
        elbo += log_prop.gather(-1, z)[..., 0].sum(-1).exp() * (log_px + log_ratio)
    return -torch.logsumexp(torch.stack(joint), 0), -elbo


@pytest.mark.parametrize(
    ("posterior", "tokens", "prior"),
    [
        ("causal", False, 0),
        ("smoothing", False, 0),
        ("split", False, 0),
        ("smoothing", True, 0),
        ("smoothing", False, 4),  # a latent prior of width 4
    ],
)
@pytest.mark.parametrize("C", [0, 1])
def test_bounds_match_their_exact_values_for_every_posterior(posterior, tokens, prior, C):
    """Single draws average to the exact ELBO, many importance draws close in on the exact NLL
    (both enumerated), unprompted and prompted; a decoder that reads tokens reads the prompt's; a
    latent prior reads the latents drawn since the prompt."""
    m = tiny_model(
        "vssm", vocab_size=2, n_latents=1, n_classes=3, posterior=posterior, decoder_tokens=tokens, prior_width=prior
    )
    x = torch.randint(0, 2, (4, 3), generator=torch.Generator().manual_seed(1))
    S = 300
    if prior:  # a milder prior and more draws: the weights' spread is then that of the other models
        with torch.no_grad():
            m.latent_prior.mlp[-1].weight.mul_(0.3)
            m.latent_prior.mlp[-1].bias.mul_(0.3)
        S = 1200
    with torch.no_grad():
        nll, nelbo = _exact(m, x, C)
    assert (nelbo >= nll).all()
    w = m.log_weights(x, prompt_len=C, samples=S, seed=0)  # (S, B): what nll averages
    singles, iw = -w, -(torch.logsumexp(w, 0) - math.log(S))
    iw20 = -(torch.logsumexp(w[:20, :2], 0) - math.log(20))  # the first 20 draws are a 20-draw bound
    torch.testing.assert_close(iw20, m.nll(x[:2], prompt_len=C, samples=20, seed=0))
    # tolerances are several standard errors of S draws here; a normalisation bug (a missing
    # log K, a prior term counted twice) would be off by a nat or more
    torch.testing.assert_close(singles.mean(0), nelbo, atol=0.1, rtol=0)
    torch.testing.assert_close(iw, nll, atol=0.1, rtol=0)


def test_prompted_bound_decodes_past_the_prompt_over_its_tokens():
    """A decoder that reads tokens reads the prompt's where the bound draws the prompt's latents from
    the partial encoder (as an append absorbs a prompt), and EMPTYs after it: one draw's weight
    rebuilt from that definition with the same keyed latents.  (The enumerated test above cannot
    tell: on its tiny decoder a prompt token moves the later steps by less than its tolerance.)"""
    from vssm.model.sampling import STREAM_LATENT, positional_draw, sequence_seeds

    m = tiny_model("vssm", decoder_tokens=True)
    x = torch.randint(0, m.vocab_size, (3, 9), generator=torch.Generator().manual_seed(3))
    C, nn_f = 4, torch.nn.functional
    w = m.log_weights(x, prompt_len=C, samples=1, seed=5)[0]  # (B,)
    xbar = torch.where(torch.arange(9)[None, :] < C, x, m.empty_token)
    log_w = m._latent_logits(m.partial_encoder(xbar)[0]).log_softmax(-1)  # (B, T, Z, K)
    log_q = m._posterior_log_probs(x)
    proposal = torch.cat([log_w[:, :C], log_q[:, C:]], 1)
    z = positional_draw(proposal, sequence_seeds(x, 5), STREAM_LATENT)  # (B, T, Z)
    x_logits = m.decoder(decoder_input(m, z, xbar))[0]  # (B, T, V)
    log_px = -nn_f.cross_entropy(x_logits.transpose(1, 2), x, reduction="none")[:, C:].sum(-1)
    zc = z[:, C:, :, None]
    ratio = (log_w[:, C:].gather(-1, zc) - log_q[:, C:].gather(-1, zc)).sum((-1, -2, -3))
    torch.testing.assert_close(w, log_px + ratio, rtol=1e-10, atol=1e-10)


def test_smoothing_posterior_reads_the_future_and_causal_does_not():
    x = torch.randint(0, 5, (1, 10), generator=torch.Generator().manual_seed(2))
    y = x.clone()
    y[0, 7] = (x[0, 7] + 1) % 5  # change one token: steps before it see it only through the backward stack
    for posterior, changes_past in (("causal", False), ("smoothing", True)):
        m = tiny_model("vssm", posterior=posterior)
        qx, qy = m._posterior_log_probs(x), m._posterior_log_probs(y)
        assert torch.allclose(qx[:, :7], qy[:, :7]) != changes_past, posterior
        assert not torch.allclose(qx[:, 7:], qy[:, 7:])
    # the generation-time networks and their parameter count do not change
    causal, smooth = tiny_model("vssm"), tiny_model("vssm", posterior="smoothing")
    assert causal.num_parameters(generation_only=True) == smooth.num_parameters(generation_only=True)
    assert smooth.num_parameters() - causal.num_parameters() == sum(p.numel() for p in causal.encoder.parameters())


def test_split_posterior_is_causal_over_the_training_prompt_and_smoothing_after():
    """With the same weights, a "split" VSSM's loss at prompt length T is the causal model's and
    at prompt length 0 the smoothing model's; in between, the prompt's posterior ignores the future."""
    split = tiny_model("vssm", posterior="split")
    x = torch.randint(0, 5, (3, 9), generator=torch.Generator().manual_seed(3))
    T = x.shape[1]
    for other, C in (("causal", T), ("smoothing", 0)):
        ref = tiny_model("vssm", posterior=other)
        ref.load_state_dict(split.state_dict(), strict=False)  # a causal model has no backward stack
        lengths = torch.full((3,), C)
        torch.manual_seed(4)  # the same Gumbel noise for both
        got = split.loss(x, prompt_lengths=lengths, tau=0.5)
        torch.manual_seed(4)
        want = ref.loss(x, prompt_lengths=lengths, tau=0.5)
        for name in ("reconstruction", "kl", "partial_kl"):
            torch.testing.assert_close(getattr(got, name), getattr(want, name), msg=f"{other}: {name}")
    y = x.clone()
    y[:, 6] = (x[:, 6] + 1) % 5
    lengths = torch.tensor([7, 4, 0])
    prompt = split._prompt_mask(lengths, T)
    qx, qy = split._posterior_log_probs(x, prompt), split._posterior_log_probs(y, prompt)
    assert torch.allclose(qx[0, :6], qy[0, :6])  # row 0's prompt covers step 6: causal there
    assert torch.allclose(qx[1, :4], qy[1, :4])  # row 1's causal steps 0..3 never see step 6
    assert not torch.allclose(qx[1, 4:6], qy[1, 4:6])  # smoothing after the prompt reads it
    assert not torch.allclose(qx[2, :6], qy[2, :6])  # row 2 has no prompt: smoothing throughout


def test_every_family_has_one_loss_signature(family):
    """The trainer calls ``loss(x, **schedule)`` on any family: a scalar total with a gradient, and
    named per-sequence parts whose "nll" is the NLL (exact for autoregressive families, whose
    schedule keywords are ignored) or a latent family's negative ELBO."""
    m = tiny_model(family).train()
    x = torch.randint(0, m.vocab_size, (3, 10), generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    out = m.loss(x, kl_weight=0.5, tau=0.7, block_size=4, prompt_lengths=torch.zeros(3, dtype=torch.long))
    assert isinstance(out, LossOutput) and out.total.ndim == 0 and out.total.requires_grad
    assert all(v.shape == (3,) for v in out.parts.values()) and "nll" in out.parts
    out.total.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in m.parameters())
    if family in ("vssm", "tvae"):  # the TVAE has the VSSM's loss, with transformer stacks
        plain = m.loss(x, prompt_lengths=torch.zeros(3, dtype=torch.long))
        assert {"rec", "kl", "pkl"} <= set(plain.parts)
        torch.testing.assert_close(plain.parts["nll"], plain.parts["rec"] + plain.parts["kl"])
        torch.testing.assert_close(plain.total, (plain.parts["nll"] + plain.parts["pkl"]).mean())
    elif family == "vrnn":  # the negative ELBO, no partial encoder
        plain = m.loss(x)
        assert set(plain.parts) == {"nll", "rec", "kl"}
        torch.testing.assert_close(plain.parts["nll"], plain.parts["rec"] + plain.parts["kl"])
        torch.testing.assert_close(plain.total, plain.parts["nll"].mean())
    else:
        with torch.no_grad():
            torch.testing.assert_close(m.loss(x).parts["nll"], m.nll(x))
            torch.testing.assert_close(m.loss(x, tau=0.1, kl_weight=0.0).total, m.nll(x).mean())
