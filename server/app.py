"""The FastAPI application: lifespan (models, store, batchers), middleware, routers."""

from __future__ import annotations

import asyncio
import gc
import logging
import time
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager

import torch
from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from vssm.model import native

from . import errors, openapi
from .batcher import Batcher
from .config import Settings
from .deps import Context
from .metrics import Metrics
from .registry import Registry
from .routes import completions, health, models, playground, sessions
from .store import open_store

log = logging.getLogger(__name__)


async def _read_body(receive: Receive, limit: int) -> Receive | None:
    """Read a whole request body of at most ``limit`` bytes (None when it is longer), and return a
    ``receive`` that delivers it as one message, then defers to the real one (disconnects)."""
    body, more = bytearray(), True
    while more:
        message = await receive()
        if message["type"] != "http.request":  # the client left: let the app see it
            first: Message | None = message
            break
        body += message.get("body", b"")
        more = message.get("more_body", False)
        if len(body) > limit:
            return None
    else:
        first = {"type": "http.request", "body": bytes(body), "more_body": False}

    async def replay() -> Message:
        nonlocal first
        if first is not None:
            message, first = first, None
            return message
        return await receive()

    return replay


def _request_id(raw: bytes) -> str:
    """The caller's ``X-Request-ID`` when it is printable ASCII (it is echoed in a header), else a new one."""
    raw = raw[:200]
    if raw and all(0x20 <= b < 0x7F for b in raw):
        return raw.decode("ascii")
    return uuid.uuid4().hex


class EdgeMiddleware:
    """Request id, body size limit (413) and per-route metrics, as one pure ASGI layer."""

    def __init__(self, app: ASGIApp, ctx_getter) -> None:
        self.app = app
        self.ctx_getter = ctx_getter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        ctx: Context = self.ctx_getter()
        limit = ctx.settings.max_body_bytes
        headers = dict(scope.get("headers") or [])
        request_id = _request_id(headers.get(b"x-request-id", b""))
        status = {"code": 500}
        t0 = time.perf_counter()

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", request_id.encode())]
            await send(message)

        async def too_large() -> None:
            err = errors.APIError(413, "body_too_large", f"request body exceeds {limit} bytes")
            await errors.response(err)(scope, receive, send_wrapper)

        try:
            if b"content-length" in headers:
                try:
                    declared = int(headers[b"content-length"])
                except ValueError:
                    declared = 0
                # the server holds the body to its declared length, so the header alone decides
                if declared > limit:
                    return await too_large()
                return await self.app(scope, receive, send_wrapper)
            # a chunked body declares no length: read it here, within the limit, then hand it on.
            # (An exception raised from inside ``receive`` would be caught by the body parser as a
            # malformed body, a 400.)
            replay = await _read_body(receive, limit)
            if replay is None:
                return await too_large()
            await self.app(scope, replay, send_wrapper)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", "unmatched")
            ctx.metrics.requests.labels(path, scope["method"], str(status["code"])).inc()
            ctx.metrics.latency.labels(path).observe(time.perf_counter() - t0)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    ctx = Context(
        settings=settings,
        metrics=Metrics(),
        store=open_store(
            settings.redis_url,
            settings.store_timeout_seconds,
            int(settings.state_cache_mb * 2**20),
            fold_quotas=settings.redis_fold_quotas,
        ),
        executor=ThreadPoolExecutor(1, thread_name_prefix="torch"),
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if settings.torch_threads:
            torch.set_num_threads(settings.torch_threads)
        loop = asyncio.get_running_loop()
        registry = await loop.run_in_executor(ctx.executor, Registry.load, settings.checkpoints, settings.device)
        # build (or find) the layers' compiled kernel now, not in the first request (model/native.py)
        kernel = await loop.run_in_executor(ctx.executor, native.available)
        for mid, served in registry.models.items():
            b = Batcher(
                served, ctx.metrics, ctx.executor, settings.batch_window_ms, settings.max_batch_size, settings.batching
            )
            b.start()
            ctx.batchers[mid] = b
        ctx.registry = registry
        # The ~230,000 objects of torch, the models and the app live as long as the process; every
        # full collection walked them all, a pause of the event loop for every request in flight
        # (one client's chunks then 16 and 64 clients': 5 full collections, 634 ms, the longest
        # pause 182 ms; frozen, 27 ms and 14 ms; docs/experiments/rounds-and-serving.md, twenty-fifth
        # session).  Frozen, collections walk only what requests make; unfrozen at shutdown.
        gc.collect()
        gc.freeze()
        log.info("ready: %d model(s), store %s, native kernel %s", len(registry.models), ctx.store.kind, kernel)
        try:
            yield
        finally:
            gc.unfreeze()  # first: whatever fails below, the objects go back to the collector
            for b in ctx.batchers.values():
                await b.stop()
            await ctx.settle()  # quota refreshes still on their way to the store
            await ctx.store.close()
            ctx.executor.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(
        title="VSSM serve",
        version="0.1.0",
        lifespan=lifespan,
        description="Resumable generation with Variational State Space Models. See docs/api.md.",
    )
    app.state.ctx = ctx
    errors.install(app)
    openapi.install(app)
    app.add_middleware(EdgeMiddleware, ctx_getter=lambda: ctx)
    for r in (health.router, models.router, completions.router, sessions.router):
        app.include_router(r)
    playground.install(app)
    return app
