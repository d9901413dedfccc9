"""Session handles: positions, expected_position, replay after a lost response, resuming anywhere."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

import vssm_client as vc
from tests.client.fakes import FakeServer, error, make_client, sampled, sse


@pytest.fixture
def server() -> FakeServer:
    return FakeServer()


@pytest.fixture
def client(server: FakeServer) -> vc.Client:
    return make_client(server)[0]


def test_create_holds_metadata_and_tolerates_unknown_fields(client: vc.Client, server: FakeServer) -> None:
    s = client.sessions.create(model="mnist-vssm", prompt=[0, 1, 1], seed=7, ttl_seconds=60)
    assert isinstance(s, vc.Session)
    assert (s.model, s.position, s.seed, s.ttl_seconds, s.state_bytes) == ("mnist-vssm", 3, 7, 60, 117412)
    assert s.expires_at == s.created_at + 60 and s.chunk is None
    assert s.info.model_extra == {"future_field": "ignored by old clients"}
    assert server.bodies("/sessions")[0] == {"model": "mnist-vssm", "prompt": [0, 1, 1], "seed": 7, "ttl_seconds": 60}
    assert repr(s) == f"Session(id={s.id!r}, model='mnist-vssm', position=3)"


def test_create_with_max_tokens_returns_the_first_chunk(client: vc.Client) -> None:
    s = client.sessions.create(model="mnist-vssm", prompt=[0], seed=7, max_tokens=5)
    assert s.position == 6 and s.chunk is not None and s.chunk.tokens == sampled(7, 1, 5)


def test_generate_sends_expected_position_and_advances(client: vc.Client, server: FakeServer) -> None:
    s = client.sessions.create(model="mnist-vssm", prompt=[0] * 4, seed=7)
    c1 = s.generate(max_tokens=3)
    c2 = s.generate(max_tokens=2, temperature=0.5)
    assert (c1.start_position, c1.position, c2.start_position, s.position) == (4, 7, 7, 9)
    assert c1.tokens + c2.tokens == sampled(7, 4, 5) and s.chunk == c2
    assert server.bodies("/generate") == [
        {"max_tokens": 3, "expected_position": 4},
        {"max_tokens": 2, "temperature": 0.5, "expected_position": 7},
    ]


def test_lost_response_is_retried_and_replayed_not_regenerated(client: vc.Client, server: FakeServer) -> None:
    s = client.sessions.create(model="mnist-vssm", seed=7, max_tokens=4)
    server.lose_response = 1  # the server commits, the response never arrives
    chunk = s.generate(max_tokens=8)
    assert chunk.replayed and (chunk.start_position, chunk.position) == (4, 12)
    assert chunk.tokens == sampled(7, 4, 8)
    assert s.position == 12 and server.sessions[s.id].position == 12  # advanced once
    bodies = server.bodies("/generate")
    assert len(bodies) == 2 and bodies[0] == bodies[1]  # the retry is the same request


def test_retry_that_finds_another_writer_raises_conflict(client: vc.Client, server: FakeServer) -> None:
    s = client.sessions.create(model="mnist-vssm", seed=7)

    def other_writer_then_drop(request: httpx.Request) -> httpx.Response:
        server.step(server.sessions[s.id], 3)  # someone else commits first
        raise httpx.ReadTimeout("lost", request=request)

    server.faults = [other_writer_then_drop]
    with pytest.raises(vc.ConflictError) as info:
        s.generate(max_tokens=8)
    assert info.value.code == "position_mismatch" and s.position == 0
    assert s.refresh().position == 3


def test_stale_handle_gets_conflict_without_retry(client: vc.Client, server: FakeServer) -> None:
    s = client.sessions.create(model="mnist-vssm", seed=7)
    client.sessions.get(s.id).generate(max_tokens=2)  # another handle moves the session
    n = len(server.requests)
    with pytest.raises(vc.ConflictError):
        s.generate(max_tokens=3)  # (the same max_tokens would be answered with a replay)
    assert len(server.requests) == n + 1
    s.refresh()
    assert s.generate(max_tokens=2).start_position == 2


def test_stream_advances_position_per_chunk(client: vc.Client, server: FakeServer) -> None:
    s = client.sessions.create(model="mnist-vssm", seed=7, prompt=[1])
    positions = [(c.position, s.position) for c in s.stream(max_tokens=10, chunk_size=4)]
    assert positions == [(5, 5), (9, 9), (11, 11)]
    assert server.bodies("/generate")[0] == {"max_tokens": 10, "expected_position": 1, "stream": True, "chunk_size": 4}


def test_broken_stream_leaves_position_at_last_chunk_and_resumes(client: vc.Client, server: FakeServer) -> None:
    s = client.sessions.create(model="mnist-vssm", seed=7)

    def break_after_one_chunk(request: httpx.Request) -> httpx.Response:
        first = server.step(server.sessions[s.id], 4)

        def body() -> Iterator[bytes]:
            yield sse(first, done=False)
            raise httpx.RemoteProtocolError("peer closed", request=request)

        return httpx.Response(200, content=body())

    server.faults = [break_after_one_chunk]
    with pytest.raises(vc.APIConnectionError):
        for _ in s.stream(max_tokens=12, chunk_size=4):
            pass
    assert s.position == 4 and len(server.bodies("/generate")) == 1  # no retry mid-stream
    rest = list(s.stream(max_tokens=8, chunk_size=4))
    assert s.position == 12 and [t for c in rest for t in c.tokens] == sampled(7, 4, 8)


def test_append_fork_refresh_delete_and_get(client: vc.Client, server: FakeServer) -> None:
    s = client.sessions.create(model="shakespeare-vssm", prompt="ab", seed=1)
    assert s.append("héllo") is s and s.position == 2 + 6  # bytes, not characters
    assert server.bodies("/append")[0] == {"prompt": "héllo", "expected_position": 2}
    t = s.fork()
    assert t.id != s.id and t.position == s.position
    t.generate(max_tokens=4)
    assert s.refresh().position == 8 and t.position == 12
    resumed = client.sessions.get(t.id)
    assert (resumed.id, resumed.position) == (t.id, 12)
    assert s.delete() == vc.SessionDeleted(id=s.id, object="session.deleted", deleted=True)
    with pytest.raises(vc.SessionNotFoundError):
        client.sessions.get(s.id)


def test_append_committed_before_a_lost_response_is_recognised(client: vc.Client, server: FakeServer) -> None:
    s = client.sessions.create(model="mnist-vssm", seed=1)
    server.lose_response = 1
    assert s.append([1, 0, 1]).position == 3
    assert server.sessions[s.id].position == 3 and len(server.bodies("/append")) == 2


def test_append_conflict_that_is_not_ours_is_raised(client: vc.Client, server: FakeServer) -> None:
    s = client.sessions.create(model="mnist-vssm", seed=1)

    def other_writer_then_drop(request: httpx.Request) -> httpx.Response:
        server.step(server.sessions[s.id], 5)
        raise httpx.ReadError("lost", request=request)

    server.faults = [other_writer_then_drop]
    with pytest.raises(vc.ConflictError):
        s.append([1, 0, 1])


def test_delete_retried_after_a_lost_response_counts_as_done(client: vc.Client, server: FakeServer) -> None:
    s = client.sessions.create(model="mnist-vssm")
    server.lose_response = 1
    assert client.sessions.delete(s.id).deleted and s.id not in server.sessions
    with pytest.raises(vc.SessionNotFoundError):
        client.sessions.delete(s.id)  # a plain 404 is still an error


def test_session_ids_are_path_quoted() -> None:
    paths = []

    def handler(request: httpx.Request) -> httpx.Response:
        paths.append(request.url.raw_path)
        return error(404, "session_not_found")

    with pytest.raises(vc.SessionNotFoundError):
        make_client(handler)[0].sessions.get("../models")
    assert paths == [b"/v1/sessions/..%2Fmodels"]
