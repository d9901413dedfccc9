"""Session stores: in-process (one machine) and Redis / Redis Cluster (any number of replicas).

A session is one key: a hash of ``state`` (safetensors bytes), ``meta`` (JSON), ``version``,
``ttl_ms``, ``etag`` and ``holder``.  Writes after creation go only through compare-and-set on
``version`` (a Lua script, atomic on the server), so two requests racing on one session can never
both commit.  Reads refresh the TTL.  Every Redis failure surfaces as :class:`StoreUnavailable`; redis-py's pool
reconnects by itself once Redis is back.

Each write also records a random ``etag``, and each replica keeps the states it last wrote or read
(least recently used, bounded in bytes): a read names the etag and version it holds and gets the
state back only when the session changed since (another replica wrote it; a server from before
etags leaves the etag but bumps the version).  A session's next chunk on the
replica that served the last one then moves its metadata alone from Redis, not its state.

Quotas: each session counts against its ``holder`` (an API key, or a client address without
keys) from ``reserve`` until it expires or is ``release``d; ``touch`` moves its expiry with every
refresh, so a session kept alive keeps counting.  Per holder, Redis keeps a sorted set (session id
by expiry) and a hash (session id to ttl_seconds) under one hash tag, so a reservation is one
atomic script on one Cluster slot; times come from the Redis server's clock, shared by replicas.
On a single Redis a session's read and write refresh its quota entry in their own scripts
(``fold_quotas``: one round trip, where a refresh of its own made two); a Cluster keeps the quota
keys on another slot, and there the server refreshes them with a call of its own.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass, field, fields, replace
from typing import Any, Protocol
from urllib.parse import urlparse, urlunparse

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

__all__ = ["MemoryStore", "RedisStore", "Refusal", "SessionRecord", "SessionStore", "StoreUnavailable", "open_store"]


class StoreUnavailable(RuntimeError):
    """The store cannot be reached; the request may be retried later."""


_NOT_META = frozenset(("state", "version", "expires_at", "id", "quota_fresh"))  # fields outside its meta JSON


@dataclass
class SessionRecord:
    id: str  # "sess_" + 32 hex characters (128 random bits)
    model: str  # model id the state belongs to
    fingerprint: str  # weights hash of that model; a state is refused by any other weights
    position: int  # tokens consumed so far
    seed: int  # the session's seed
    owner: str  # hash of the API key that created it ("" without authentication)
    created_at: float  # unix time
    ttl_seconds: int  # lifetime, refreshed on every use
    state: bytes = field(repr=False, default=b"")  # GenState.to_bytes()
    version: int = 0  # compare-and-set counter, +1 per committed write
    last_op: dict[str, Any] | None = None  # the last committed step {"op", "start", ...}: replayed for a lost response
    text_carry: list[int] = field(default_factory=list)  # an incomplete UTF-8 character ending the generated text
    holder: str = ""  # whose quota it counts against (an API key's or a client address's hash); "": none
    block_size: int | None = None  # generate's block size when a call names none, 0: one pass (None: not recorded)
    observation_temperature: float | None = None  # generate's when a call names none (None: not recorded)
    expires_at: float = 0.0  # unix time, as of the last read or write
    # the store call that returned it refreshed its quota entry too: never stored, not part of its value
    quota_fresh: bool = field(default=False, compare=False)

    def meta_json(self) -> str:
        # the fields read directly: asdict deep-copies every value (the last step's token lists
        # included), and it was a third of a commit's CPU in a profile of one client's chunks
        return json.dumps({f.name: getattr(self, f.name) for f in fields(self) if f.name not in _NOT_META})

    @classmethod
    def from_parts(cls, sid: str, meta: str | bytes, state: bytes, version: int, ttl_ms: int | None) -> SessionRecord:
        rec = cls(id=sid, state=state, version=version, **json.loads(meta))
        rec.expires_at = time.time() + (ttl_ms / 1000 if ttl_ms is not None else rec.ttl_seconds)
        return rec


class SessionStore(Protocol):
    kind: str
    fold_quotas: bool  # whether get and compare_and_set can refresh a quota entry themselves (quota_fresh)

    async def create(self, rec: SessionRecord) -> SessionRecord: ...
    async def get(self, sid: str, holder: str = "") -> SessionRecord | None:
        """The session, its TTL refreshed; None if it does not exist.  ``holder`` (quotas on: the caller's):
        where the session counts against it, a store that can refreshes its quota entry in the same call
        (as :meth:`touch` would), and the record's ``quota_fresh`` says so."""
        ...

    async def compare_and_set(
        self, rec: SessionRecord, expected_version: int, refresh_quota: bool = False
    ) -> SessionRecord | None:
        """Write ``rec`` if the stored version is ``expected_version``; None if it moved or vanished.
        ``refresh_quota``: refresh its holder's quota entry in the same call where the store can
        (``quota_fresh``)."""
        ...

    async def delete(self, sid: str) -> bool: ...
    async def claim(self, key: str, value: str, ttl_seconds: int) -> str | None:
        """Store ``value`` under an idempotency ``key`` unless one is there; the value found, or None."""
        ...

    async def recall(self, key: str) -> str | None:
        """The value stored under an idempotency ``key``, or None."""
        ...

    async def reserve(self, holder: str, sid: str, ttl_seconds: int, max_sessions: int, max_ttl: int) -> Refusal | None:
        """Count session ``sid`` against ``holder`` unless that would pass ``max_sessions`` live sessions
        or ``max_ttl`` seconds of their ttl_seconds together (0: no limit); the refusal, or None."""
        ...

    async def touch(self, holder: str, sid: str, ttl_seconds: int) -> None:
        """Session ``sid`` was refreshed: it now counts against ``holder`` for ``ttl_seconds`` more."""
        ...

    async def release(self, holder: str, sid: str) -> None:
        """Session ``sid`` no longer counts against ``holder``."""
        ...

    async def ping(self) -> bool: ...
    async def close(self) -> None: ...


@dataclass(frozen=True)
class Refusal:
    """Why a quota refused a session: ``limit`` ("sessions" or "ttl"), the holder's current
    ``sessions`` and ``ttl`` (seconds, summed), and the seconds until the first of them expires."""

    limit: str
    sessions: int
    ttl: int
    retry_after: float


class _Quotas:
    """The in-process store's quotas: holder -> session id -> (deadline on the monotonic clock, ttl)."""

    def __init__(self) -> None:
        self.held: dict[str, dict[str, tuple[float, int]]] = {}

    def _live(self, holder: str, now: float) -> dict[str, tuple[float, int]]:
        held = self.held.get(holder, {})
        for sid in [sid for sid, (deadline, _) in held.items() if deadline <= now]:
            del held[sid]
        return held

    def reserve(self, holder: str, sid: str, ttl: int, max_sessions: int, max_ttl: int) -> Refusal | None:
        now = time.monotonic()
        held = self._live(holder, now)
        total = sum(t for _, t in held.values())
        limit = None
        if max_sessions and len(held) + 1 > max_sessions:
            limit = "sessions"
        elif max_ttl and total + ttl > max_ttl:
            limit = "ttl"
        if limit is not None:
            first = min((d for d, _ in held.values()), default=now + 1)
            return Refusal(limit, len(held), total, first - now)
        self.held.setdefault(holder, held)[sid] = (now + ttl, ttl)
        return None

    def touch(self, holder: str, sid: str, ttl: int) -> None:
        held = self.held.get(holder)
        if held is not None and sid in held:
            held[sid] = (time.monotonic() + ttl, ttl)

    def release(self, holder: str, sid: str) -> None:
        held = self.held.get(holder)
        if held is not None:
            held.pop(sid, None)
            if not held:
                del self.held[holder]

    def sweep(self, now: float) -> None:
        for holder in list(self.held):
            if not self._live(holder, now):
                del self.held[holder]


class MemoryStore:
    """The embedded default: a dict in this process, with the same semantics as Redis."""

    kind = "memory"

    sweep_every = 30.0  # seconds between sweeps of expired sessions (each is O(sessions))
    fold_quotas = True  # a read or write refreshes the session's quota entry itself (False: its caller does)

    def __init__(self) -> None:
        self._data: dict[str, tuple[SessionRecord, float]] = {}
        self._claims: dict[str, tuple[str, float]] = {}  # idempotency key -> (value, deadline)
        self._quotas = _Quotas()
        self._lock = asyncio.Lock()
        self._last_sweep = time.monotonic()

    def _sweep(self) -> None:
        """Drop expired sessions.  Most sessions are abandoned, never read again, so expiring them
        only on lookup (as ``_live`` does) would keep their state bytes for the process's life."""
        now = time.monotonic()
        if now - self._last_sweep < self.sweep_every:
            return
        self._last_sweep = now
        for table in (self._data, self._claims):
            for key in [key for key, (_, deadline) in table.items() if deadline <= now]:
                del table[key]
        self._quotas.sweep(now)

    def _live(self, sid: str) -> SessionRecord | None:
        hit = self._data.get(sid)
        if hit is None:
            return None
        if hit[1] <= time.monotonic():
            del self._data[sid]
            return None
        return hit[0]

    def _put(self, rec: SessionRecord) -> SessionRecord:
        rec = replace(rec, expires_at=time.time() + rec.ttl_seconds, quota_fresh=False)
        self._data[rec.id] = (rec, time.monotonic() + rec.ttl_seconds)
        return rec

    async def create(self, rec: SessionRecord) -> SessionRecord:
        async with self._lock:
            self._sweep()
            if self._live(rec.id) is not None:
                raise KeyError(rec.id)
            return self._put(replace(rec, version=1))

    async def get(self, sid: str, holder: str = "") -> SessionRecord | None:
        async with self._lock:
            rec = self._live(sid)
            if rec is None:
                return None
            rec = self._put(rec)  # the session's TTL first, then its quota entry's: never the other way
            fresh = self.fold_quotas and bool(holder) and rec.holder == holder
            if fresh:
                self._quotas.touch(holder, sid, rec.ttl_seconds)
            return replace(rec, quota_fresh=fresh)

    async def compare_and_set(
        self, rec: SessionRecord, expected_version: int, refresh_quota: bool = False
    ) -> SessionRecord | None:
        async with self._lock:
            cur = self._live(rec.id)
            if cur is None or cur.version != expected_version:
                return None
            rec = self._put(replace(rec, version=expected_version + 1))
            fresh = self.fold_quotas and refresh_quota and bool(rec.holder)
            if fresh:
                self._quotas.touch(rec.holder, rec.id, rec.ttl_seconds)
            return replace(rec, quota_fresh=fresh)

    async def delete(self, sid: str) -> bool:
        async with self._lock:
            return self._data.pop(sid, None) is not None

    async def claim(self, key: str, value: str, ttl_seconds: int) -> str | None:
        async with self._lock:
            self._sweep()
            found = self._recall(key)
            if found is None:
                self._claims[key] = (value, time.monotonic() + ttl_seconds)
            return found

    async def recall(self, key: str) -> str | None:
        async with self._lock:
            return self._recall(key)

    def _recall(self, key: str) -> str | None:
        hit = self._claims.get(key)
        return hit[0] if hit is not None and hit[1] > time.monotonic() else None

    async def reserve(self, holder: str, sid: str, ttl_seconds: int, max_sessions: int, max_ttl: int) -> Refusal | None:
        async with self._lock:
            self._sweep()
            return self._quotas.reserve(holder, sid, ttl_seconds, max_sessions, max_ttl)

    async def touch(self, holder: str, sid: str, ttl_seconds: int) -> None:
        async with self._lock:
            self._quotas.touch(holder, sid, ttl_seconds)

    async def release(self, holder: str, sid: str) -> None:
        async with self._lock:
            self._quotas.release(holder, sid)

    async def ping(self) -> bool:
        return True

    async def close(self) -> None:
        self._data.clear()


# Quotas. A holder's sorted set (session id by expiry, ms on the Redis clock) and hash (session id ->
# ttl_seconds) expire with their last entry.  Sessions keep their holder in a field of their own, so that
# on a single Redis the session's read and write refresh its quota entry in the same script (the quota keys
# are another Cluster slot: there the server refreshes it with a call of its own, _TOUCH).
_QUOTA_LIB = """
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function expire_with_last(zkey, hkey)
  local last = redis.call('ZRANGE', zkey, -1, -1, 'WITHSCORES')
  if last[2] then
    redis.call('PEXPIREAT', zkey, last[2])
    redis.call('PEXPIREAT', hkey, last[2])
  end
end
local function touch_quota(zkey, hkey, sid, ttl_ms)
  if redis.call('ZSCORE', zkey, sid) then
    redis.call('ZADD', zkey, now_ms() + ttl_ms, sid)
    expire_with_last(zkey, hkey)
  end
end
"""
_CREATE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'state', ARGV[1], 'meta', ARGV[2], 'version', '1', 'ttl_ms', ARGV[3], 'etag', ARGV[4],
  'holder', ARGV[5])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
