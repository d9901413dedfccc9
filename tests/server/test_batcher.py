"""The dynamic batcher on its own: stored states decode in the worker, and a bad one fails alone."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import torch

from tests.conftest import tiny_model
from tests.test_generation import _states_equal, as_format_1
from vssm.model import GenState, StateError
from vssm.model.state import STATE_FORMAT
from vssm.server.batcher import Batcher
from vssm.server.metrics import Metrics
from vssm.server.registry import ServedModel


def test_stored_states_batch_with_live_ones_and_a_bad_one_fails_alone():
    m = tiny_model("vssm")
    other = tiny_model("vssm", seed=1)  # same family, other weights: its states must be refused
    served = ServedModel("m", m, text=False, created=0, state_bytes=0)
    empty = torch.zeros(1, 0, dtype=torch.long)
    good = m.append(m.start(empty, 3), torch.tensor([[1, 0, 1]]))
    live = m.start(empty, 4)

    metrics = Metrics()

    async def main() -> list:
        with ThreadPoolExecutor(1) as pool:
            b = Batcher(served, metrics, pool, window_ms=200.0)  # one batch for all four
            b.start()
            try:
                return await asyncio.gather(
                    b.generate_stored(good.to_bytes(), 5, 1.0),
                    b.generate_stored(other.start(empty, 3).to_bytes(), 5, 1.0),
                    b.generate_stored(b"not a state", 5, 1.0),
                    b.generate(live, 5, 1.0),
                    return_exceptions=True,
                )
            finally:
                await b.stop()

    (tokens, blob), foreign, garbage, (live_tokens, _) = asyncio.run(main())
    ref_tokens, ref_next = m.generate(good, 5)
    assert torch.equal(tokens, ref_tokens) and isinstance(blob, bytes)
    assert torch.equal(m.generate(GenState.from_bytes(blob), 2)[0], m.generate(ref_next, 2)[0])
    assert torch.equal(live_tokens, m.generate(live, 5)[0])
    assert isinstance(foreign, StateError) and isinstance(garbage, StateError)
    calls = metrics.registry.get_sample_value("vssm_batch_rows_count", {"model": "m"})
    rows = metrics.registry.get_sample_value("vssm_batch_rows_sum", {"model": "m"})
    assert (calls, rows) == (1, 4)  # all four went into one model call


def test_rows_with_different_block_sizes_share_one_call_and_get_their_own_tokens():
    """Block sizes 1, 3, one pass (0) and the model's default (None), at different positions, live and
    stored: one model call, and each job's tokens and next state are those it gets alone."""
    m = tiny_model("vssm")
    m.default_block_size = 2
    served = ServedModel("m", m, text=False, created=0, state_bytes=0)
    states = [m.start(torch.tensor([[1, 0, 1, 1, 0][:k]]), 10 + k) for k in range(4)]  # positions 0..3
    sizes = [1, 3, 0, None]
    metrics = Metrics()

    async def main() -> list:
        with ThreadPoolExecutor(1) as pool:
            b = Batcher(served, metrics, pool, window_ms=200.0)
            b.start()
            try:
                return await asyncio.gather(
                    b.generate(states[0], 7, 1.0, block_size=sizes[0]),
                    b.generate_stored(states[1].to_bytes(), 7, 0.5, block_size=sizes[1]),
                    b.generate(states[2], 7, 1.0, block_size=sizes[2]),
                    b.generate_stored(states[3].to_bytes(), 7, 1.0, block_size=sizes[3]),
                )
            finally:
                await b.stop()

    results = asyncio.run(main())
    assert metrics.registry.get_sample_value("vssm_batch_rows_count", {"model": "m"}) == 1  # one model call
    one_pass = m.max_position or 10**6
    for (tokens, nxt), state, size, temp in zip(results, states, sizes, [1.0, 0.5, 1.0, 1.0], strict=True):
        block = 2 if size is None else size or one_pass
        alone, alone_next = m.generate(state, 7, temperature=temp, block_size=block)
        assert torch.equal(tokens, alone), size
        nxt = GenState.from_bytes(nxt) if isinstance(nxt, bytes) else nxt
        assert torch.equal(m.generate(nxt, 5, block_size=block)[0], m.generate(alone_next, 5, block_size=block)[0])
    differ = [m.generate(states[0], 7, block_size=c)[0] for c in (1, one_pass)]
    assert not torch.equal(*differ)  # the block size changes these tokens: the test can fail


def test_rows_with_different_observation_temperatures_share_one_call_and_get_their_own_tokens():
    """Ratios 0, 0.5 and the model's (None: 0.25), live and stored: one model call, each job's tokens
    those it gets alone."""
    m = tiny_model("vssm")
    m.observation_temperature = 0.25
    served = ServedModel("m", m, text=False, created=0, state_bytes=0)
    states = [m.start(torch.tensor([[1, 0, 1][:k]]), 20 + k) for k in range(3)]
    ratios = [0.0, 0.5, None]
    metrics = Metrics()

    async def main() -> list:
        with ThreadPoolExecutor(1) as pool:
            b = Batcher(served, metrics, pool, window_ms=200.0)
            b.start()
            try:
                return await asyncio.gather(
                    b.generate(states[0], 9, 1.0, ratio=ratios[0]),
                    b.generate_stored(states[1].to_bytes(), 9, 1.0, ratio=ratios[1]),
                    b.generate(states[2], 9, 1.0, ratio=ratios[2]),
                )
            finally:
                await b.stop()

    results = asyncio.run(main())
    assert metrics.registry.get_sample_value("vssm_batch_rows_count", {"model": "m"}) == 1  # one model call
    for (tokens, _), state, ratio in zip(results, states, [0.0, 0.5, 0.25], strict=True):
        assert torch.equal(tokens, m.generate(state, 9, observation_temperature=ratio)[0]), ratio
    differ = [m.generate(states[1], 9, observation_temperature=r)[0] for r in (0.0, 1.0)]
    assert not torch.equal(*differ)  # the ratio changes these tokens: the test can fail


