"""Long prompts: a per-model limit on one request's prompt, window-by-window reading through the
batcher (exact, and fair to the other requests)."""

from __future__ import annotations

import itertools
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from tests.server.conftest import reference
from tests.server.test_api import assert_error, make_client


def test_prompt_limit_per_request_and_per_model(checkpoints):
    with make_client(checkpoints, None, max_prompt_tokens=300, max_prompt_tokens_by_model="mnist-vssm=10") as c:
        over = {"model": "text-vssm", "prompt": "é" * 150 + "a", "max_tokens": 1}  # 301 bytes, 151 characters
        err = assert_error(c.post("/v1/completions", json=over), 400, "prompt_too_long", "prompt")
        assert "301" in err["message"] and "300" in err["message"]
        assert_error(c.post("/v1/sessions", json=over), 400, "prompt_too_long", "prompt")
        assert c.post("/v1/completions", json={**over, "prompt": "a" * 300}).status_code == 200
        s = c.post("/v1/sessions", json={"model": "text-vssm", "prompt": "a" * 300}).json()
        r = c.post(f"/v1/sessions/{s['id']}/append", json={"prompt": "b" * 301})
        assert_error(r, 400, "prompt_too_long", "prompt")
        r = c.post(f"/v1/sessions/{s['id']}/append", json={"prompt": "b" * 300, "expected_position": 300})
        assert r.status_code == 200 and r.json()["position"] == 600  # the limit is per request, not per session
        mnist = {"model": "mnist-vssm", "prompt": [0] * 11}
        assert_error(c.post("/v1/completions", json=mnist), 400, "prompt_too_long", "prompt")
        assert c.post("/v1/completions", json={**mnist, "prompt": [0] * 10}).status_code == 200


def test_long_prompts_through_the_server_equal_the_model_api(checkpoints):
    """Several windows, on completions, session create and append (a stored state, windowed)."""
    prompt = list(bytes(range(256))) * 3 + list(b"ROMEO:")  # 774 tokens: four windows of 256 or fewer
    with make_client(checkpoints, None) as c:
        r = c.post("/v1/completions", json={"model": "text-vssm", "prompt": prompt, "max_tokens": 8, "seed": 2, "n": 2})
        expected = [reference(checkpoints, "text-vssm", prompt, seed, [8])[0] for seed in (2, 3)]
        assert [ch["tokens"] for ch in r.json()["choices"]] == expected
        s = c.post("/v1/sessions", json={"model": "text-vssm", "prompt": prompt[:300], "seed": 4}).json()
        r = c.post(f"/v1/sessions/{s['id']}/append", json={"prompt": prompt[300:]})
        assert r.status_code == 200 and r.json()["position"] == len(prompt)
        chunk = c.post(f"/v1/sessions/{s['id']}/generate", json={"max_tokens": 8}).json()
        assert chunk["tokens"] == reference(checkpoints, "text-vssm", prompt, 4, [8])[0]


@pytest.mark.slow
def test_a_long_prompt_does_not_starve_another_model(checkpoints):
    """While a long prompt is read for one model, a 1-token completion on another waits a few of its
    windows, not the whole prompt.  Each window's work is made slow and steady (a sleep per token in
    the worker thread, as a big model's compute would be), so the measure is in windows, not seconds:
    the prompt tokens read while the short request waited, and its time beyond its time alone."""
    per_token = 0.0003  # seconds: a window of 256 tokens takes about 77 ms
    short = {"model": "mnist-ar-gru", "max_tokens": 1}
    with make_client(checkpoints, None, max_prompt_tokens=1 << 20) as c:
        alone = 0.0
        for _ in range(3):  # the short request's own time, on this machine as loaded as it is now
            t0 = time.perf_counter()
            assert c.post("/v1/completions", json=short).status_code == 200
            alone = max(alone, time.perf_counter() - t0)
        m = c.app.state.ctx.registry.get("text-vssm").model
        window = m.append_window
        done: list[tuple[float, int]] = []  # (end time, tokens) of every pass over the long prompt
        started = threading.Event()
        inner = m._append

        def slow(state, tokens: torch.Tensor):
            started.set()
            t0 = time.perf_counter()
            out = inner(state, tokens)
            time.sleep(max(0.0, per_token * tokens.shape[1] - (time.perf_counter() - t0)))
            done.append((time.perf_counter(), tokens.shape[1]))
            return out

        m._append = slow
        n_windows = 24
        long = {"model": "text-vssm", "prompt": "a" * (window * n_windows), "max_tokens": 1}
        with ThreadPoolExecutor(1) as pool:
            first = pool.submit(c.post, "/v1/completions", json=long)
            assert started.wait(30)
            time.sleep(2.5 * per_token * window)  # well inside the prompt
            t0 = time.perf_counter()
            r = c.post("/v1/completions", json=short)
            t1 = time.perf_counter()
            assert r.status_code == 200
            assert first.result(60).status_code == 200
        during = sum(n for end, n in done if t0 < end <= t1)
        assert sum(n for _, n in done) == window * n_windows
        assert during <= 4 * window, f"{during} prompt tokens were read while the short request waited"
        passes = [b - a for (a, _), (b, _) in itertools.pairwise(done)]
        assert t1 - t0 <= alone + 4 * statistics.median(passes), (t1 - t0, alone, statistics.median(passes))
        assert done[-1][0] > t1  # the long prompt was still being read when the short request finished
