"""The in-process session store on its own (the Redis store is tested through the API)."""

from __future__ import annotations

import asyncio

from vssm.server import store as store_mod
from vssm.server.store import MemoryStore, RedisStore, SessionRecord


def _rec(sid: str, ttl: int) -> SessionRecord:
    return SessionRecord(
        id=sid, model="m", fingerprint="f", position=0, seed=0, owner="", created_at=0.0, ttl_seconds=ttl, state=b"x"
    )


def test_expired_sessions_are_swept_even_if_never_read_again(monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr(store_mod.time, "monotonic", lambda: clock[0])
    store = MemoryStore()

    async def main() -> None:
        await store.create(_rec("sess_old", ttl=10))
        await store.create(_rec("sess_kept", ttl=10))
        clock[0] += 8
        assert await store.get("sess_kept") is not None  # a read refreshes its TTL
        clock[0] += 5  # sess_old has expired, sess_kept has 5 s left; nobody reads sess_old again
        await store.create(_rec("sess_a", ttl=10))
        assert "sess_old" in store._data  # within sweep_every of the last sweep: not swept yet
        clock[0] += MemoryStore.sweep_every
        await store.create(_rec("sess_b", ttl=10 * int(MemoryStore.sweep_every)))
        assert set(store._data) == {"sess_b"}  # old, kept and a all expired by now; swept by a create
        assert await store.get("sess_old") is None

    asyncio.run(main())


def test_claims_keep_the_first_value_until_they_expire(monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr(store_mod.time, "monotonic", lambda: clock[0])
    store = MemoryStore()

    async def main() -> None:
        assert await store.claim("k", "first", ttl_seconds=60) is None
        assert await store.claim("k", "second", ttl_seconds=60) == "first"
        assert await store.recall("k") == "first" and await store.recall("other") is None
        clock[0] += 61
        assert await store.recall("k") is None
        assert await store.claim("k", "third", ttl_seconds=60) is None  # expired claims are swept too
        assert set(store._claims) == {"k"} and await store.recall("k") == "third"

    asyncio.run(main())


def test_redis_clients_never_resend_a_command_themselves():
    """A compare-and-set resent after a timeout could commit twice or report our own write as a conflict."""
    for url in ("redis://127.0.0.1:1/0", "redis+cluster://127.0.0.1:1"):
        store = RedisStore(url)  # no connection is made until the first command
        retry = store.client.retry if url.startswith("redis+") else store.client.connection_pool.make_connection().retry
        assert retry is not None and retry._retries == 0, url
