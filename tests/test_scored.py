"""``generate_scored``: the same tokens and state as ``generate``, and each token's log-probabilities."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import V, tiny_model


def states_equal(a, b) -> bool:
    return a.tensors.keys() == b.tensors.keys() and all(torch.allclose(a[k], b[k]) for k in a.tensors)


@pytest.mark.parametrize("block_size", [None, 1, 3])
def test_scored_generation_is_generation(family, block_size):
    m = tiny_model(family)
    state = m.start(torch.tensor([[1, 2, 0], [4, 4, 1]]), [5, 6])
    tokens, nxt = m.generate(state, 9, temperature=0.8, block_size=block_size)
    scored, nxt2, log_p = m.generate_scored(state, 9, temperature=0.8, block_size=block_size)
    assert torch.equal(tokens, scored) and states_equal(nxt, nxt2)
    assert log_p.shape == (2, 9, V) and log_p.dtype == torch.float32
    assert torch.allclose(log_p.exp().sum(-1), torch.ones(2, 9), atol=1e-5)


@pytest.mark.parametrize("family", ["ar-ssm", "ar-transformer", "ar-gru"])
def test_autoregressive_scores_are_the_teacher_forced_distribution(family):
    m = tiny_model(family)
    tokens, _, log_p = m.generate_scored(m.start(torch.zeros(2, 0, dtype=torch.long), [1, 2]), 12)
    forced = m.logits(tokens).log_softmax(-1).float()  # p(x_t | x_<t) read back over the tokens
    assert torch.allclose(log_p, forced, atol=1e-5)


@pytest.mark.parametrize("block_size", [None, 4])
def test_vssm_scores_do_not_depend_on_chunks_or_row_blocks(block_size):
    m = tiny_model("vssm")
    state = m.start(torch.tensor([[1, 0], [3, 2], [2, 2]]), [1, 2, 3])
    whole, _, log_p = m.generate_scored(state, 12, block_size=block_size)
    a, mid, log_a = m.generate_scored(state, 5, block_size=block_size)
    b, _, log_b = m.generate_scored(mid, 7, block_size=block_size)
    assert torch.equal(whole, torch.cat([a, b], 1))
    assert torch.allclose(log_p, torch.cat([log_a, log_b], 1), atol=1e-5)
    m.row_block_tokens = 12 // max(1, torch.get_num_threads())  # per thread: one row per block of rows
    rows, _, log_rows = m.generate_scored(state, 12, block_size=block_size)
    assert torch.equal(rows, whole) and torch.allclose(log_rows, log_p, atol=1e-5)


def test_greedy_tokens_are_their_distribution_s_argmax(family):
    m = tiny_model(family)
    tokens, _, log_p = m.generate_scored(m.start(torch.tensor([[1]]), 0), 10, temperature=0.0)
    assert torch.equal(tokens, log_p.argmax(-1))
