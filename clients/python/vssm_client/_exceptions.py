"""Errors raised by the client.

Our exception hierarchy::

    APIError
    ├── APIConnectionError            no response: refused, reset, dropped mid-stream
    │   └── APITimeoutError
    └── APIStatusError                the server answered with an error envelope
        ├── BadRequestError           400, 413, 422: invalid_field, invalid_token, max_tokens_exceeded, ...
        ├── AuthenticationError       401: invalid_api_key
        ├── NotFoundError             404: model_not_found, not_found
        │   └── SessionNotFoundError  404: session_not_found (unknown, expired, or another key's)
        ├── ConflictError             409: position_mismatch, session_busy, state_incompatible
        ├── RateLimitError            429: overloaded; session_quota_exceeded, ttl_quota_exceeded (not retried)
        └── InternalServerError       5xx
            └── ServiceUnavailableError  503: store_unavailable, not_ready

An error that arrives in-band in a stream (``data: {"error": {...}}``) raises the same classes; its
``status_code`` is the status the code maps to in docs/api.md, since the HTTP status was already 200.
"""

from __future__ import annotations

import json
from typing import Any

import httpx

__all__ = [
    "APIConnectionError",
    "APIError",
    "APIStatusError",
    "APITimeoutError",
    "AuthenticationError",
    "BadRequestError",
    "ConflictError",
    "InternalServerError",
    "NotFoundError",
    "RateLimitError",
    "ServiceUnavailableError",
    "SessionNotFoundError",
]


class APIError(Exception):
    """Base of every error this package raises."""

    message: str
    request: httpx.Request | None

    def __init__(self, message: str, *, request: httpx.Request | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.request = request


class APIConnectionError(APIError):
    """The request failed before a complete response arrived."""

    def __init__(self, message: str = "Connection error.", *, request: httpx.Request | None = None) -> None:
        super().__init__(message, request=request)


class APITimeoutError(APIConnectionError):
    """The request timed out."""

    def __init__(self, message: str = "Request timed out.", *, request: httpx.Request | None = None) -> None:
        super().__init__(message, request=request)


class APIStatusError(APIError):
    """The server answered with an error: ``status_code``, ``code``, ``type``, ``param``, ``request_id``."""

    status_code: int
    code: str | None
    type: str | None
    param: str | None
    request_id: str | None
    body: Any
    response: httpx.Response | None

    def __init__(
        self,
        message: str,
        *,
        status_code: int,
        code: str | None = None,
        type: str | None = None,
        param: str | None = None,
        request_id: str | None = None,
        body: Any = None,
        response: httpx.Response | None = None,
        request: httpx.Request | None = None,
    ) -> None:
        super().__init__(message, request=request)
        self.status_code = status_code
        self.code = code
        self.type = type
        self.param = param
        self.request_id = request_id
        self.body = body
        self.response = response
        # Set by the client when this error came on a retry after a response was lost, i.e. the
        # earlier attempt may have committed: lets session steps recognise "already done".
        self._after_lost_response = False

    def __str__(self) -> str:
        where = f" (request id {self.request_id})" if self.request_id else ""
        return f"{self.status_code} {self.code or self.type or 'error'}: {self.message}{where}"


class BadRequestError(APIStatusError):
    """400 (or 413, 422): a field is invalid or a limit is exceeded; ``code`` and ``param`` say which."""


class AuthenticationError(APIStatusError):
    """401: missing or wrong API key."""


class NotFoundError(APIStatusError):
    """404: unknown model, session or path."""


class SessionNotFoundError(NotFoundError):
    """404 ``session_not_found``: unknown, expired, deleted, or owned by another key."""


class ConflictError(APIStatusError):
    """409: ``position_mismatch`` (stale ``expected_position``), ``session_busy``, ``state_incompatible`` or
    ``idempotency_key_reused``."""


class RateLimitError(APIStatusError):
    """429 ``overloaded``: retried automatically, honouring ``Retry-After``.  A quota
    (``session_quota_exceeded``, ``ttl_quota_exceeded``) is not retried: it frees when the caller's
    sessions are deleted or expire."""


class InternalServerError(APIStatusError):
    """5xx."""


class ServiceUnavailableError(InternalServerError):
    """503 ``store_unavailable`` or ``not_ready``: retried automatically, honouring ``Retry-After``."""


_BY_STATUS: dict[int, type[APIStatusError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    404: NotFoundError,
    409: ConflictError,
    413: BadRequestError,
    422: BadRequestError,
    429: RateLimitError,
    503: ServiceUnavailableError,
}

# For in-band stream errors, which carry no status of their own.
_STATUS_BY_CODE = {
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
_STATUS_BY_TYPE = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "not_found_error": 404,
    "conflict_error": 409,
    "rate_limit_error": 429,
    "service_unavailable_error": 503,
    "internal_error": 500,
}


def _error_class(status_code: int, code: str | None) -> type[APIStatusError]:
    if status_code == 404 and code == "session_not_found":
        return SessionNotFoundError
    if status_code in _BY_STATUS:
        return _BY_STATUS[status_code]
    if status_code >= 500:
        return InternalServerError
    return APIStatusError


def _from_envelope(
    status_code: int,
    body: Any,
    *,
    fallback_message: str,
    request_id: str | None,
    response: httpx.Response | None,
    request: httpx.Request | None,
) -> APIStatusError:
    err = body.get("error") if isinstance(body, dict) else None
    err = err if isinstance(err, dict) else {}
    code = err.get("code") if isinstance(err.get("code"), str) else None
    message = err.get("message") if isinstance(err.get("message"), str) else fallback_message
    cls = _error_class(status_code, code)
    return cls(
        message,
        status_code=status_code,
        code=code,
        type=err.get("type"),
        param=err.get("param"),
        request_id=request_id,
        body=body,
        response=response,
        request=request,
    )


def make_status_error(response: httpx.Response) -> APIStatusError:
    """The typed error for an error response (its body must already be read)."""
    try:
        body: Any = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        body = response.text or None
    return _from_envelope(
        response.status_code,
        body,
        fallback_message=(body if isinstance(body, str) else None) or response.reason_phrase or "error",
        request_id=response.headers.get("x-request-id"),
        response=response,
        request=response.request,
    )


def make_stream_error(body: dict[str, Any], response: httpx.Response | None) -> APIStatusError:
    """The typed error for an in-band ``{"error": {...}}`` stream event."""
    err = body.get("error") if isinstance(body.get("error"), dict) else {}
    status_code = _STATUS_BY_CODE.get(err.get("code")) or _STATUS_BY_TYPE.get(err.get("type")) or 500
    return _from_envelope(
        status_code,
        body,
        fallback_message="error in stream",
        request_id=response.headers.get("x-request-id") if response is not None else None,
        response=response,
        request=response.request if response is not None else None,
    )
