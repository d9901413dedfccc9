"""``AsyncClient`` twins of the main sync cases (run with ``asyncio.run``)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest

import vssm_client as vc
from tests.client.fakes import FakeServer, error, make_async_client, sse


def test_models_and_completions() -> None:
    async def main() -> None:
        server = FakeServer()
        async with make_async_client(server)[0] as client:
            assert [m.id for m in await client.models.list()] == ["mnist-vssm", "shakespeare-vssm"]
            assert (await client.models.get("mnist-vssm")).vocab_size == 2
            out = await client.completions.create(model="mnist-vssm", max_tokens=5, seed=2)
            chunks = [
                c async for c in client.completions.stream(model="mnist-vssm", max_tokens=5, seed=2, chunk_size=2)
            ]
        assert [len(c.tokens) for c in chunks] == [2, 2, 1]
        assert [t for c in chunks for t in c.tokens] == out.tokens
        assert client._http.is_closed

    asyncio.run(main())


@pytest.mark.parametrize(
    ("status", "code", "cls"),
    [
        (401, "invalid_api_key", vc.AuthenticationError),
        (404, "session_not_found", vc.SessionNotFoundError),
        (409, "session_busy", vc.ConflictError),
    ],
)
def test_errors_are_typed_and_not_retried(status: int, code: str, cls: type[vc.APIStatusError]) -> None:
    async def main() -> None:
        client, sleeps = make_async_client(lambda r: error(status, code))
        with pytest.raises(cls) as info:
            await client.sessions.get("sess_x")
        assert info.value.request_id == "req_123" and sleeps == []

    asyncio.run(main())


def test_retries_honour_retry_after_and_backoff() -> None:
    async def main() -> None:
        answers = [
            error(429, "overloaded", headers={"Retry-After": "2"}),
            error(503, "store_unavailable"),
            httpx.Response(200, json={"object": "list", "data": []}),
        ]
        client, sleeps = make_async_client(lambda r: answers.pop(0))
        assert await client.models.list() == []
        assert sleeps[0] == 2.0 and 0.75 <= sleeps[1] <= 1.0

        def refuse(request: httpx.Request) -> httpx.Response:
            raise httpx.ConnectError("refused", request=request)

        client, sleeps = make_async_client(refuse, max_retries=1)
        with pytest.raises(vc.APIConnectionError):
            await client.models.list()
        assert len(sleeps) == 1

    asyncio.run(main())


def test_session_steps_and_replay() -> None:
    async def main() -> None:
        server = FakeServer()
        client, _ = make_async_client(server)
        s = await client.sessions.create(model="mnist-vssm", prompt=[0, 0], seed=5)
        assert isinstance(s, vc.AsyncSession)
        c = await s.generate(max_tokens=3)
        assert (c.position, s.position) == (5, 5)
        server.lose_response = 1
        replay = await s.generate(max_tokens=4)
        assert replay.replayed and s.position == 9 and server.sessions[s.id].position == 9
        assert [b.get("expected_position") for b in server.bodies("/generate")] == [2, 5, 5]
        positions = [(ch.position, s.position) async for ch in s.stream(max_tokens=6, chunk_size=4)]
        assert positions == [(13, 13), (15, 15)]
        await s.append([1, 1])
        t = await s.fork()
        assert t.position == 17 and (await client.sessions.get(t.id)).position == 17
        assert (await s.refresh()).position == 17
        assert (await s.delete()).deleted
        server.lose_response = 1
        assert (await client.sessions.append(t.id, [0], expected_position=17)).position == 18
        server.lose_response = 1  # lost, and the retry finds the first attempt still committing
        server.faults = [lambda r: None, lambda r: error(409, "session_busy")]
        busy = await client.sessions.generate(t.id, max_tokens=2, expected_position=18)
        assert busy.replayed and busy.position == 20 and server.sessions[t.id].position == 20

    asyncio.run(main())


def test_stream_in_band_error_and_no_retry_mid_stream() -> None:
    async def main() -> None:
        first = {"object": "session.chunk", "session_id": "s", "start_position": 0, "position": 2, "tokens": [0, 1]}
        err = {"error": {"message": "busy", "type": "conflict_error", "code": "session_busy"}}
        client, sleeps = make_async_client(lambda r: httpx.Response(200, content=sse(first, err, done=False)))
        got = []
        with pytest.raises(vc.ConflictError):
            async for chunk in client.sessions.stream("s", max_tokens=4, expected_position=0):
                got.append(chunk)
        assert len(got) == 1 and sleeps == []

        calls = []

        def broken(request: httpx.Request) -> httpx.Response:
            calls.append(request)

            async def body() -> AsyncIterator[bytes]:
                yield sse(first, done=False)
                raise httpx.ReadError("reset", request=request)

            return httpx.Response(200, content=body())

        client, sleeps = make_async_client(broken)
        async with client.sessions.stream("s", max_tokens=4, expected_position=0) as stream:
            with pytest.raises(vc.APIConnectionError):
                async for _ in stream:
                    pass
        assert len(calls) == 1 and sleeps == []

    asyncio.run(main())


def test_env_fallbacks_and_injected_client(monkeypatch: pytest.MonkeyPatch) -> None:
    async def main() -> None:
        seen = []

        def handler(request: httpx.Request) -> httpx.Response:
            seen.append(request)
            return httpx.Response(200, json={"object": "list", "data": []})

        monkeypatch.setenv("VSSM_BASE_URL", "http://env-host:1")
        monkeypatch.setenv("VSSM_API_KEY", "k")
        http = httpx.AsyncClient(transport=httpx.MockTransport(handler))
        async with vc.AsyncClient(http_client=http) as client:
            await client.models.list()
        assert str(seen[0].url) == "http://env-host:1/v1/models" and seen[0].headers["authorization"] == "Bearer k"
        assert not http.is_closed
        await http.aclose()

    asyncio.run(main())