def _stored_together(served: ServedModel, metrics: Metrics, blobs: list[bytes], n: int) -> list:
    """``generate_stored`` of ``n`` tokens for every blob, in one batch; each result or exception."""

    async def main() -> list:
        with ThreadPoolExecutor(1) as pool:
            b = Batcher(served, metrics, pool, window_ms=200.0)
            b.start()
            try:
                return await asyncio.gather(*[b.generate_stored(x, n, 1.0) for x in blobs], return_exceptions=True)
            finally:
                await b.stop()

    return asyncio.run(main())


def test_sessions_alone_in_a_call_read_and_write_their_states_at_once_and_a_bad_one_fails_alone(monkeypatch):
    """A call of stored states only (the sessions' chunks) reads them in one go and writes one blob per
    session; each session gets the tokens and next state it gets alone, and a bad blob among them
    fails its own request only."""
    m = tiny_model("vssm")
    served = ServedModel("m", m, text=False, created=0, state_bytes=0)
    states = [m.start(torch.tensor([[1, 0, 1, 1, 0][:k]]), 20 + k) for k in range(4)]
    metrics = Metrics()

    def one_by_one(*_: object, **__: object) -> GenState:
        raise AssertionError("read blob by blob")

    for bad in (None, 2):
        blobs = [s.to_bytes() for s in states]
        with monkeypatch.context() as patch:
            if bad is None:  # read at once: reading them one by one would fail every session
                patch.setattr(GenState, "from_bytes", one_by_one)
            else:
                blobs[bad] = blobs[bad][:-8]
            results = _stored_together(served, metrics, blobs, 6)
        for k, (state, got) in enumerate(zip(states, results, strict=True)):
            if k == bad:
                assert isinstance(got, StateError)
                continue
            tokens, blob = got
            ref_tokens, ref_next = m.generate(state, 6)
            assert torch.equal(tokens, ref_tokens) and _states_equal(GenState.from_bytes(blob), ref_next)
    assert metrics.registry.get_sample_value("vssm_batch_rows_count", {"model": "m"}) == 2  # one call each time


def test_a_state_that_reads_but_does_not_fit_fails_its_own_session_alone():
    """A stored state of the right model whose tensors do not fit it (here the decoder's modes) reads and
    checks, and the model call of the whole batch fails: each job then runs alone, so only its session
    fails, and the others get what they get alone."""
    m = tiny_model("vssm")
    served = ServedModel("m", m, text=False, created=0, state_bytes=0)
    states = [m.start(torch.tensor([[1, 0, 1][:k]]), 30 + k) for k in range(3)]
    dec = states[1]["dec"]
    misfit = states[1].evolve(dec=torch.zeros(*dec.shape[:-1], dec.shape[-1] + 1, dtype=dec.dtype))
    blobs = [states[0].to_bytes(), misfit.to_bytes(), states[2].to_bytes()]
    metrics = Metrics()
    first, failed, last = _stored_together(served, metrics, blobs, 4)
    assert isinstance(failed, Exception)
    for state, (tokens, blob) in ((states[0], first), (states[2], last)):
        ref_tokens, ref_next = m.generate(state, 4)
        assert torch.equal(tokens, ref_tokens) and _states_equal(GenState.from_bytes(blob), ref_next)
    assert metrics.registry.get_sample_value("vssm_batch_rows_count", {"model": "m"}) == 1  # one batch, then alone
    assert metrics.registry.get_sample_value("vssm_model_seconds_count", {"model": "m"}) == 4  # the batch failed


def test_sessions_of_both_state_formats_in_one_batch_each_go_on():
    """Stored states of this release and of the one before (format 1: docs/api.md) in one batch: all format 1 is
    read and converted at once, a mix job by job; every session gets what its state in this release's format
    gets, and the next state comes back in this release's format."""
    m = tiny_model("vssm")
    served = ServedModel("m", m, text=False, created=0, state_bytes=0)
    states = [m.generate(m.start(torch.tensor([[1, 0, 1, 1][:k]]), 40 + k), 5, block_size=3)[1] for k in range(4)]
    old = [as_format_1(m, s) for s in states]
    metrics = Metrics()
    for blobs in ([old[0], old[1], old[2]], [old[0], states[1].to_bytes(), old[3]]):
        results = _stored_together(served, metrics, blobs, 6)
        for blob, (tokens, nxt) in zip(blobs, results, strict=True):
            state = states[next(k for k in range(4) if blob in (old[k], states[k].to_bytes()))]
            ref_tokens, ref_next = m.generate(state, 6)
            got = GenState.from_bytes(nxt)
            assert torch.equal(tokens, ref_tokens) and got.format == STATE_FORMAT
            for k, v in ref_next.tensors.items():  # a converted state is this release's up to one rounding
                torch.testing.assert_close(got[k], v, rtol=1e-12, atol=1e-12)
