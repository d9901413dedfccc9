"""The session stores on their own: the in-process store, and the Redis store's state cache (the rest of
the Redis store is tested through the API)."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace

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


def test_a_replica_reads_a_state_it_holds_without_moving_it(redis):
    """The etag cache: the replica that wrote a state reads back its metadata alone; another replica's
    write is read in full; a record written without an etag (an older server) reads in full."""
    url = f"redis://127.0.0.1:{redis.port}/0"

    async def main() -> None:
        a, b = RedisStore(url), RedisStore(url)
        sid = "sess_" + "a" * 32
        big = bytes(range(256)) * 400  # ~100 kB, like a model state
        rec = await a.create(replace(_rec(sid, 60), state=big))
        etag, version, held = a.states.get(sid)
        assert held == big and version == 1
        raw = await a._run(a._get, sid, etag, "1")  # what crosses the wire when the etag and version match
        assert raw[0] == b"" and raw[4].decode() == etag
        got = await a.get(sid)
        assert got is not None and got.state == big and got.version == 1
        # another replica writes: the first one's etag no longer matches, it reads the new state
        fresh = await b.get(sid)
        assert fresh is not None and fresh.state == big  # b held nothing: the state came in full
        moved = await b.compare_and_set(replace(fresh, state=b"new state", position=3), fresh.version)
        assert moved is not None
        again = await a.get(sid)
        assert again is not None and again.state == b"new state" and again.position == 3
        assert a.states.get(sid)[2] == b"new state"
        # a server from before etags writes: the version moves, the etag stays; the state must come in full
        await a.client.hset(a._key(sid), mapping={"state": b"older server's state", "version": "3"})
        older = await a.get(sid)
        assert older is not None and older.state == b"older server's state" and older.version == 3
        # a record with no etag, as an older server wrote it
        old = "sess_" + "b" * 32
        await a.client.hset(
            a._key(old), mapping={"state": b"old", "meta": rec.meta_json(), "version": "1", "ttl_ms": "60000"}
        )
        got_old = await a.get(old)
        assert got_old is not None and got_old.state == b"old" and a.states.get(old) is None
        assert await a.delete(sid) and a.states.get(sid) is None
        await a.close()
        await b.close()

    asyncio.run(main())


def test_the_state_cache_is_bounded_least_recently_used_first():
    cache = store_mod._StateCache(max_bytes=10)
    cache.put("s1", "e1", 1, b"1234")
    cache.put("s2", "e2", 1, b"5678")
    assert cache.get("s1") == ("e1", 1, b"1234")  # s1 is now the most recently used
    cache.put("s3", "e3", 1, b"abcd")  # 12 bytes: s2 goes
    assert cache.get("s2") is None and cache.get("s1") is not None and cache.bytes == 8
    cache.put("s4", "e4", 1, b"x" * 11)  # larger than the bound: not kept
    assert cache.get("s4") is None and cache.bytes == 8
    cache.put("s1", "e5", 2, b"12")  # a new write replaces the entry and its bytes
    assert cache.get("s1") == ("e5", 2, b"12") and cache.bytes == 6
    none = store_mod._StateCache(max_bytes=0)
    none.put("s1", "e1", 1, b"1")
    assert none.get("s1") is None and none.bytes == 0


def test_after_redis_restarts_one_failure_clears_every_dead_connection(redis):
    """A server with several pooled connections (concurrent requests, or a write beside a quota
    refresh) must not fail a request per dead connection once Redis is back: the first failure, or
    the readiness probe's failed ping, closes the idle ones, and nothing is ever resent."""
    url = f"redis://127.0.0.1:{redis.port}/0"

    async def main() -> None:
        store = RedisStore(url, timeout=1.0)
        sids = ["sess_" + c * 32 for c in "cde"]
        await asyncio.gather(*[store.create(_rec(sid, 600)) for sid in sids])  # three connections in the pool
        assert len(store.client.connection_pool._available_connections) >= 2
        redis.stop()
        assert not await store.ping()
        redis.start()  # the same AOF directory: the sessions come back
        for _ in range(50):  # the readiness probe, polled: one failed ping may still meet a dead connection
            if await store.ping():
                break
            await asyncio.sleep(0.1)
        got = await asyncio.gather(*[store.get(sid) for sid in sids])  # several connections at once again
        assert [g.id for g in got if g is not None] == sids
        await store.close()

    asyncio.run(main())


def test_a_record_reads_back_from_its_meta_json_and_parts():
    """Every field but the state, version, expiry and id travels in the meta JSON, nested values included."""
    rec = replace(
        _rec("sess_a", ttl=60),
        position=70,
        seed=9,
        owner="o",
        created_at=12.5,
        version=4,
        last_op={"op": "generate", "start": 6, "tokens": [1, 0, 1], "extra": {"k": [2.5]}},
        text_carry=[0xE2, 0x82],
        holder="h",
        block_size=16,
        observation_temperature=0.5,
    )
    back = SessionRecord.from_parts(rec.id, rec.meta_json(), rec.state, rec.version, 60_000)
    assert replace(back, expires_at=0.0) == replace(rec, expires_at=0.0)
    meta = rec.meta_json()
    assert not {"state", "version", "expires_at", "id"} & set(json.loads(meta))
