"""The OpenAPI document as the server behaves: every operation's error statuses with the envelope,
streams and Prometheus text with their content types, and no 422 (a validation failure is a 400)."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

from .schemas import ErrorResponse

WHY = {
    400: "A field is invalid or over a limit (`code` says which, `param` names the field)",
    401: "Missing or wrong API key (when the server has keys)",
    404: "Unknown model or session (another key's session included)",
    409: "Stale `expected_position`, busy session, incompatible state or reused `Idempotency-Key`",
    413: "Request body over the server's limit",
    429: "Over the admission limit or a quota (`Retry-After` says when to try again)",
    503: "Models still loading or the session store unreachable (`Retry-After`)",
}
RETRY_AFTER = {"Retry-After": {"description": "seconds to wait", "required": True, "schema": {"type": "integer"}}}


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for a route: each status with the envelope (and ``Retry-After`` where sent)."""
    return {
        s: {"model": ErrorResponse, "description": WHY[s], **({"headers": RETRY_AFTER} if s in (429, 503) else {})}
        for s in statuses
    }


def json_or_stream(model: type[BaseModel], status: int = 200) -> dict[int | str, dict[str, Any]]:
    """A response that is ``model`` as JSON, or Server-Sent Events with ``stream: true`` (each
    event's ``data`` a ``model`` as JSON, then ``[DONE]``; an error after the first event is the
    envelope, in band).  ``itemSchema`` describes one event, as FastAPI's own SSE routes do."""
    data = f"one {model.__name__} as JSON; `[DONE]` at the end; or an error envelope, in band"
    event = {
        "type": "object",
        "required": ["data"],
        "properties": {
            "data": {"type": "string", "description": data},
            "event": {"type": "string"},
            "id": {"type": "string"},
            "retry": {"type": "integer", "minimum": 0},
        },
    }
    events = {"itemSchema": event}
    return {
        status: {
            "model": model,
            "description": f"{model.__name__}, or with `stream: true` a stream of them",
            "content": {"text/event-stream": events},
        }
    }


def install(app: FastAPI) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            for path in schema["paths"].values():
                for operation in path.values():
                    operation["responses"].pop("422", None)  # FastAPI's default; ours is a 400 envelope
            for name in ("HTTPValidationError", "ValidationError"):
                schema.get("components", {}).get("schemas", {}).pop(name, None)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
