"""The TVAE (model/tvae.py): its transformer stacks with caches, generation against a fresh-pass
oracle, its posterior forms, and its likelihood bound against the exact likelihood of a tiny model.

Glossary: B batch, T length, C prompt length, V vocabulary, Z latent variables, K classes.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from tests.conftest import tiny_model
from vssm import model
from vssm.model.sampling import STREAM_LATENT, STREAM_TOKEN, keyed_uniform, sample_categorical
from vssm.model.transformer import TransformerNet, TransformerNetConfig

F64 = torch.float64


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run many small ops: on a shared 2-core machine a second thread only contends."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def net(tokens: bool = True, seed: int = 0) -> TransformerNet:
    torch.manual_seed(seed)
    cfg = TransformerNetConfig(n_in=5, n_out=3, max_position=32, tokens=tokens, width=8, heads=2, layers=3)
    return TransformerNet(cfg).double().eval()


# ----- the transformer stack: one pass == the same steps read piece by piece through the cache -------
@pytest.mark.parametrize("tokens", [True, False])
def test_cached_pieces_equal_one_pass_rows_at_different_lengths(tokens):
    """Row 0 has read 4 steps, row 1 one step (their caches padded to one size, as a dynamic batch
    holds them); both then read pieces of 1 and 6 steps together.  Each row's outputs and cache
    equal one fresh pass over its own sequence (float64)."""
    f = net(tokens)
    x = torch.randint(0, 5, (2, 11)) if tokens else torch.randn(2, 11, 5, dtype=F64)
    with torch.no_grad():
        full, (k_full, v_full) = f(x)
        _, (k0, v0) = f(x[:1, :4])
        _, (k1, v1) = f(x[1:, :1])
        pad = (0, 0, 0, 3)  # row 1's cache to 4 slots; slots past its length are never read
        cache = (torch.cat([k0, F.pad(k1, pad)]), torch.cat([v0, F.pad(v1, pad)]))
        length = torch.tensor([4, 1])
        outs = []
        for piece in (1, 6):
            rows = [x[b, int(length[b]) : int(length[b]) + piece] for b in range(2)]
            out, cache = f(torch.stack(rows), cache, length)
            outs.append(out)
            length = length + piece
        out = torch.cat(outs, 1)  # (2, 7, O)
    torch.testing.assert_close(out[0], full[0, 4:11], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(out[1], full[1, 1:8], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(cache[0][0, :, :, :11], k_full[0], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(cache[1][1, :, :, :8], v_full[1, :, :, :8], rtol=1e-10, atol=1e-12)


def test_cached_gradients_equal_one_pass():
    f = net(tokens=False, seed=1)
    x = torch.randn(1, 9, 5, dtype=F64, requires_grad=True)
    one = f(x)[0].square().sum()
    g_one = torch.autograd.grad(one, [x, *f.parameters()])
    a, cache = f(x[:, :5])
    b, _ = f(x[:, 5:], cache, torch.tensor([5]))
    two = torch.cat([a, b], 1).square().sum()
    g_two = torch.autograd.grad(two, [x, *f.parameters()])
    for g1, g2 in zip(g_one, g_two, strict=True):
        torch.testing.assert_close(g1, g2, rtol=1e-9, atol=1e-11)


def test_bidirectional_pass_reads_the_future_and_takes_no_cache():
    f = net()
    x = torch.randint(0, 5, (1, 8))
    y = x.clone()
    y[0, 6] = (x[0, 6] + 1) % 5
    with torch.no_grad():
        causal = f(x)[0] - f(y)[0]
        both = f(x, causal=False)[0] - f(y, causal=False)[0]
    assert causal[:, :6].abs().max() == 0 and both[:, :6].abs().max() > 1e-6
    with pytest.raises(ValueError, match="no cache"):
        f(x, f.initial_state(1, F64, torch.device("cpu")), torch.zeros(1, dtype=torch.long), causal=False)


# ----- generation: cached and resumed == one fresh pass over the whole sequence -------------------------
@torch.no_grad()
def oracle(m: model.TVAE, prompt: torch.Tensor, seed: int, n: int) -> torch.Tensor:
    """What generation after ``prompt`` ``(1, C)`` samples, from fresh passes with no state: the
    prompt's latents from f_par reading it, the rest from f_par over EMPTYs after it (or the prior
    without a prompt), then one decoder pass over every latent."""
    C = prompt.shape[1]
    T = C + n
    pos = torch.arange(T)[None]
    u_lat = keyed_uniform(torch.tensor([seed]), pos, STREAM_LATENT, m.config.n_latents, m.dtype)  # (1, T, Z)
    xbar = torch.cat([prompt, torch.full((1, n), m.empty_token)], 1)
    logits = m._latent_logits(m.partial_encoder(xbar, return_state=False)[0])  # (1, T, Z, K)
    z = sample_categorical(logits, u_lat, 1.0)
    if C == 0:
        z = (u_lat * m.config.n_classes).long()  # the uniform prior
    x_logits = m.decoder(m._one_hot(z), return_state=False)[0]  # (1, T, V)
    u_tok = keyed_uniform(torch.tensor([seed]), pos, STREAM_TOKEN, 1, m.dtype)[..., 0]
    return sample_categorical(x_logits, u_tok, 1.0)[:, C:]


@pytest.mark.parametrize("C", [0, 3])
def test_generation_in_chunks_equals_one_fresh_pass(C):
    m = tiny_model("tvae")
    prompt = torch.randint(0, m.vocab_size, (1, C), generator=torch.Generator().manual_seed(C))
    state = m.start(prompt, 7)
    parts = []
    for n in (4, 1, 7):
        tokens, state = m.generate(model.GenState.from_bytes(state.to_bytes()), n)
        parts.append(tokens)
    torch.testing.assert_close(torch.cat(parts, 1), oracle(m, prompt, 7, 12), rtol=0, atol=0)


def test_append_after_generation_reads_the_generated_tokens_as_observed():
    """After an append, f_par has read every token (generated ones too) and the latents continue from it."""
    m = tiny_model("tvae")
    s = m.start(torch.tensor([[1, 2]]), 3)
    gen, s = m.generate(s, 5)
    s = m.append(s, torch.tensor([[4]]))
    ref = m.start(torch.cat([torch.tensor([[1, 2]]), gen, torch.tensor([[4]])], 1), 3)
    for name in ("par_k", "par_v", "gen_k", "gen_v"):
        torch.testing.assert_close(s[name], ref[name], rtol=1e-10, atol=1e-12)
    assert bool(s["observed"].all()) and int(s.position[0]) == 8


def test_state_grows_with_position_and_caches_keep_one_size():
    m = tiny_model("tvae")
    s = model.GenState.cat(
        [m.start(torch.zeros(1, 2, dtype=torch.long), 1), m.start(torch.zeros(1, 0, dtype=torch.long), 2)]
    )
    _, s = m.generate(s, 5)
    sizes = {s[k].shape[3] for k in s.tensors if k.endswith(("_k", "_v"))}
    assert sizes == {7}  # the longest row's position
    small = m.start(torch.zeros(1, 1, dtype=torch.long), 1).nbytes
    assert m.generate(m.start(torch.zeros(1, 1, dtype=torch.long), 1), 20)[1].nbytes > 10 * small


def test_posterior_forms_share_generation_and_differ_in_what_they_read():
    causal = tiny_model("tvae")
    smooth = tiny_model("tvae", posterior="smoothing")
    assert causal.fingerprint == smooth.fingerprint  # the same weights: only the attention mask differs
    s = causal.start(torch.tensor([[1, 0, 3]]), 5)
    assert torch.equal(causal.generate(s, 9)[0], smooth.generate(s, 9)[0])
    x = torch.randint(0, 5, (1, 10), generator=torch.Generator().manual_seed(2))
    y = x.clone()
    y[0, 8] = (x[0, 8] + 1) % 5
    with torch.no_grad():
        for m, reads_future in ((causal, False), (smooth, True)):
            d = (m._posterior_log_probs(x) - m._posterior_log_probs(y))[:, :8].abs().max()
            assert (d > 1e-6) == reads_future


# ----- the bound against the exact likelihood (Z = 1, K = 3, V = 2, T = 4: every latent path) --------------
ENUM = dict(vocab_size=2, max_position=4, n_latents=1, n_classes=3)
T_ENUM = 4


@torch.no_grad()
def exact(m: model.TVAE, C: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every sequence ``(X, T)``, ``log p(x_C+1:T | x_1:C)`` ``(X,)`` of the process generation
    samples and the ELBO ``(X,)`` of the bound's proposal, each summed over every latent path."""
    K = m.config.n_classes
    xs = torch.tensor(list(itertools.product(range(2), repeat=T_ENUM)))  # (X, T)
    zs = torch.tensor(list(itertools.product(range(K), repeat=T_ENUM)))  # (L, T)
    x_logp = m.decoder(m._one_hot(zs[..., None]), return_state=False)[0].log_softmax(-1)  # (L, T, V)
    log_p, elbo = torch.empty(len(xs), dtype=F64), torch.empty(len(xs), dtype=F64)
    for i, x in enumerate(xs):
        lq = m._posterior_log_probs(x[None])[0, :, 0]  # (T, K)
        if C:
            xbar = torch.cat([x[:C], torch.full((T_ENUM - C,), m.empty_token)])
            lw = m._partial_log_probs(xbar[None])[0, :, 0]  # (T, K): prompt steps read x_1:t, later EMPTYs
        else:
            lw = torch.full((T_ENUM, K), -math.log(K), dtype=F64)  # the uniform prior
        log_z = lw.gather(1, zs.T).sum(0)  # (L,) the process's probability of each latent path
        log_x = x_logp[:, C:].gather(2, x[C:].expand(len(zs), -1)[..., None])[..., 0].sum(1)  # (L,)
        log_p[i] = torch.logsumexp(log_z + log_x, 0)
        proposal = torch.cat([lw[:C], lq[C:]])  # (T, K): the prompt's latents from the model itself
        log_prop = proposal.gather(1, zs.T).sum(0)  # (L,)
        elbo[i] = (log_prop.exp() * (log_z + log_x - log_prop)).sum()
    return xs, log_p, elbo


