"""Per-key quotas on live sessions and on their total TTL, with the in-process store and real Redis."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from starlette.types import Receive, Scope, Send

from tests.server.test_api import assert_error
from vssm.server import Settings, create_app
from vssm.server.store import StoreUnavailable

A = {"Authorization": "Bearer key-a"}
B = {"Authorization": "Bearer key-b"}


@pytest.fixture(params=["memory", "redis"])
def quota_client(request, checkpoints) -> Iterator:
    """``make(**settings)`` -> a TestClient on the in-process store or on a real redis-server."""
    url = request.getfixturevalue("redis").url if request.param == "redis" else None
    opened: list[TestClient] = []

    def make(wrap=None, **settings) -> TestClient:
        app = create_app(Settings(checkpoints=checkpoints, redis_url=url, **settings))
        c = TestClient(wrap(app) if wrap else app, raise_server_exceptions=False).__enter__()
        opened.append(c)
        return c

    yield make
    for c in opened:
        c.__exit__(None, None, None)


def create(c: TestClient, headers: dict | None = None, **body):
    return c.post("/v1/sessions", json={"model": "mnist-vssm", **body}, headers=headers)


def test_live_sessions_per_key(quota_client):
    c = quota_client(api_keys=["key-a", "key-b"], max_sessions_per_key=2)
    first = create(c, A, max_tokens=2, ttl_seconds=120).json()
    create(c, A, seed=1)
    r = create(c, A)
    err = assert_error(r, 429, "session_quota_exceeded")
    assert "2 live sessions" in err["message"] and err["type"] == "rate_limit_error"
    assert 1 <= int(r.headers["retry-after"]) <= 120
    assert_error(c.post(f"/v1/sessions/{first['id']}/fork", headers=A), 429, "session_quota_exceeded")
    # another key has its own quota; one-shot completions and the existing sessions are not limited
    assert create(c, B).status_code == 201
    assert c.post("/v1/completions", json={"model": "mnist-vssm", "max_tokens": 2}, headers=A).status_code == 200
    assert c.post(f"/v1/sessions/{first['id']}/generate", json={"max_tokens": 2}, headers=A).status_code == 200
    # deleting one frees its place
    assert c.delete(f"/v1/sessions/{first['id']}", headers=A).status_code == 200
    fork_source = create(c, A).json()
    assert_error(create(c, A), 429, "session_quota_exceeded")
    c.delete(f"/v1/sessions/{fork_source['id']}", headers=A)
    # a repeat of a create with its Idempotency-Key is the same session, not another one
    key = {**A, "Idempotency-Key": "once"}
    made = create(c, key, seed=5)
    assert made.status_code == 201
    assert create(c, key, seed=5).json()["id"] == made.json()["id"]


def test_total_ttl_per_key(quota_client):
    c = quota_client(api_keys=["key-a"], max_sessions_per_key=0, max_total_ttl_per_key=100)
    s = create(c, A, ttl_seconds=60).json()
    r = create(c, A, ttl_seconds=50)
    err = assert_error(r, 429, "ttl_quota_exceeded")
    assert "60" in err["message"] and "100" in err["message"]
    assert 1 <= int(r.headers["retry-after"]) <= 60
    assert create(c, A, ttl_seconds=40).status_code == 201
    assert_error(c.post(f"/v1/sessions/{s['id']}/fork", headers=A), 429, "ttl_quota_exceeded")
    assert c.post(f"/v1/sessions/{s['id']}/fork", json={"ttl_seconds": 1}, headers=A).status_code == 429
    c.delete(f"/v1/sessions/{s['id']}", headers=A)
    assert create(c, A, ttl_seconds=60).status_code == 201


@pytest.mark.slow
def test_expiry_frees_the_quota_and_use_keeps_a_session_counting(quota_client):
    c = quota_client(max_sessions_per_key=1)
    s = create(c, ttl_seconds=1).json()
    time.sleep(0.6)
    assert c.get(f"/v1/sessions/{s['id']}").status_code == 200  # refreshes its TTL, and its count
    time.sleep(0.6)
    assert_error(create(c), 429, "session_quota_exceeded")  # 1.2 s after it was made, still counting
    time.sleep(1.1)
    assert c.get(f"/v1/sessions/{s['id']}").status_code == 404
    assert create(c).status_code == 201


def from_address(app):
    """The test's stand-in for requests from several hosts: the client address from a header."""

    async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            host = dict(scope["headers"]).get(b"x-test-address", b"10.0.0.1").decode()
            scope = {**scope, "client": (host, 40000)}
        await app(scope, receive, send)

    wrapped.state = app.state  # type: ignore[attr-defined]  # where tests reach the app's context
    return wrapped


