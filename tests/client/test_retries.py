"""Retries: which failures, how many times, how long between them, and never blindly on a session step."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

import vssm_client as vc
from tests.client.fakes import FakeServer, error, make_client
from vssm_client._base import backoff_delay, retry_after_seconds

OK = {"object": "list", "data": []}


def flaky(*failures: Callable[[httpx.Request], httpx.Response]) -> tuple[Callable, list[httpx.Request]]:
    """A handler failing with ``failures`` in turn, then answering 200."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return failures[len(seen) - 1](request) if len(seen) <= len(failures) else httpx.Response(200, json=OK)

    return handler, seen


def raises(exc: type[httpx.TransportError]) -> Callable[[httpx.Request], httpx.Response]:
    def fail(request: httpx.Request) -> httpx.Response:
        raise exc("boom", request=request)

    return fail


def test_429_honours_retry_after() -> None:
    handler, seen = flaky(lambda r: error(429, "overloaded", headers={"Retry-After": "3"}))
    client, sleeps = make_client(handler)
    assert client.models.list() == []
    assert len(seen) == 2 and sleeps == [3.0]


def test_retry_after_is_capped_and_parsed() -> None:
    def resp(value: str) -> httpx.Response:
        return httpx.Response(429, headers={"Retry-After": value})

    assert retry_after_seconds(resp("3600")) == 60.0
    assert retry_after_seconds(resp("1.5")) == 1.5
    assert retry_after_seconds(resp("-4")) == 0.0
    assert retry_after_seconds(resp("Wed, 21 Oct 2015 07:28:00 GMT")) == 0.0  # a date in the past
    assert retry_after_seconds(resp("soon")) is None
    assert retry_after_seconds(httpx.Response(429)) is None


def test_503_backs_off_exponentially_with_jitter() -> None:
    handler, seen = flaky(*[lambda r: error(503, "store_unavailable")] * 3)
    client, sleeps = make_client(handler, max_retries=3)
    client.models.list()
    assert len(seen) == 4
    for attempt, delay in enumerate(sleeps):
        nominal = 0.5 * 2**attempt
        assert 0.75 * nominal <= delay <= nominal


def test_backoff_is_capped() -> None:
    assert backoff_delay(10, 0.5, 8.0, rand=lambda: 0.0) == 8.0
    assert backoff_delay(0, 0.5, 8.0, rand=lambda: 1.0) == 0.375


@pytest.mark.parametrize("exc", [httpx.ConnectError, httpx.ConnectTimeout, httpx.ReadError, httpx.ReadTimeout])
def test_connection_errors_are_retried(exc: type[httpx.TransportError]) -> None:
    handler, seen = flaky(raises(exc), raises(exc))
    client, sleeps = make_client(handler)
    assert client.models.list() == []
    assert len(seen) == 3 and len(sleeps) == 2


def test_max_retries_is_respected() -> None:
    handler, seen = flaky(*[lambda r: error(429, "overloaded", headers={"Retry-After": "1"})] * 10)
    client, sleeps = make_client(handler, max_retries=2)
    with pytest.raises(vc.RateLimitError):
        client.models.list()
    assert len(seen) == 3 and sleeps == [1.0, 1.0]
    handler, seen = flaky(*[raises(httpx.ConnectError)] * 10)
    with pytest.raises(vc.APIConnectionError):
        make_client(handler, max_retries=0)[0].models.list()
    assert len(seen) == 1


def test_with_options_changes_the_retry_budget() -> None:
    handler, seen = flaky(*[lambda r: error(503, "not_ready")] * 10)
    client, _ = make_client(handler, max_retries=5)
    with pytest.raises(vc.ServiceUnavailableError):
        client.with_options(max_retries=1).models.list()
    assert len(seen) == 2


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (400, "invalid_field"),
        (401, "invalid_api_key"),
        (404, "not_found"),
        (409, "session_busy"),
        (413, "body_too_large"),
        (500, "internal_error"),
    ],
)
def test_other_errors_are_not_retried(status: int, code: str) -> None:
    handler, seen = flaky(*[lambda r: error(status, code)] * 3)
    client, sleeps = make_client(handler)
    with pytest.raises(vc.APIStatusError):
        client.models.list()
    assert len(seen) == 1 and sleeps == []


def test_step_without_expected_position_is_not_retried_after_a_lost_response() -> None:
    server = FakeServer()
    client, _ = make_client(server)
    sid = client.sessions.create(model="mnist-vssm", seed=1).id
    server.lose_response = 1
    with pytest.raises(vc.APITimeoutError):
        client.sessions.generate(sid, max_tokens=8)
    assert server.sessions[sid].position == 8  # committed once, not twice
    assert len(server.bodies("/generate")) == 1