"""
# ARGV[1], ARGV[2]: the etag and version of the state the caller holds ('' for none); the state comes
# back as '' when both match (a server from before etags bumps the version and leaves the etag as it was).
# KEYS[2], KEYS[3] and ARGV[3], ARGV[4] (optional): the caller's quota keys, its holder and the session id:
# the quota entry is refreshed, after the session's TTL, where the session's holder is the caller's (the
# last value returned: 1).  A record from before holders were kept has none: its caller refreshes it.
_GET = (
    _QUOTA_LIB
    + """
local r = redis.call('HMGET', KEYS[1], 'meta', 'version', 'ttl_ms', 'etag', 'holder')
if not r[2] then return nil end
redis.call('PEXPIRE', KEYS[1], r[3])
local fresh = 0
if KEYS[3] and r[5] and r[5] == ARGV[3] then
  touch_quota(KEYS[2], KEYS[3], ARGV[4], tonumber(r[3]))
  fresh = 1
end
local etag = r[4] or ''
local state = ''
if etag == '' or etag ~= ARGV[1] or r[2] ~= ARGV[2] then state = redis.call('HGET', KEYS[1], 'state') end
return {state, r[1], r[2], r[3], etag, fresh}
"""
)
# ARGV[6]: the record's holder, kept in its own field for _GET.  KEYS[2], KEYS[3] and ARGV[7] (optional):
# that holder's quota keys and the session id, its entry refreshed after the write
_CAS = (
    _QUOTA_LIB
    + """
