"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ..deps import ContextDep
from ..errors import envelope
from ..openapi import errors
from ..schemas import Health, Ready

router = APIRouter(tags=["operations"])
PROMETHEUS = {"type": "string", "description": CONTENT_TYPE_LATEST}


@router.get("/health")
async def health() -> Health:
    return Health()


@router.get("/ready", responses={200: {"model": Ready}, **errors(503)})
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


@router.get(
    "/metrics",
    response_class=PlainTextResponse,
    responses={200: {"description": "Prometheus text format", "content": {"text/plain": {"schema": PROMETHEUS}}}},
)
async def metrics(ctx: ContextDep) -> Response:
    return Response(generate_latest(ctx.metrics.registry), media_type=CONTENT_TYPE_LATEST)
