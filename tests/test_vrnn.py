"""The VRNN (model/vrnn.py): its GRU, the filter whose prior and emission run after the loop
against a plain step-by-step reference, and its bound against the exact likelihood of a tiny model.

Glossary: B batch, T length, C prompt length, V vocabulary, Z latent variables, K classes, H width,
X every sequence of length T, L every latent path.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from tests.conftest import tiny_model
from vssm import model
from vssm.model.sampling import STREAM_LATENT, keyed_uniform, sample_categorical, sequence_seeds

F64 = torch.float64


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run many small ops: on a shared 2-core machine a second thread only contends."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_cell_is_torch_s_gru_cell():
    m = tiny_model("vrnn")
    H = m.config.width
    ref = torch.nn.GRUCell(2 * H, H).double()
    with torch.no_grad():
        ref.weight_ih.copy_(torch.cat([m.gru_x.weight, m.gru_z.weight], 1))
        ref.bias_ih.copy_(m.gru_x.bias)
        ref.weight_hh.copy_(m.gru_h.weight)
        ref.bias_hh.copy_(m.gru_h.bias)
    ex, ez, h = torch.randn(3, 4, H, dtype=F64)
    torch.testing.assert_close(m._cell(m.gru_x(ex), ez, h), ref(torch.cat([ex, ez], -1), h), rtol=1e-12, atol=1e-12)


@torch.no_grad()
def reference_log_weight(
    m: model.VRNN, x: torch.Tensor, C: int, key: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """One draw's log weight ``(B,)`` and final state, step by step: every distribution computed
    where the step is, from the model's one-step pieces and the paper's equations."""
    B, T = x.shape
    u = keyed_uniform(key, torch.arange(T).expand(B, T), STREAM_LATENT, m.config.n_latents, F64)
    h = torch.zeros(B, m.config.width, dtype=F64)
    log_w = torch.zeros(B, dtype=F64)
    for t in range(T):
        ex = m.phi_x(x[:, t])  # (B, H)
        log_q = m._latent_logits(m.enc_out(torch.relu(m.enc_x(ex) + m.enc_h(h)))).log_softmax(-1)  # (B, Z, K)
        z = sample_categorical(log_q, u[:, t], 1.0)  # (B, Z)
        ez = m.phi_z(m._one_hot(z))
        if t >= C:
            log_p = m._latent_logits(m.prior(h)).log_softmax(-1)
            log_x = m.dec_out(torch.relu(m.dec_z(ez) + m.dec_h(h))).log_softmax(-1)  # (B, V)
            zi = z[..., None]
            log_w += log_x.gather(1, x[:, t : t + 1])[:, 0] + (log_p.gather(-1, zi) - log_q.gather(-1, zi)).sum((1, 2))
        h = m._cell(m.gru_x(ex), ez, h)
    return log_w, h


@pytest.mark.parametrize("C", [0, 5])
def test_bound_with_prior_and_emission_after_the_loop_equals_step_by_step(C):
    m = tiny_model("vrnn")
    x = torch.randint(0, m.vocab_size, (3, 9), generator=torch.Generator().manual_seed(C))
    w = m.log_weights(x, prompt_len=C, samples=3, seed=2)  # (S, B)
    for k in range(3):
        ref, _ = reference_log_weight(m, x, C, sequence_seeds(x, 2) + k)
        torch.testing.assert_close(w[k], ref, rtol=1e-10, atol=1e-10)


def test_prompt_state_is_the_filter_keyed_on_the_session_seed():
    m = tiny_model("vrnn")
    x = torch.randint(0, m.vocab_size, (2, 7), generator=torch.Generator().manual_seed(1))
    state = m.start(x, [4, 9])
    _, h = reference_log_weight(m, x, 7, torch.tensor([4, 9]))
    torch.testing.assert_close(state["h"], h, rtol=1e-10, atol=1e-12)
    assert state["h"].shape == (2, m.config.width)  # fixed size: one GRU state per row


# ----- the bound against the exact likelihood (Z = 1, K = 3, V = 2, T = 4: every latent path) --------------
ENUM = dict(vocab_size=2, n_latents=1, n_classes=3, width=8)
T_ENUM = 4


@torch.no_grad()
def exact(m: model.VRNN, C: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every sequence ``(X, T)``, ``log p(x_C+1:T | x_1:C)`` ``(X,)`` of the process generation samples
    (prompt latents from the posterior, as an append draws them; later ones from the prior) and the
    ELBO ``(X,)`` of the bound's proposal (the posterior everywhere), over every latent path."""
    K = m.config.n_classes
    xs = torch.tensor(list(itertools.product(range(2), repeat=T_ENUM)))  # (X, T)
    zs = torch.tensor(list(itertools.product(range(K), repeat=T_ENUM)))  # (L, T)
    X, L = len(xs), len(zs)
    x = xs.repeat_interleave(L, 0)  # (X*L, T)
    z = zs.repeat(X, 1)  # (X*L, T)
    h = torch.zeros(X * L, m.config.width, dtype=F64)
    log_process = torch.zeros(X * L, dtype=F64)  # log p(z, x_C+1:T | x_1:C) of the process
    log_prop = torch.zeros(X * L, dtype=F64)  # log q(z | x)
    for t in range(T_ENUM):
        ex = m.phi_x(x[:, t])
        log_q = m._posterior(m.enc_x(ex), h)[:, 0]  # (X*L, K)
        ez = m.phi_z(m._one_hot(z[:, t, None]))
        q_t = log_q.gather(1, z[:, t : t + 1])[:, 0]
        log_prop += q_t
        if t < C:
            log_process += q_t
        else:
            log_process += m._prior_log_probs(h)[:, 0].gather(1, z[:, t : t + 1])[:, 0]
            log_process += m._emission(ez, h).log_softmax(-1).gather(1, x[:, t : t + 1])[:, 0]
        h = m._cell(m.gru_x(ex), ez, h)
    log_process, log_prop = log_process.view(X, L), log_prop.view(X, L)
    elbo = (log_prop.exp() * (log_process - log_prop)).sum(1)
    return xs, torch.logsumexp(log_process, 1), elbo