@pytest.mark.parametrize("C", [0, 2])
def test_importance_weighted_bound_is_above_the_exact_nll_and_tightens(C):
    m = tiny_model("tvae", **ENUM)
    xs, log_p, elbo = exact(m, C)
    if C == 0:
        torch.testing.assert_close(log_p.exp().sum(), torch.tensor(1.0, dtype=F64))
    S = 4096
    w = m.log_weights(xs, prompt_len=C, samples=S)  # (S, X)
    one = -w.mean(0)  # the mean single-draw bound: the negative ELBO, estimated
    four = -(torch.logsumexp(w.view(S // 4, 4, -1), 1) - math.log(4)).mean(0)
    many = -(torch.logsumexp(w, 0) - math.log(S))
    torch.testing.assert_close(one, -elbo, rtol=0, atol=0.1)  # the weights are the ELBO's integrand
    assert (elbo <= log_p + 1e-9).all() and (-elbo + log_p).mean() > 0.1  # a proposal that is not the posterior
    assert (one >= four).all() and (four >= -log_p).all()  # more draws, a tighter bound, never below the NLL
    torch.testing.assert_close(many, -log_p, rtol=0, atol=0.15)  # and it closes on the NLL
    # nll() is that bound: draw k of a sequence is keyed seed + k, whatever the batch
    torch.testing.assert_close(m.nll(xs, prompt_len=C, samples=4), -(torch.logsumexp(w[:4], 0) - math.log(4)))
    torch.testing.assert_close(
        m.nll(xs[3:5], prompt_len=C, samples=2, seed=1), -(torch.logsumexp(w[1:3, 3:5], 0) - math.log(2))
    )


def test_generation_samples_the_distribution_the_bound_scores():
    """Unprompted samples of the enumerable model match its exact p(x) (Pearson chi-square)."""
    m = tiny_model("tvae", **ENUM)
    xs, log_p, _ = exact(m)
    N = 4000
    tokens, _ = m.generate(m.start(torch.zeros(N, 0, dtype=torch.long), list(range(N))), T_ENUM, resumable=False)
    index = (tokens * (2 ** torch.arange(T_ENUM - 1, -1, -1))).sum(1)  # row of xs
    counts = torch.bincount(index, minlength=len(xs)).to(F64)
    expected = N * log_p.exp()
    stat = ((counts - expected) ** 2 / expected).sum()
    p_value = float(torch.special.gammaincc(torch.tensor((len(xs) - 1) / 2, dtype=F64), stat / 2))
    assert p_value > 1e-3, (counts, expected)


# ----- training ----------------------------------------------------------------------------------------
def test_loss_has_the_vssm_terms_and_a_few_steps_lower_it():
    m = tiny_model("tvae", dtype=torch.float32, max_position=16)
    m.train()
    x = torch.randint(0, m.vocab_size, (8, 16), generator=torch.Generator().manual_seed(0))
    out = m.loss(x, kl_weight=0.5, tau=0.7)
    assert set(out.parts) == {"nll", "rec", "kl", "pkl"}
    torch.testing.assert_close(out.parts["nll"], out.parts["rec"] + out.parts["kl"])
    out.total.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in m.parameters())
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    torch.manual_seed(0)
    first = None
    for _ in range(30):
        loss = m.loss(x, tau=0.7).total
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = first if first is not None else float(loss.detach())
    assert float(m.loss(x, tau=0.7).total.detach()) < first - 1.0
