"""The FastAPI application: lifespan (models, store, batchers), middleware, routers."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager

import torch
from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import errors
from .batcher import Batcher
from .config import Settings
from .deps import Context
from .metrics import Metrics
from .registry import Registry
from .routes import completions, health, models, sessions
from .store import open_store

log = logging.getLogger(__name__)


class _BodyTooLarge(Exception):
    pass


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
        request_id = headers.get(b"x-request-id", b"").decode()[:200] or uuid.uuid4().hex
        status = {"code": 500}
        t0 = time.perf_counter()

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", request_id.encode())]
            await send(message)

        received = 0

        async def receive_wrapper() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _BodyTooLarge
            return message

        async def too_large() -> None:
            err = errors.APIError(413, "body_too_large", f"request body exceeds {limit} bytes")
            await errors.response(err)(scope, receive, send_wrapper)

        try:
            declared = int(headers.get(b"content-length", b"0") or 0)
        except ValueError:
            declared = 0
        try:
            if declared > limit:
                await too_large()
            else:
                await self.app(scope, receive_wrapper, send_wrapper)
        except _BodyTooLarge:
            await too_large()
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
        store=open_store(settings.redis_url, settings.store_timeout_seconds),
        executor=ThreadPoolExecutor(1, thread_name_prefix="torch"),
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if settings.torch_threads:
            torch.set_num_threads(settings.torch_threads)
        loop = asyncio.get_running_loop()
        registry = await loop.run_in_executor(ctx.executor, Registry.load, settings.checkpoints, settings.device)
        for mid, served in registry.models.items():
            b = Batcher(
                served, ctx.metrics, ctx.executor, settings.batch_window_ms, settings.max_batch_size, settings.batching
            )
            b.start()
            ctx.batchers[mid] = b
        ctx.registry = registry
        log.info("ready: %d model(s), store %s", len(registry.models), ctx.store.kind)
        try:
            yield
        finally:
            for b in ctx.batchers.values():
                await b.stop()
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
    app.add_middleware(EdgeMiddleware, ctx_getter=lambda: ctx)
    for r in (health.router, models.router, completions.router, sessions.router):
        app.include_router(r)
    return app