@pytest.mark.parametrize("C", [0, 2])
def test_importance_weighted_bound_is_above_the_exact_nll_and_tightens(C):
    m = tiny_model("vrnn", **ENUM)
    xs, log_p, elbo = exact(m, C)
    if C == 0:
        torch.testing.assert_close(log_p.exp().sum(), torch.tensor(1.0, dtype=F64))
    S = 4096
    w = m.log_weights(xs, prompt_len=C, samples=S)  # (S, X)
    one = -w.mean(0)
    four = -(torch.logsumexp(w.view(S // 4, 4, -1), 1) - math.log(4)).mean(0)
    many = -(torch.logsumexp(w, 0) - math.log(S))
    torch.testing.assert_close(one, -elbo, rtol=0, atol=0.1)  # the weights are the ELBO's integrand
    assert (elbo <= log_p + 1e-9).all() and (-elbo + log_p).mean() > 0.05  # a proposal that is not the posterior
    assert (one >= four).all() and (four >= -log_p).all()  # more draws, a tighter bound, never below the NLL
    torch.testing.assert_close(many, -log_p, rtol=0, atol=0.1)  # and it closes on the NLL
    torch.testing.assert_close(m.nll(xs, prompt_len=C, samples=4), -(torch.logsumexp(w[:4], 0) - math.log(4)))


def test_generation_samples_the_distribution_the_bound_scores():
    """Unprompted samples of the enumerable model match its exact p(x) (Pearson chi-square)."""
    m = tiny_model("vrnn", **ENUM)
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
def test_loss_is_the_negative_elbo_and_a_few_steps_lower_it():
    m = tiny_model("vrnn", dtype=torch.float32)
    m.train()
    x = torch.randint(0, m.vocab_size, (8, 16), generator=torch.Generator().manual_seed(0))
    out = m.loss(x, kl_weight=0.5, tau=0.7)
    assert set(out.parts) == {"nll", "rec", "kl"} and (out.parts["kl"] >= 0).all()
    torch.testing.assert_close(out.parts["nll"], out.parts["rec"] + out.parts["kl"])
    torch.testing.assert_close(out.total, (out.parts["rec"] + 0.5 * out.parts["kl"]).mean())
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