def test_without_keys_each_client_address_has_its_own_quota(quota_client):
    c = quota_client(wrap=from_address, max_sessions_per_key=1)
    one, two = {"X-Test-Address": "10.0.0.1"}, {"X-Test-Address": "10.0.0.2"}
    s = create(c, one).json()
    assert_error(create(c, one), 429, "session_quota_exceeded")
    assert create(c, two).status_code == 201
    # sessions are still shared without keys: the quota is the only thing an address changes
    assert c.get(f"/v1/sessions/{s['id']}", headers=two).status_code == 200


def test_a_create_that_fails_gives_its_place_back(quota_client):
    c = quota_client(max_sessions_per_key=1)
    store = c.app.state.ctx.store
    real = store.create

    async def down(rec):
        raise StoreUnavailable("down for the test")

    store.create = down
    try:
        assert_error(create(c), 503, "store_unavailable")
    finally:
        store.create = real
    assert create(c).status_code == 201


def count_refreshes(store) -> list[tuple]:
    """The quota refreshes of their own (``store.touch``) that the server makes from now on, as their
    arguments ``(holder, sid, ttl_seconds)``."""
    calls: list[tuple] = []
    real = store.touch

    async def counted(*args):
        calls.append(args)
        return await real(*args)

    store.touch = counted
    return calls


def quota_deadline(c: TestClient, holder: str, sid: str) -> float:
    """When session ``sid``'s quota entry for ``holder`` expires, on its store's clock (seconds)."""
    store = c.app.state.ctx.store
    if store.kind == "memory":
        return store._quotas.held[holder][sid][0]
    import redis as redis_sync

    r = redis_sync.Redis.from_url(c.app.state.ctx.settings.redis_url)
    return r.zscore(f"vssm:session:quota:{{{holder}}}", sid) / 1000


def address_holder(host: str) -> str:
    """The quota holder the server derives for a client address without keys (deps.get_holder)."""
    return "addr:" + hashlib.sha256(host.encode()).hexdigest()[:24]


@pytest.mark.parametrize("fold", [True, False])
def test_after_writes_a_quota_entry_outlives_its_session(redis, checkpoints, fold):
    """Folded (a single Redis), the session's read and write refresh its quota entry in their own
    scripts; else (the path a Cluster takes, or ``redis_fold_quotas`` off) the read's refresh runs
    beside the model call, the write's once the write is acknowledged, in a task of its own.  Either
    way, on the Redis clock the entry ends up expiring after the session, never before (polled: nobody
    waits for the second refresh)."""
    import redis as redis_sync

    from vssm.server.deps import owner_of

    settings = Settings(
        checkpoints=checkpoints, redis_url=redis.url, api_keys=["key-a"], max_sessions_per_key=3, redis_fold_quotas=fold
    )
    r = redis_sync.Redis.from_url(redis.url)
    with TestClient(create_app(settings)) as c:
        store = c.app.state.ctx.store
        assert store.fold_quotas == fold  # VSSM_REDIS_FOLD_QUOTAS
        touches = count_refreshes(store)
        sid = create(c, A, ttl_seconds=30).json()["id"]
        zset = f"vssm:session:quota:{{key:{owner_of('key-a')}}}"
        calls = [("generate", {"max_tokens": 3}), ("append", {"prompt": [1, 0]}), ("generate", {"max_tokens": 2})]
        for call, body in calls:
            assert c.post(f"/v1/sessions/{sid}/{call}", json=body, headers=A).status_code == 200
            seconds, micros = r.time()
            session_expiry = seconds * 1000 + micros // 1000 + r.pttl(f"vssm:session:{{{sid}}}")
            deadline = time.monotonic() + 2
            while r.zscore(zset, sid) < session_expiry and time.monotonic() < deadline:
                time.sleep(0.01)
            assert session_expiry <= r.zscore(zset, sid) <= session_expiry + 1000
        assert len(touches) == (0 if fold else 2 * len(calls))  # folded: no call of its own


