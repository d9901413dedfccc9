"""The SDK against a real server on loopback with real Redis: README examples, resume, lost responses."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch

from tests.server.conftest import CHECKPOINTS, RedisServer, ServerProcess, reference
from vssm import model
from vssm_client import AsyncClient, Client, ConflictError

pytestmark = pytest.mark.slow  # end to end: real servers, subprocesses or training runs

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator[tuple[ServerProcess, Path]]:
    """One server with models named as in the README, on its own Redis."""
    d = tmp_path_factory.mktemp("ckpt")
    named = [
        ("shakespeare-vssm", "text-vssm", {}),
        ("shakespeare-vssm-prior", "text-vssm", {"prior_width": 8}),
        ("mnist-vssm", "mnist-vssm", {}),
    ]
    for name, source, extra in named:
        family, dataset, cfg = CHECKPOINTS[source]
        torch.manual_seed(0)
        m = model.build_model(family, {**cfg, **extra})
        if getattr(m, "latent_prior", None) is not None:  # a fresh prior is the plain block prior: make it act
            torch.nn.init.normal_(m.latent_prior.mlp[-1].weight)
        model.save_checkpoint(m, d / f"{name}.safetensors", extra={"dataset": dataset})
    redis = RedisServer(tmp_path_factory.mktemp("redis")).start()
    srv = ServerProcess(d, redis.url).start()
    yield srv, d
    srv.stop()
    redis.stop()


def readme_python_blocks() -> list[str]:
    text = (ROOT / "README.md").read_text()
    return [b for b in re.findall(r"```python\n(.*?)```", text, re.S) if "vssm_client" in b]


def test_readme_sdk_examples_run_as_written(stack, capsys):
    srv, _ = stack
    blocks = readme_python_blocks()
    assert blocks, "README has no SDK example"
    for block in blocks:
        exec(compile(block.replace("http://127.0.0.1:8000", srv.url), "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert "shakespeare-vssm" in out


def test_a_second_client_resumes_the_session(stack):
    srv, d = stack
    with Client(base_url=srv.url) as a, Client(base_url=srv.url) as b:
        s = a.sessions.create(model="mnist-vssm", prompt=[1, 0], seed=5)
        first = s.generate(max_tokens=6)
        s2 = b.sessions.get(s.id)
        assert s2.position == 8
        second = s2.generate(max_tokens=4)
        third = [t for c in s2.stream(max_tokens=5, chunk_size=2) for t in c.tokens]
        assert s2.position == 17
        assert [first.tokens, second.tokens, third] == reference(d, "mnist-vssm", [1, 0], 5, [6, 4, 5])
        with pytest.raises(ConflictError):  # a's handle is stale now: refused, not silently re-run
            s.generate(max_tokens=3)
        assert s.refresh().position == 17


class DropFirstResponse(httpx.HTTPTransport):
    """Sends the request for real, then loses the first response of a matching call."""

    def __init__(self, pattern: str) -> None:
        super().__init__()
        self.pattern, self.dropped, self.calls = pattern, 0, 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        if re.search(self.pattern, request.url.path):
            self.calls += 1
            if self.dropped == 0:
                response.read()
                self.dropped += 1
                raise httpx.ReadError("connection reset by peer", request=request)
        return response


def test_retry_after_a_dropped_response_does_not_advance_twice(stack):
    srv, d = stack
    transport = DropFirstResponse(r"/generate$")
    with Client(base_url=srv.url, transport=transport, max_retries=2) as client:
        client._sleep = lambda seconds: None
        s = client.sessions.create(model="mnist-vssm", prompt=[1], seed=9)
        c = s.generate(max_tokens=7)  # committed on the server, response lost, retried
        assert transport.dropped == 1 and transport.calls == 2
        assert c.tokens == reference(d, "mnist-vssm", [1], 9, [7])[0]
        assert s.position == 8 and client.sessions.get(s.id).position == 8  # advanced once
        assert s.generate(max_tokens=3).tokens == reference(d, "mnist-vssm", [1], 9, [7, 3])[1]


def test_a_latent_prior_session_resumes_mid_block_through_the_store(stack):
    """The latent prior's state inside a block travels with the session (Redis, another client):
    chunks cut anywhere give the model API's own tokens, which a lost prior state would change."""
    srv, d = stack
    expected = reference(d, "shakespeare-vssm-prior", list(b"ROMEO:"), 5, [5, 7, 9])
    with Client(base_url=srv.url) as a, Client(base_url=srv.url) as b:
        s = a.sessions.create(model="shakespeare-vssm-prior", prompt="ROMEO:", seed=5)
        got = [s.generate(max_tokens=5).tokens, b.sessions.get(s.id).generate(max_tokens=7).tokens]
        got.append([t for ch in a.sessions.get(s.id).stream(max_tokens=9, chunk_size=4) for t in ch.tokens])
    assert got == expected
    m = model.load_checkpoint(d / "shakespeare-vssm-prior.safetensors")
    one, _ = m.generate(m.start(torch.tensor([list(b"ROMEO:")]), 5), 21)
    assert [t for chunk in expected for t in chunk] == one[0].tolist()  # and the chunks are one call's tokens


