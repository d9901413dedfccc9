"""The one error envelope: ``{"error": {"message", "type", "code", "param"}}`` for every failure."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

log = logging.getLogger(__name__)

TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    405: "invalid_request_error",
    409: "conflict_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    503: "service_unavailable_error",
}

# Every code the server sends, with its status: docs/api.md lists each (a test collects the codes
# used in server/ and checks both), and the client maps in-band stream errors by them.
CODES = {
    **dict.fromkeys(
        [
            "invalid_field",
            "invalid_token",
            "max_tokens_exceeded",
            "max_position_exceeded",
            "prompt_too_long",
            "n_exceeded",
            "ttl_exceeded",
            "text_not_supported",
            "http_error",
        ],
        400,
    ),
    "invalid_api_key": 401,
    **dict.fromkeys(["model_not_found", "session_not_found", "not_found"], 404),
    "method_not_allowed": 405,
    **dict.fromkeys(["position_mismatch", "session_busy", "state_incompatible", "idempotency_key_reused"], 409),
    "body_too_large": 413,
    **dict.fromkeys(["overloaded", "session_quota_exceeded", "ttl_quota_exceeded"], 429),
    **dict.fromkeys(["store_unavailable", "not_ready"], 503),
    "internal_error": 500,
}
HTTP_CODES = {404: "not_found", 405: "method_not_allowed"}  # statuses Starlette raises itself; others: http_error


class APIError(Exception):
    """An error with its HTTP status, machine-readable code and, optionally, the field at fault."""

    def __init__(
        self, status: int, code: str, message: str, param: str | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.param, self.retry_after = status, code, message, param, retry_after

    def body(self) -> dict:
        return envelope(self.status, self.code, self.message, self.param)


def envelope(status: int, code: str | None, message: str, param: str | None = None) -> dict:
    return {"error": {"message": message, "type": TYPES.get(status, "internal_error"), "code": code, "param": param}}


def bad_request(code: str, message: str, param: str | None = None) -> APIError:
    return APIError(400, code, message, param)


def not_found(code: str, message: str) -> APIError:
    return APIError(404, code, message)


def conflict(code: str, message: str) -> APIError:
    return APIError(409, code, message)


def unavailable(code: str, message: str, retry_after: float = 1.0) -> APIError:
    return APIError(503, code, message, retry_after=retry_after)


def response(err: APIError) -> JSONResponse:
    headers = {"Retry-After": str(max(1, round(err.retry_after)))} if err.retry_after is not None else None
    return JSONResponse(err.body(), status_code=err.status, headers=headers)


METHODS = ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT")


def allowed_methods(request: Request) -> list[str]:
    """Every method some route of the app serves on this request's path (asked of the routes
    themselves, as included routers hold theirs out of sight)."""
    routes = request.app.router.routes
    return [m for m in METHODS if any(r.matches({**request.scope, "method": m})[0] == Match.FULL for r in routes)]


def install(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        # a union field (prompt: str | list[int]) fails once per branch: the deepest error is the telling one
        first = max(exc.errors(), key=lambda e: len(e.get("loc", ())), default={})
        loc = list(first.get("loc", ()))
        if loc[:1] == ["header"] and len(loc) > 1:  # the header's own name: "Idempotency-Key"
            loc = ["-".join(w.capitalize() for w in str(loc[1]).split("-")), *loc[2:]]
        loc = [p for p in loc if p not in ("body", "query", "path")]
        param = str(loc[0]) if loc else None  # the request field, as OpenAI reports it
        where = "".join(f"[{p}]" if isinstance(p, int) else "" for p in loc[1:])
        msg = f"{param}{where}: {first.get('msg', 'invalid')}" if param else str(first.get("msg", "invalid request"))
        if first.get("type") == "finite_number":  # NaN or infinity: pydantic's message would name a bound
            msg = f"{param}: {first.get('input')} is not a finite number"
        if first.get("type") == "json_invalid":
            param, msg = None, "request body is not valid JSON"
        return response(bad_request("invalid_field", msg, param))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = HTTP_CODES.get(exc.status_code, "http_error")
        headers = exc.headers
        if exc.status_code == 405:  # Starlette's Allow names the first route of the path only
            headers = {**(headers or {}), "Allow": ", ".join(allowed_methods(request))}
        body = envelope(exc.status_code, code, str(exc.detail))
        return JSONResponse(body, status_code=exc.status_code, headers=headers)

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse(envelope(500, "internal_error", "internal server error"), status_code=500)
