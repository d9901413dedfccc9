"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ..deps import ContextDep
from ..errors import envelope

router = APIRouter(tags=["operations"])


@router.get("/health")
async def health() -> dict:
    return {"status": "ok"}


@router.get("/ready")
async def ready(ctx: ContextDep) -> JSONResponse:
    if ctx.registry is None:
        return JSONResponse(envelope(503, "not_ready", "models are still loading"), 503, {"Retry-After": "1"})
    if not await ctx.store.ping():
        return JSONResponse(
            envelope(503, "store_unavailable", f"session store ({ctx.store.kind}) is unreachable"),
            503,
            {"Retry-After": "1"},
        )
    return JSONResponse({"status": "ready", "models": sorted(ctx.registry.models), "store": ctx.store.kind})


@router.get("/metrics")
async def metrics(ctx: ContextDep) -> Response:
    return Response(generate_latest(ctx.metrics.registry), media_type=CONTENT_TYPE_LATEST)