def test_a_failed_quota_refresh_before_the_write_fails_the_call_and_writes_nothing(quota_client, monkeypatch):
    """Where the store does not refresh quotas in its reads and writes (a Cluster's quota keys are
    another slot), the read's refresh runs beside the model call: if it failed, the call is a 503 and
    nothing is committed (as when it ran before the model), and a retry of the same call makes the chunk.
    A failed refresh after the write fails nothing: the chunk is committed and returned."""
    c = quota_client(api_keys=["key-a"], max_sessions_per_key=3)
    sid = create(c, A).json()["id"]
    store = c.app.state.ctx.store
    monkeypatch.setattr(store, "fold_quotas", False)
    real = store.touch
    calls = []

    async def first_fails(*args, **kwargs):
        calls.append(args)
        if len(calls) == 1:
            raise StoreUnavailable("the quota refresh failed")
        return await real(*args, **kwargs)

    monkeypatch.setattr(store, "touch", first_fails)
    body = {"max_tokens": 4, "expected_position": 0}
    assert_error(c.post(f"/v1/sessions/{sid}/generate", json=body, headers=A), 503, "store_unavailable")
    monkeypatch.setattr(store, "touch", real)
    assert c.get(f"/v1/sessions/{sid}", headers=A).json()["position"] == 0  # nothing was written
    again = c.post(f"/v1/sessions/{sid}/generate", json=body, headers=A)
    assert again.status_code == 200 and again.json()["position"] == 4

    async def after_write_fails(*args, **kwargs):
        calls.append(args)
        if len(calls) % 2 == 0:  # the read's refresh (odd) passes, the write's (even) fails
            raise StoreUnavailable("the quota refresh failed")
        return await real(*args, **kwargs)

    calls.clear()
    monkeypatch.setattr(store, "touch", after_write_fails)
    done = c.post(f"/v1/sessions/{sid}/generate", json={"max_tokens": 2, "expected_position": 4}, headers=A)
    assert done.status_code == 200 and done.json()["position"] == 6
    monkeypatch.setattr(store, "touch", real)
    assert c.get(f"/v1/sessions/{sid}", headers=A).json()["position"] == 6


def test_reads_and_writes_refresh_the_quota_in_the_same_call(quota_client):
    """Folded, a chunk's read and write refresh the session's quota entry themselves: no refresh call of
    its own, and the entry's expiry moves with every call; a read by a caller whose quota the session
    does not count against (another address, without keys) refreshes its holder's entry with a call of
    its own."""
    c = quota_client(wrap=from_address, max_sessions_per_key=1)
    one, two = {"X-Test-Address": "10.0.0.1"}, {"X-Test-Address": "10.0.0.2"}
    store = c.app.state.ctx.store
    assert store.fold_quotas
    sid = create(c, one, ttl_seconds=60).json()["id"]
    holder = address_holder("10.0.0.1")
    touched = count_refreshes(store)
    calls = [
        lambda: c.post(f"/v1/sessions/{sid}/generate", json={"max_tokens": 3, "expected_position": 0}, headers=one),
        lambda: c.post(f"/v1/sessions/{sid}/append", json={"prompt": [1]}, headers=one),
        lambda: c.get(f"/v1/sessions/{sid}", headers=one),
    ]
    for call in calls:
        before = quota_deadline(c, holder, sid)
        time.sleep(0.002)  # past the Redis clock's millisecond
        assert call().status_code == 200
        assert quota_deadline(c, holder, sid) > before
    assert touched == []
    assert_error(create(c, one), 429, "session_quota_exceeded")
    assert c.get(f"/v1/sessions/{sid}", headers=two).json()["position"] == 4
    assert touched == [(holder, sid, 60)]  # the session's holder's entry, not two's


def test_a_record_without_its_holder_field_is_refreshed_by_its_caller(redis, checkpoints):
    """A record written by a server from before sessions kept their holder in a field of their own: its
    read cannot refresh the quota in the script, so the server does it with a call of its own; its next
    write stores the field, and from then on the reads refresh it themselves."""
    import redis as redis_sync

    from vssm.server.deps import owner_of

    app = create_app(Settings(checkpoints=checkpoints, redis_url=redis.url, api_keys=["key-a"], max_sessions_per_key=3))
    r = redis_sync.Redis.from_url(redis.url)
    with TestClient(app) as c:
        store = c.app.state.ctx.store
        sid = create(c, A, ttl_seconds=30).json()["id"]
        key = f"vssm:session:{{{sid}}}"
        r.hdel(key, "holder")  # as an older server left it
        touched = count_refreshes(store)
        assert c.post(f"/v1/sessions/{sid}/generate", json={"max_tokens": 2}, headers=A).status_code == 200
        assert len(touched) == 1  # the read's; the write refreshes it in its script and stores the field
        assert r.hget(key, "holder") == f"key:{owner_of('key-a')}".encode()
        assert c.get(f"/v1/sessions/{sid}", headers=A).status_code == 200
        assert len(touched) == 1
        seconds, micros = r.time()  # the read's script moved the entry with the session's TTL
        session_expiry = seconds * 1000 + micros // 1000 + r.pttl(key)
        zset = f"vssm:session:quota:{{key:{owner_of('key-a')}}}"
        assert session_expiry <= r.zscore(zset, sid) <= session_expiry + 1000