def test_step_without_expected_position_is_not_retried_after_a_store_failure() -> None:
    """A 503 store_unavailable may follow a commit that happened: repeating the step could run it twice."""
    server = FakeServer()
    client, _ = make_client(server)
    sid = client.sessions.create(model="mnist-vssm", seed=1).id
    server.commit_unknown = 1
    with pytest.raises(vc.ServiceUnavailableError):
        client.sessions.generate(sid, max_tokens=8)
    server.faults = [lambda r: error(503, "store_unavailable")]
    with pytest.raises(vc.ServiceUnavailableError):
        client.sessions.append(sid, [1, 0])
    assert server.sessions[sid].position == 8  # the first step committed once; the append never ran
    assert len(server.bodies("/generate")) == 1 and len(server.bodies("/append")) == 1
    server.faults = [lambda r: error(503, "not_ready", headers={"Retry-After": "1"})]  # provably did nothing
    assert client.sessions.generate(sid, max_tokens=2).position == 10


def test_steps_with_expected_position_survive_a_store_failure_after_commit() -> None:
    """With expected_position the retry is safe: a committed generate is replayed, a committed append is
    recognised from the session's position; each advances the session once."""
    server = FakeServer()
    client, _ = make_client(server)
    session = client.sessions.create(model="mnist-vssm", seed=1)
    server.commit_unknown = 1
    chunk = session.generate(max_tokens=8)
    assert chunk.replayed and session.position == 8 and server.sessions[session.id].position == 8
    server.commit_unknown = 1
    session.append([1, 0, 1])
    assert session.position == 11 and server.sessions[session.id].position == 11


def test_retry_that_finds_its_lost_attempt_still_committing_gets_the_replay() -> None:
    """The first attempt commits after its response is lost; its retry arrives meanwhile and gets 409
    session_busy; the client sends it once more and the server answers with the replayed chunk."""
    server = FakeServer()
    client, sleeps = make_client(server)
    session = client.sessions.create(model="mnist-vssm", seed=1)
    server.lose_response = 1
    server.faults = [lambda r: None, lambda r: error(409, "session_busy")]
    chunk = session.generate(max_tokens=8)
    assert chunk.replayed and chunk.position == 8 and server.sessions[session.id].position == 8
    assert len(server.bodies("/generate")) == 3 and len(sleeps) == 2
    server.faults = [lambda r: error(409, "session_busy")]  # busy without a lost response: a real conflict
    with pytest.raises(vc.ConflictError):
        session.generate(max_tokens=2)


def test_create_and_fork_send_one_idempotency_key_per_call() -> None:
    """A create or fork retried after a lost response carries the same key, so the server makes it once."""
    server = FakeServer()
    client, _ = make_client(server)
    server.lose_response = 1
    session = client.sessions.create(model="mnist-vssm", seed=1)
    keys = [r.headers["idempotency-key"] for r in server.requests]
    assert len(keys) == 2 and keys[0] == keys[1]
    session.fork()
    client.sessions.create(model="mnist-vssm", idempotency_key="my-job-42")
    keys = [r.headers["idempotency-key"] for r in server.requests]
    assert len(set(keys)) == 3 and keys[-1] == "my-job-42"
    assert all("idempotency-key" not in r.headers for r in server.requests if r.method == "GET")


def test_step_without_expected_position_is_retried_when_never_sent() -> None:
    server = FakeServer()
    client, sleeps = make_client(server)
    sid = client.sessions.create(model="mnist-vssm", seed=1).id
    server.faults = [raises(httpx.ConnectError), lambda r: error(429, "overloaded", headers={"Retry-After": "2"})]
    chunk = client.sessions.generate(sid, max_tokens=8)
    assert chunk.position == 8 and server.sessions[sid].position == 8
    assert len(server.bodies("/generate")) == 3 and sleeps[1] == 2.0


@pytest.mark.parametrize("code", ["session_quota_exceeded", "ttl_quota_exceeded"])
def test_a_quota_429_is_not_retried(code) -> None:
    """Waiting does not cure a quota soon (it frees when the caller's own sessions go): raise at once."""
    handler, seen = flaky(lambda r: error(429, code, headers={"Retry-After": "3000"}))
    client, sleeps = make_client(handler, max_retries=3)
    with pytest.raises(vc.RateLimitError) as info:
        client.sessions.create(model="mnist-vssm")
    assert info.value.code == code and len(seen) == 1 and sleeps == []
