"""Per-app context and the dependencies routes declare (``Annotated`` aliases)."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import time
from collections.abc import AsyncIterator, Awaitable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Annotated, TypeVar

from fastapi import Depends, Request

from .batcher import Batcher
from .config import Settings
from .errors import APIError, unavailable
from .metrics import Metrics
from .registry import Registry
from .store import SessionRecord, SessionStore, StoreUnavailable

T = TypeVar("T")
log = logging.getLogger(__name__)


@dataclass
class Context:
    settings: Settings
    metrics: Metrics
    store: SessionStore
    executor: ThreadPoolExecutor
    registry: Registry | None = None  # None while loading
    batchers: dict[str, Batcher] = field(default_factory=dict)
    in_flight: int = 0
    touching: set[asyncio.Task[None]] = field(default_factory=set)  # quota refreshes running on their own

    def slot(self) -> Slot:
        """Take one of ``max_in_flight`` slots for model work, or refuse with 429."""
        if self.in_flight >= self.settings.max_in_flight:
            raise APIError(
                429,
                "overloaded",
                f"over the admission limit of {self.settings.max_in_flight} requests in flight; retry later",
                retry_after=1,
            )
        self.in_flight += 1
        self.metrics.in_flight.set(self.in_flight)
        return Slot(self)

    @asynccontextmanager
    async def admit(self) -> AsyncIterator[None]:
        slot = self.slot()
        try:
            yield
        finally:
            slot.release()

    async def store_call(self, op: str, call: Awaitable[T]) -> T:
        """A store call, timed, with failures mapped to 503 ``store_unavailable``."""
        t0 = time.perf_counter()
        try:
            return await call
        except StoreUnavailable as exc:
            self.metrics.store_errors.labels(op).inc()
            raise unavailable("store_unavailable", str(exc)) from exc
        finally:
            self.metrics.store_latency.labels(op).observe(time.perf_counter() - t0)

    def batcher(self, model_id: str) -> Batcher:
        return self.batchers[model_id]

    # ----- quotas: live sessions and their total TTL per key (per client address without keys) -------
    @property
    def quotas(self) -> bool:
        return bool(self.settings.max_sessions_per_key or self.settings.max_total_ttl_per_key)

    async def reserve(self, holder: str, sid: str, ttl: int) -> None:
        """Count a new session against ``holder``'s quotas, or refuse it with 429."""
        if not self.quotas:
            return
        s = self.settings
        refusal = await self.store_call(
            "reserve", self.store.reserve(holder, sid, ttl, s.max_sessions_per_key, s.max_total_ttl_per_key)
        )
        if refusal is None:
            return
        who, wait = "API key" if s.api_keys else "client address", max(1.0, refusal.retry_after)
        if refusal.limit == "sessions":
            msg = f"this {who} holds {refusal.sessions} live sessions, the limit; delete one or let one expire"
            raise APIError(429, "session_quota_exceeded", msg, retry_after=wait)
        msg = (
            f"this {who}'s live sessions hold {refusal.ttl} s of ttl_seconds; {ttl} more would pass the "
            f"limit {s.max_total_ttl_per_key}: delete one, let one expire or ask for a shorter ttl_seconds"
        )
        raise APIError(429, "ttl_quota_exceeded", msg, retry_after=wait)

    async def touch(self, holder: str, sid: str, ttl: int) -> None:
        if self.quotas and holder:
            await self.store_call("touch", self.store.touch(holder, sid, ttl))

    def touch_soon(self, holder: str, sid: str, ttl: int) -> asyncio.Task[None] | None:
        """:meth:`touch` as a task of its own (None: no quotas), for a caller with other work to do
        meanwhile.  The task is held here until it ends, so a request that goes away (a client that
        disconnects) neither cancels nor drops it; a caller that needs its outcome awaits it
        (shielded, so its own cancellation does not reach the task).  Every failure is logged."""
        if not (self.quotas and holder):
            return None
        task = asyncio.ensure_future(self.touch(holder, sid, ttl))
        self.touching.add(task)
        task.add_done_callback(self._touched)
        return task

    def touch_owed(self, rec: SessionRecord) -> asyncio.Task[None] | None:
        """The refresh of ``rec``'s quota entry that the read or write which returned it still owes
        (:meth:`touch_soon`), or None: the store made it in that call (``quota_fresh``), or no quotas."""
        return None if rec.quota_fresh else self.touch_soon(rec.holder, rec.id, rec.ttl_seconds)

    def _touched(self, task: asyncio.Task[None]) -> None:
        self.touching.discard(task)
        if not task.cancelled() and task.exception() is not None:  # retrieved: asyncio does not report it lost
            log.warning("a quota refresh failed: %s", task.exception())

    async def release(self, holder: str, sid: str) -> None:
        if self.quotas and holder:
            await self.store_call("release", self.store.release(holder, sid))

    async def settle(self, timeout: float = 2.0) -> None:
        """Wait (a bounded time) for the quota refreshes still running, e.g. before the store closes."""
        if self.touching:
            await asyncio.wait(set(self.touching), timeout=timeout)


class Slot:
    """An admission slot; ``release`` is idempotent, so a stream can release it from two places."""

    def __init__(self, ctx: Context) -> None:
        self.ctx, self.held = ctx, True

    def release(self) -> None:
        if self.held:
            self.held = False
            self.ctx.in_flight -= 1
            self.ctx.metrics.in_flight.set(self.ctx.in_flight)


async def get_context(request: Request) -> Context:
    # async: FastAPI runs a plain ``def`` dependency in a worker thread, a hop per request
    return request.app.state.ctx


ContextDep = Annotated[Context, Depends(get_context)]


async def get_registry(ctx: ContextDep) -> Registry:
    if ctx.registry is None:
        raise unavailable("not_ready", "models are still loading")
    return ctx.registry


RegistryDep = Annotated[Registry, Depends(get_registry)]


def owner_of(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:24]


async def get_owner(request: Request, ctx: ContextDep) -> str:
    """The caller's identity: a hash of its API key, or "" when the server has no keys."""
    keys = ctx.settings.api_keys
    if not keys:
        return ""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    # bytes, not str: compare_digest refuses non-ASCII str; headers arrive decoded as latin-1
    given = token.strip().encode("latin-1")
    if scheme.lower() != "bearer" or not any(hmac.compare_digest(given, k.encode()) for k in keys):
        raise APIError(401, "invalid_api_key", "missing or invalid API key (Authorization: Bearer <key>)")
    return owner_of(token.strip())


OwnerDep = Annotated[str, Depends(get_owner)]


async def get_holder(request: Request, ctx: ContextDep, owner: OwnerDep) -> str:
    """Whose quotas a new session counts against: the caller's API key, or its address (as this
    server sees it: behind a proxy, the address the proxy reports) when the server has no keys."""
    if ctx.settings.api_keys:
        return "key:" + owner
    host = request.client.host if request.client else ""
    return "addr:" + hashlib.sha256(host.encode()).hexdigest()[:24]


HolderDep = Annotated[str, Depends(get_holder)]