local v = redis.call('HGET', KEYS[1], 'version')
if not v then return -1 end
if v ~= ARGV[1] then return -2 end
local nv = tonumber(v) + 1
redis.call('HSET', KEYS[1], 'state', ARGV[2], 'meta', ARGV[3], 'version', tostring(nv), 'ttl_ms', ARGV[4],
  'etag', ARGV[5], 'holder', ARGV[6])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
if KEYS[3] then touch_quota(KEYS[2], KEYS[3], ARGV[7], tonumber(ARGV[4])) end
return nv
"""
)


class _StateCache:
    """The states this replica last wrote or read, by session: ``(etag, version, state bytes)``, least
    recently used first, at most ``max_bytes`` of states (0: none kept)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes, self.bytes = max_bytes, 0
        self.entries: OrderedDict[str, tuple[str, int, bytes]] = OrderedDict()

    def get(self, sid: str) -> tuple[str, int, bytes] | None:
        hit = self.entries.get(sid)
        if hit is not None:
            self.entries.move_to_end(sid)
        return hit

    def put(self, sid: str, etag: str, version: int, state: bytes) -> None:
        self.drop(sid)
        if not etag or len(state) > self.max_bytes:
            return
        self.entries[sid] = (etag, version, state)
        self.bytes += len(state)
        while self.bytes > self.max_bytes:
            _, (_, _, old) = self.entries.popitem(last=False)
            self.bytes -= len(old)

    def drop(self, sid: str) -> None:
        old = self.entries.pop(sid, None)
        if old is not None:
            self.bytes -= len(old[2])