def test_block_sizes_through_the_sdk_give_the_model_api_s_tokens(stack):
    """A session at block size 3 streamed in chunks of 4 (chunks cut blocks), one call overridden to
    block size 1, a completion at 3 and a dropped response's replay: the model API's own tokens."""
    srv, d = stack
    m = model.load_checkpoint(d / "mnist-vssm.safetensors")
    state = m.start(torch.tensor([[1, 0]]), 4)
    a, state = m.generate(state, 10, block_size=3)
    b, state = m.generate(state, 5, block_size=1)
    c, _ = m.generate(state, 6, block_size=3)
    transport = DropFirstResponse(r"/generate$")
    with Client(base_url=srv.url, transport=transport) as client:
        client._sleep = lambda seconds: None
        card = client.models.get("mnist-vssm")
        assert card.default_block_size is None and card.block_curve == []  # no default, no eval JSON
        out = client.completions.create(model="mnist-vssm", prompt=[1, 0], max_tokens=10, seed=4, block_size=3)
        assert out.block_size == 3 and out.tokens == a[0].tolist()
        s = client.sessions.create(model="mnist-vssm", prompt=[1, 0], seed=4, block_size=3)
        first = s.generate(max_tokens=5)  # response dropped once, replayed on retry
        assert transport.dropped == 1 and first.block_size == 3
        tokens = first.tokens + [t for ch in s.stream(max_tokens=5, chunk_size=4) for t in ch.tokens]
        assert tokens == a[0].tolist()
        assert s.generate(max_tokens=5, block_size=1).tokens == b[0].tolist()
        assert client.sessions.get(s.id).block_size == 3
        assert s.generate(max_tokens=6).tokens == c[0].tolist()


class AsyncDropFirstResponse(httpx.AsyncHTTPTransport):
    def __init__(self, pattern: str) -> None:
        super().__init__()
        self.pattern, self.dropped = pattern, 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await super().handle_async_request(request)
        if re.search(self.pattern, request.url.path) and self.dropped == 0:
            await response.aread()
            self.dropped += 1
            raise httpx.ReadError("connection reset by peer", request=request)
        return response


def test_async_client_does_the_same(stack):
    srv, d = stack

    async def main() -> None:
        transport = AsyncDropFirstResponse(r"/generate$")
        async with AsyncClient(base_url=srv.url, transport=transport) as a, AsyncClient(base_url=srv.url) as b:
            a._sleep = _no_sleep
            assert {m.id for m in await a.models.list()} == {"mnist-vssm", "shakespeare-vssm", "shakespeare-vssm-prior"}
            out = await a.completions.create(model="shakespeare-vssm", prompt="ROMEO:", max_tokens=8, seed=2)
            assert out.tokens == reference(d, "shakespeare-vssm", list(b"ROMEO:"), 2, [8])[0]
            streamed = [
                c
                async for c in a.completions.stream(
                    model="shakespeare-vssm", prompt="ROMEO:", max_tokens=8, seed=2, chunk_size=3
                )
            ]
            assert "".join(c.text for c in streamed) == out.text
            s = await a.sessions.create(model="mnist-vssm", prompt=[0, 1], seed=3)
            first = await s.generate(max_tokens=5)  # response dropped once, replayed on retry
            assert transport.dropped == 1
            s2 = await b.sessions.get(s.id)
            second = await s2.generate(max_tokens=4)
            third = [t async for c in s2.stream(max_tokens=3, chunk_size=2) for t in c.tokens]
            assert [first.tokens, second.tokens, third] == reference(d, "mnist-vssm", [0, 1], 3, [5, 4, 3])
            await s2.delete()

    asyncio.run(main())


async def _no_sleep(seconds: float) -> None:
    return None


def test_the_sdk_names_the_observation_temperature_sync_and_async(stack):
    srv, _ = stack
    kw = {"model": "mnist-vssm", "prompt": [1, 0], "max_tokens": 12, "seed": 2}
    with Client(base_url=srv.url) as c:
        own = c.completions.create(**kw)
        assert own.observation_temperature == 1.0  # the model's setting
        mode = c.completions.create(**kw, observation_temperature=0.0, logprobs=1)
        assert mode.observation_temperature == 0.0
        lp = mode.choices[0].logprobs
        assert all(t == max(top.values()) for t, top in zip(lp.token_logprobs, lp.top_logprobs, strict=True))
        streamed = [
            t
            for part in c.completions.stream(**kw, observation_temperature=0.0, chunk_size=5)
            for t in part.choices[0].tokens
        ]
        assert streamed == mode.choices[0].tokens
        s = c.sessions.create(model="mnist-vssm", prompt=[1, 0], seed=2, observation_temperature=0.0)
        assert s.info.observation_temperature == 0.0
        chunk = s.generate(max_tokens=12)
        assert chunk.tokens == mode.choices[0].tokens and chunk.observation_temperature == 0.0
        assert s.generate(max_tokens=3, observation_temperature=1.0).observation_temperature == 1.0

    async def run() -> None:
        async with AsyncClient(base_url=srv.url) as a:
            got = await a.completions.create(**kw, observation_temperature=0.0)
            assert got.choices[0].tokens == mode.choices[0].tokens
            s = await a.sessions.create(model="mnist-vssm", prompt=[1, 0], seed=2)
            first = await s.generate(max_tokens=12, observation_temperature=0.0)
            assert first.tokens == mode.choices[0].tokens

    asyncio.run(run())
