"""Fast block rounds (docs/design.md, "Blocks"): fused passes must equal the reference path.

Glossary: B batch, T length, c block size, m steps before the state is read, N SSM modes.

The fused path shares one f_par pass between a block's absorption and the next block's latents
and one f_dec pass between the absorbed latents and the next block's tokens; it must give the
tokens and states of the block-by-block reference (``VSSM.fuse_rounds = False``) from any state.
"""

from __future__ import annotations

import pytest
import torch

from tests.conftest import V, tiny_model
from vssm import model
from vssm.model import native
from vssm.model.ssm import S4D, SHORT, S4DConfig

F64 = torch.float64


@pytest.mark.parametrize("T", [5, 40, SHORT, 100])
def test_state_after_the_first_m_steps_of_a_longer_pass(T):
    """``lengths=m`` (an int) gives every row's state after m inputs, and the outputs of all T."""
    torch.manual_seed(T)
    layer = S4D(S4DConfig(width=6, state_size=5)).double()
    u = torch.randn(3, 6, T, dtype=F64)
    h0 = torch.randn(3, 6, 5, dtype=torch.complex128)
    with torch.no_grad():
        y_ref, _ = layer(u, h0)
        for m in sorted({1, T // 2, T}):
            y, h_m = layer(u, h0, lengths=m)
            torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-12)
            torch.testing.assert_close(h_m, layer(u[..., :m], h0)[1], rtol=1e-10, atol=1e-12)
            h = h0
            for t in range(m):  # the recurrence, step by step
                h = layer.step(u[..., t], h)[1]
            torch.testing.assert_close(h_m, h, rtol=1e-9, atol=1e-11)


def reference(m: model.VSSM, monkeypatch: pytest.MonkeyPatch, *args, **kwargs):
    with monkeypatch.context() as patch:
        patch.setattr(model.VSSM, "fuse_rounds", False)
        return m.generate(*args, **kwargs)


def assert_states_close(a: model.GenState | None, b: model.GenState | None) -> None:
    assert (a is None) == (b is None)
    if a is not None and b is not None:
        assert a.tensors.keys() == b.tensors.keys()
        for k in a.tensors:
            torch.testing.assert_close(a[k], b[k], rtol=1e-9, atol=1e-11, msg=k)


@pytest.mark.slow
# SHORT // 2 + 8: fused only where compiled (c <= SHORT < 2c); SHORT + 6: fused passes past SHORT steps
@pytest.mark.parametrize("c", [1, 3, 8, SHORT // 2 + 8, SHORT + 6])
@pytest.mark.parametrize("C", [0, 5])
@pytest.mark.parametrize("resumable", [True, False])
@pytest.mark.parametrize("tokens", [False, True], ids=["latents", "decoder-tokens"])
def test_fused_rounds_equal_the_reference_from_any_state(c, C, resumable, tokens, monkeypatch):
    m = tiny_model("vssm", max_position=240, decoder_tokens=tokens)
    prompt = torch.randint(0, V, (1, C), generator=torch.Generator().manual_seed(C))
    compiled = []
    real = native._fused_rounds
    monkeypatch.setattr(native, "_fused_rounds", lambda *a, **k: compiled.append(a) or real(*a, **k))
    for skip in (0, 1, c - 1 if c > 1 else 0):  # start at, just after or just before a boundary
        state = m.start(prompt, 7)
        if skip:
            state = m.generate(state, skip, block_size=c)[1]
        for n in (1, c, 2 * c + 3, 37):
            compiled.clear()
            fast_tokens, fast_state = m.generate(state, n, temperature=0.8, resumable=resumable, block_size=c)
            if not m._fuses_in_torch(c) and native.fused_rounds() is not None:  # fused only compiled: it was
                assert compiled, (skip, n)
            ref_tokens, ref_state = reference(
                m, monkeypatch, state, n, temperature=0.8, resumable=resumable, block_size=c
            )
            assert torch.equal(fast_tokens, ref_tokens), (skip, n)
            assert_states_close(fast_state, ref_state)


def test_fused_rounds_over_serialised_states_equal_one_call(monkeypatch):
    m = tiny_model("vssm", max_position=120)
    whole, _ = reference(m, monkeypatch, m.start(torch.tensor([[1, 0, 1]]), 3), 60, block_size=6)
    state, parts = m.start(torch.tensor([[1, 0, 1]]), 3), []
    for a in (4, 12, 1, 30, 13):
        t, state = m.generate(model.GenState.from_bytes(state.to_bytes()), a, block_size=6)
        parts.append(t)
    assert torch.equal(torch.cat(parts, 1), whole)


@pytest.mark.parametrize("tokens", [False, True], ids=["latents", "decoder-tokens"])
def test_fused_batched_rows_with_the_same_phase_equal_each_row_alone(tokens):
    """Rows sharing a block size and phase run fused together, with their own seeds, prompts and temperatures."""
    m = tiny_model("vssm", max_position=100, decoder_tokens=tokens)
    prompts = [torch.randint(0, V, (1, 5), generator=torch.Generator().manual_seed(s)) for s in range(3)]
    seeds, temps = [1, 2, 3], [1.0, 0.5, 0.0]
    states = model.GenState.cat([m.start(p, s) for p, s in zip(prompts, seeds, strict=True)])
    tok, st = m.generate(states, 30, temperature=torch.tensor(temps, dtype=F64), block_size=4)
    for i, (p, s, t) in enumerate(zip(prompts, seeds, temps, strict=True)):
        t_alone, s_alone = m.generate(m.start(p, s), 30, temperature=t, block_size=4)
        assert torch.equal(tok[i], t_alone[0])
        for k, v in s_alone.tensors.items():
            torch.testing.assert_close(st[k][i], v[0], rtol=1e-10, atol=1e-12)


def test_blocks_whose_double_passes_would_leave_the_short_path_fuse_only_compiled(monkeypatch):
    """A fused pass is 2c steps: where c fits SHORT and 2c does not, four short passes in PyTorch beat two fused
    ones (VSSM._fused_loop), while the compiled rounds have no short path to leave: such blocks are shared and
    fused there, and run block by block where the compiled rounds cannot run."""
    m = tiny_model("vssm", max_position=200)
    cases = ((SHORT // 2, True), (SHORT // 2 + 1, False), (SHORT, False), (SHORT + 1, True))
    loops = []
    real = model.VSSM._fused_loop
    monkeypatch.setattr(model.VSSM, "_fused_loop", lambda self, *a: loops.append(a) or real(self, *a))
    for rows in (1, 5):
        state = m.start(torch.zeros(rows, 0, dtype=torch.long), list(range(rows)))
        for c, in_torch in cases:
            assert m._shared_block(state, m.block_sizes(c, rows).tolist()) == c, (rows, c)
            assert m._fuses_in_torch(c) is in_torch
            loops.clear()
            with monkeypatch.context() as mp:
                mp.setattr(native, "fused_rounds", lambda: None)  # the rounds in PyTorch
                m.generate(state, 2 * c + 3, block_size=c, resumable=False)
            assert bool(loops) is in_torch, (rows, c)