_CLAIM = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return nil end
return redis.call('GET', KEYS[1])
"""

# The quota scripts' KEYS: the holder's sorted set and hash (_QUOTA_LIB)
_RESERVE = (
    _QUOTA_LIB
    + """
local now = now_ms()
for _, sid in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)) do
  redis.call('ZREM', KEYS[1], sid)
  redis.call('HDEL', KEYS[2], sid)
end
local ttl, max_sessions, max_ttl = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local count = redis.call('ZCARD', KEYS[1])
local total = 0
for _, v in ipairs(redis.call('HVALS', KEYS[2])) do total = total + tonumber(v) end
local limit = nil
if max_sessions > 0 and count + 1 > max_sessions then limit = 'sessions'
elseif max_ttl > 0 and total + ttl > max_ttl then limit = 'ttl' end
if limit then
  local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  return {limit, count, total, first[2] and (tonumber(first[2]) - now) or 1000}
end
redis.call('ZADD', KEYS[1], now + ttl * 1000, ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ttl)
expire_with_last(KEYS[1], KEYS[2])
return nil
"""
)
_TOUCH = (
    _QUOTA_LIB
    + """
touch_quota(KEYS[1], KEYS[2], ARGV[1], tonumber(ARGV[2]) * 1000)
return 1
"""
)
_RELEASE = """
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
return 1
"""


class RedisStore:
    """Sessions in Redis (``redis://``, ``rediss://``) or Redis Cluster (``redis+cluster://``)."""

    def __init__(
        self,
        url: str,
        timeout: float = 2.0,
        prefix: str = "vssm:session:",
        state_cache_bytes: int = 64 << 20,
        fold_quotas: bool = True,
    ) -> None:
        parsed = urlparse(url)
        self.prefix = prefix
        self.states = _StateCache(state_cache_bytes)
        opts = dict(socket_timeout=timeout, socket_connect_timeout=timeout, decode_responses=False)
        if parsed.scheme in ("redis+cluster", "rediss+cluster"):
            plain = urlunparse(parsed._replace(scheme=parsed.scheme.replace("+cluster", "")))
            # no retries of its own: a script resent after a timeout may run twice, and a compare-and-set
            # that had committed would then report our own write as a conflict
            self.client: Any = RedisCluster.from_url(plain, retry=Retry(NoBackoff(), 0), **opts)
            self.kind = "redis-cluster"
        else:
            self.client = aioredis.from_url(url, health_check_interval=10, **opts)
            self.kind = "redis"
        # a session's read and write refresh its quota entry in the same script (on a Cluster the quota
        # keys are another slot, and the caller refreshes it with a call of its own; so behind a sharding
        # proxy, which the URL does not reveal: Settings.redis_fold_quotas)
        self.fold_quotas = fold_quotas and self.kind == "redis"
        self._create = self.client.register_script(_CREATE)
        self._get = self.client.register_script(_GET)
        self._cas = self.client.register_script(_CAS)
        self._claim = self.client.register_script(_CLAIM)
        self._reserve = self.client.register_script(_RESERVE)
        self._touch = self.client.register_script(_TOUCH)
        self._release = self.client.register_script(_RELEASE)

    def _key(self, sid: str) -> str:
        # the hash tag keeps one session's key whole on one Cluster slot
        return f"{self.prefix}{{{sid}}}"

    async def _run(self, script: Any, sid: str, *args: Any) -> Any:
        return await self._call(script(keys=[self._key(sid)], args=list(args)))

    async def _call(self, call: Any) -> Any:
        try:
            return await call
        except (RedisError, OSError, asyncio.TimeoutError) as exc:
            await self._after_error(exc)
            raise StoreUnavailable(f"session store unreachable: {exc.__class__.__name__}: {exc}") from exc

    async def _after_error(self, exc: BaseException) -> None:
        """After a connection failure (not an error reply, nor a slow script), close the pool's idle
        connections: if Redis restarted, every one of them is dead and would fail its next command once
        (commands are never resent, see __init__), so a server that had several open would keep failing
        requests after Redis is back.  (A connection checked out between this call and its closing
        would fail its command: that takes a connection error to begin with, when requests are failing
        anyway.)"""
        pool = getattr(self.client, "connection_pool", None)  # a Cluster client reconnects per node itself
        if isinstance(exc, (RedisConnectionError, OSError)) and pool is not None:
            try:
                await pool.disconnect(inuse_connections=False)
            except (RedisError, OSError):
                log.debug("error while closing idle Redis connections", exc_info=True)

    def _claim_key(self, key: str) -> str:
        return f"{self.prefix}claim:{key}"

    async def claim(self, key: str, value: str, ttl_seconds: int) -> str | None:
        found = await self._call(self._claim(keys=[self._claim_key(key)], args=[value, ttl_seconds * 1000]))
        return None if found is None else found.decode()

    async def recall(self, key: str) -> str | None:
        found = await self._call(self.client.get(self._claim_key(key)))
        return None if found is None else found.decode()

    async def create(self, rec: SessionRecord) -> SessionRecord:
        etag = secrets.token_hex(8)
        ok = await self._run(self._create, rec.id, rec.state, rec.meta_json(), rec.ttl_seconds * 1000, etag, rec.holder)
        if not ok:
            raise KeyError(rec.id)
        self.states.put(rec.id, etag, 1, rec.state)
        return replace(rec, version=1, expires_at=time.time() + rec.ttl_seconds, quota_fresh=False)

    async def get(self, sid: str, holder: str = "") -> SessionRecord | None:
        held = self.states.get(sid)
        keys, args = [self._key(sid)], list((held[0], str(held[1])) if held else ("", ""))
        if holder and self.fold_quotas:
            keys, args = keys + self._quota_keys(holder), [*args, holder, sid]
        r = await self._call(self._get(keys=keys, args=args))
        if r is None:
            self.states.drop(sid)
            return None
        state, meta, version, ttl_ms, etag, fresh = r
        if state:
            self.states.put(sid, etag.decode(), int(version), state)
        elif held is not None:  # unchanged since this replica last wrote or read it
            state = held[2]
        else:  # a record written without an etag reads in full, so this needs a store that lost its data
            raise StoreUnavailable(f"session {sid}: the store returned no state")
        rec = SessionRecord.from_parts(sid, meta, state, int(version), int(ttl_ms))
        rec.quota_fresh = bool(int(fresh))
        return rec

    async def compare_and_set(
        self, rec: SessionRecord, expected_version: int, refresh_quota: bool = False
    ) -> SessionRecord | None:
        etag = secrets.token_hex(8)
        self.states.drop(rec.id)  # whatever happens next, the state held may be stale
        keys = [self._key(rec.id)]
        args = [str(expected_version), rec.state, rec.meta_json(), rec.ttl_seconds * 1000, etag, rec.holder]
        fresh = refresh_quota and bool(rec.holder) and self.fold_quotas
        if fresh:
            keys, args = keys + self._quota_keys(rec.holder), [*args, rec.id]
        nv = await self._call(self._cas(keys=keys, args=args))
        if int(nv) < 0:
            return None
        self.states.put(rec.id, etag, int(nv), rec.state)
        return replace(rec, version=int(nv), expires_at=time.time() + rec.ttl_seconds, quota_fresh=fresh)

    async def delete(self, sid: str) -> bool:
        self.states.drop(sid)
        return bool(await self._call(self.client.delete(self._key(sid))))

    def _quota_keys(self, holder: str) -> list[str]:
        return [f"{self.prefix}quota:{{{holder}}}", f"{self.prefix}quota-ttl:{{{holder}}}"]  # one slot

    async def reserve(self, holder: str, sid: str, ttl_seconds: int, max_sessions: int, max_ttl: int) -> Refusal | None:
        args = [sid, ttl_seconds, max_sessions, max_ttl]
        found = await self._call(self._reserve(keys=self._quota_keys(holder), args=args))
        if found is None:
            return None
        limit, sessions, ttl, wait_ms = found
        return Refusal(limit.decode(), int(sessions), int(ttl), int(wait_ms) / 1000)

    async def touch(self, holder: str, sid: str, ttl_seconds: int) -> None:
        await self._call(self._touch(keys=self._quota_keys(holder), args=[sid, ttl_seconds]))

    async def release(self, holder: str, sid: str) -> None:
        await self._call(self._release(keys=self._quota_keys(holder), args=[sid]))

    async def ping(self) -> bool:
        try:
            return bool(await self.client.ping())
        except (RedisError, OSError, asyncio.TimeoutError) as exc:
            await self._after_error(exc)
            return False

    async def close(self) -> None:
        try:
            await self.client.aclose()
        except (RedisError, OSError):
            log.debug("error while closing the Redis client", exc_info=True)


def open_store(
    url: str | None, timeout: float = 2.0, state_cache_bytes: int = 64 << 20, fold_quotas: bool = True
) -> SessionStore:
    if not url:
        return MemoryStore()
    return RedisStore(url, timeout=timeout, state_cache_bytes=state_cache_bytes, fold_quotas=fold_quotas)
