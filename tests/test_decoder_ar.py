"""Blocks whose tokens depend on each other (``decoder_ar``, docs/design.md "Blocks"): the decoder
reads x_t-1 at every step and a block is drawn by fixed-point passes.

Glossary: B batch, T length, C prompt length, c block size, V vocabulary, Z latent variables, K classes.

The oracle draws every token one at a time from its definition, re-running every network from the
zero state for every token: the fixed-point passes must give exactly its tokens, and the enumerated
``p_c`` is the distribution both sample and the bound scores.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from tests.conftest import V, tiny_model
from tests.test_blocks import chi_square_pvalue, roundtrip
from vssm import model
from vssm.model.sampling import STREAM_LATENT, STREAM_TOKEN, keyed_uniform, sample_categorical

F64 = torch.float64


def ar_model(**overrides) -> model.VSSM:
    return tiny_model("vssm", decoder_ar=True, **overrides)


def decoder_logits(m: model.VSSM, z: torch.Tensor, x: list[int]) -> torch.Tensor:
    """``p(x_t | z_1:t, x_1:t-1)`` logits ``(1, n, V)`` from the zero state: latents ``z`` ``(1, n, Z)``,
    the decoder reading EMPTY at the first step and ``x_t-1`` after it."""
    zh = torch.nn.functional.one_hot(z, m.config.n_classes).to(m.dtype).flatten(-2)
    read = torch.tensor([[m.empty_token, *x[: z.shape[1] - 1]]])
    tok = torch.nn.functional.one_hot(read, m.vocab_size + 1).to(m.dtype)
    return m.decoder(torch.cat([zh, tok], -1), return_state=False)[0]


def oracle(m: model.VSSM, prompt: list[int], n: int, c: int, seed: int, temperature: float = 1.0) -> list[int]:
    """Block sampling of a decoder_ar model from its definition, one token at a time."""
    K, Z = m.config.n_classes, m.config.n_latents
    C = len(prompt)
    x = list(prompt)
    seed_t = torch.tensor([seed])

    def u(stream: int, pos: list[int], width: int) -> torch.Tensor:
        return keyed_uniform(seed_t, torch.tensor([pos]), stream, width, m.dtype)  # (1, n, W)

    def par_logits(seq: list[int]) -> torch.Tensor:
        return m._latent_logits(m.partial_encoder(torch.tensor([seq]), return_state=False)[0])  # (1, n, Z, K)

    # a prompt's latents are drawn as an append draws them; generated blocks keep the latents they were drawn from
    z_all = sample_categorical(par_logits(x), u(STREAM_LATENT, list(range(C)), Z), 1.0) if C else torch.zeros(1, 0, Z)
    z_all = z_all.long()
    starts = sorted({C, *range((C // c + 1) * c, C + n, c)}) if c else [C]
    for i, s in enumerate(starts):
        e = min(starts[i + 1] if i + 1 < len(starts) else C + n, C + n)
        pos = list(range(s, e))
        uz = u(STREAM_LATENT, pos, Z)
        if s == 0:  # nothing observed yet: the uniform prior
            z = (uz * K).long().clamp_max(K - 1)
        else:
            z = sample_categorical(par_logits(x + [m.empty_token] * len(pos))[:, s:], uz, temperature)
        z_all = torch.cat([z_all, z], 1)
        for t in pos:  # token by token, every pass from the zero state
            logits = decoder_logits(m, z_all[:, : t + 1], x)[:, t : t + 1]
            x += sample_categorical(logits, u(STREAM_TOKEN, [t], 1)[..., 0], temperature)[0].tolist()
    return x[C:]


@pytest.mark.parametrize("c", [1, 2, 3, 5, 8, 0])
@pytest.mark.parametrize("C", [0, 3])
def test_fixed_point_passes_equal_the_token_by_token_oracle_in_one_call_and_in_pieces(c, C):
    m = ar_model(max_position=40)
    prompt = torch.randint(0, V, (1, C), generator=torch.Generator().manual_seed(C))
    expected = oracle(m, prompt[0].tolist(), 17, c, seed=11, temperature=0.9)
    block = c or None
    tokens, _ = m.generate(m.start(prompt, 11), 17, temperature=0.9, block_size=block)
    assert tokens[0].tolist() == expected
    state, parts = m.start(prompt, 11), []
    for a in (4, 1, 7, 5):  # delivery chunks that cut blocks anywhere, through serialised states
        t, state = m.generate(roundtrip(state), a, temperature=0.9, block_size=block)
        parts += t[0].tolist()
    assert parts == expected
    non_resumable, nxt = m.generate(m.start(prompt, 11), 17, temperature=0.9, resumable=False, block_size=block)
    assert nxt is None and non_resumable[0].tolist() == expected


def test_the_state_holds_one_decoder_state_and_the_last_token():
    m = ar_model(max_position=40)
    state = m.start(torch.tensor([[1, 2]]), 0)
    assert "dec_abs" not in state.tensors and state["last"].tolist() == [2]
    tokens, state = m.generate(state, 6, block_size=4)
    assert state["last"].tolist() == [int(tokens[0, -1])]
    # the decoder state is the zero state run over every latent and token so far (no provisional part)
    assert m.start(torch.zeros(1, 0, dtype=torch.long), 0)["last"].tolist() == [m.empty_token]


def test_token_t_reads_token_t_minus_1_inside_a_block():
    """What decoder_tokens cannot do: inside one block, changing x_t-1 changes p(x_t | .)."""
    m = ar_model(max_position=12)
    z = torch.randint(0, m.config.n_classes, (1, 6, m.config.n_latents), generator=torch.Generator().manual_seed(2))
    a, b = [1, 2, 3, 4, 0, 1], [1, 2, 3, 0, 0, 1]
    la, lb = decoder_logits(m, z, a), decoder_logits(m, z, b)
    torch.testing.assert_close(la[:, :4], lb[:, :4], rtol=0, atol=1e-12)
    assert (la[:, 4] - lb[:, 4]).abs().max() > 1e-6


def test_block_training_loss_is_one_teacher_forced_pass_under_the_block_prior(monkeypatch):
    from vssm.model import vssm as vssm_module

    m = ar_model(max_position=13)
    draws: list[torch.Tensor] = []

    def mode(log_p: torch.Tensor, tau: float) -> torch.Tensor:  # a deterministic draw: the mode
        draws.append(log_p.argmax(-1))
        return torch.nn.functional.one_hot(draws[-1], log_p.shape[-1]).to(log_p.dtype)

    monkeypatch.setattr(vssm_module, "straight_through_gumbel", mode)
    x = torch.randint(0, V, (2, 13), generator=torch.Generator().manual_seed(4))
    c = 4
    out = m.loss(x, block_size=c)
    (z,) = draws  # the posterior's: nothing is re-drawn
    rec = torch.stack(
        [
            torch.nn.functional.cross_entropy(decoder_logits(m, z[b : b + 1], x[b].tolist())[0], x[b], reduction="sum")
            for b in range(2)
        ]
    )
    torch.testing.assert_close(out.reconstruction, rec, rtol=1e-9, atol=1e-9)
    log_q = m._posterior_log_probs(x)
    _, log_gen = m._block_priors(x, c)
    kl = (log_q.exp() * (log_q - log_gen)).sum((-1, -2, -3))
    torch.testing.assert_close(out.kl, kl, rtol=1e-9, atol=1e-9)
    # without a block size: one block, the uniform prior
    assert m.loss(x).kl.shape == (2,)


# ----- the likelihood of what is sampled, on a model small enough to enumerate ---------------------------
ENUM_T = 4


@pytest.fixture(scope="module")
def enum_model() -> model.VSSM:
    """V = 2, Z = 1, K = 2: every latent can be enumerated; sharpened so that block sizes differ."""
    m = ar_model(vocab_size=2, max_position=ENUM_T, n_latents=1, n_classes=2, seed=3)
    with torch.no_grad():
        for net in (m.decoder, m.partial_encoder):
            net.head.weight.mul_(3.0)
            net.inp.weight.mul_(3.0)
    return m


@torch.no_grad()
def enumerate_pc(m: model.VSSM, c: int) -> torch.Tensor:
    """Exact ``p_c(x)`` ``(V^T,)``: the sum over every z of the block prior times the decoder's
    token-by-token probabilities, each block prior from the partial encoder over the tokens
    before its block then EMPTYs (the uniform prior for the first block)."""
    T, K, Z = ENUM_T, m.config.n_classes, m.config.n_latents
    xs = torch.tensor(list(itertools.product(range(m.vocab_size), repeat=T)))  # (X, T)
    lat = torch.tensor(list(itertools.product(range(K), repeat=T * Z))).view(-1, T, Z)  # (L, T, Z)
    logp = torch.empty(len(xs), dtype=F64)
    for i, x in enumerate(xs):
        log_prior = torch.full((T, Z, K), -math.log(K), dtype=F64)
        for s in range(c, T, c):
            seq = torch.cat([x[:s], torch.full((T - s,), m.empty_token)])[None]
            gen = m._latent_logits(m.partial_encoder(seq, return_state=False)[0]).log_softmax(-1)[0]
            log_prior[s : s + c] = gen[s : s + c]
        lp = log_prior.expand(len(lat), -1, -1, -1).gather(-1, lat[..., None])[..., 0].sum((-1, -2))  # (L,)
        lx = torch.stack(
            [decoder_logits(m, zz[None], x.tolist()).log_softmax(-1)[0].gather(-1, x[:, None]).sum() for zz in lat]
        )  # (L,)
        logp[i] = torch.logsumexp(lp + lx, 0)
    return logp.exp()


@pytest.mark.slow
@pytest.mark.parametrize("c", [1, 2, ENUM_T])
def test_block_bound_is_above_the_exact_nll_and_converges_to_it(enum_model, c):
    m = enum_model
    p = enumerate_pc(m, c)
    torch.testing.assert_close(p.sum(), torch.tensor(1.0, dtype=F64), rtol=1e-9, atol=1e-9)
    xs = torch.tensor(list(itertools.product(range(2), repeat=ENUM_T)))
    exact = -p.log()
    w = m.block_log_weights(xs, c, samples=16000)  # (S, X)
    elbo = -w.mean(0)  # the expected one-sample bound, per sequence
    iw = -(torch.logsumexp(w, 0) - math.log(len(w)))
    assert bool((elbo > exact).all()) and float((elbo - exact).mean()) > 0.5  # one sample: above, visibly
    assert bool((iw < elbo).all())  # more samples: tighter
    assert float((iw - exact).abs().max()) < 0.05  # and converging to the exact NLL, from above on average
    assert float((iw - exact).mean()) > -0.005


@pytest.mark.slow
@pytest.mark.parametrize("c", [1, 2, 0])
def test_generate_samples_exactly_the_enumerated_block_process(enum_model, c):
    """A chi-square test of 6,000 keyed samples against ``p_c`` (c = 0: one block, by fixed-point passes)."""
    m = enum_model
    p = enumerate_pc(m, c or ENUM_T)
    N = 6000
    state = m.start(torch.zeros(N, 0, dtype=torch.long), list(range(N)))
    x, _ = m.generate(state, ENUM_T, block_size=c or None, resumable=False)
    idx = (x * (2 ** torch.arange(ENUM_T - 1, -1, -1))).sum(-1)
    counts = torch.bincount(idx, minlength=2**ENUM_T).double()
    assert chi_square_pvalue(counts, p * N) > 1e-3
    if c:  # and block sampling changed the distribution
        assert chi_square_pvalue(counts, enumerate_pc(m, ENUM_T) * N) < 1e-3


def test_decoder_ar_and_decoder_tokens_exclude_each_other():
    with pytest.raises(ValueError, match="decoder_ar"):
        model.VSSMConfig(decoder_ar=True, decoder_tokens=True)
