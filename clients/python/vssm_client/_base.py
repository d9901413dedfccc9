"""What the sync and async clients share: configuration, URLs, headers, the retry policy."""

from __future__ import annotations

import email.utils
import json
import logging
import math
import os
import random
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel

from ._exceptions import APIConnectionError, APIError, APITimeoutError
from ._version import __version__

log = logging.getLogger("vssm_client")

T = TypeVar("T", bound=BaseModel)

DEFAULT_BASE_URL = "http://127.0.0.1:8000"
DEFAULT_TIMEOUT = httpx.Timeout(600.0, connect=5.0)  # long generations are legitimate; a dead host is not
DEFAULT_MAX_RETRIES = 2
INITIAL_RETRY_DELAY = 0.5  # seconds, doubled per attempt
MAX_RETRY_DELAY = 8.0
MAX_RETRY_AFTER = 60.0  # a server asking for longer gets this
RETRY_STATUSES = frozenset({429, 503})
# 429s that waiting does not cure soon: a quota frees when the caller's own sessions go
QUOTA_CODES = frozenset({"session_quota_exceeded", "ttl_quota_exceeded"})
# Failures that prove the request never reached the server: always safe to retry.
NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


def error_code(response: httpx.Response) -> str | None:
    """The ``code`` of an error envelope (the body must already be read), or ``None``."""
    try:
        err = response.json().get("error")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        return None
    code = err.get("code") if isinstance(err, dict) else None
    return code if isinstance(code, str) else None


def server_did_nothing(response: httpx.Response) -> bool:
    """Whether an error response proves the request changed nothing on the server.  A 429 and a 503
    ``not_ready`` are raised before any work; a 503 ``store_unavailable`` may come from a session
    commit whose write reached the store but whose reply did not, so the step may have happened."""
    return response.status_code == 429 or (response.status_code == 503 and error_code(response) == "not_ready")


def normalize_base_url(url: str) -> str:
    """The server root: ``http://h:8000``, ``http://h:8000/`` and ``http://h:8000/v1`` are one server."""
    url = url.strip().rstrip("/")
    return url.removesuffix("/v1").rstrip("/")


def retry_after_seconds(response: httpx.Response | None) -> float | None:
    """``Retry-After`` as seconds (number or HTTP date), capped at ``MAX_RETRY_AFTER``; ``None`` if absent."""
    value = response.headers.get("retry-after") if response is not None else None
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = email.utils.parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError, IndexError):
            return None
    if not math.isfinite(seconds):
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


def backoff_delay(attempt: int, initial: float, maximum: float, rand: Callable[[], float] = random.random) -> float:
    """``min(maximum, initial * 2**attempt)`` less up to 25% jitter; ``attempt`` counts from 0."""
    return min(maximum, initial * 2**attempt) * (1.0 - 0.25 * rand())


def drop_none(**fields: Any) -> dict[str, Any]:
    """A request body without the fields left unset, so the server's defaults apply."""
    return {k: v for k, v in fields.items() if v is not None}


def prompt_value(prompt: str | list[int] | tuple[int, ...] | None) -> str | list[int] | None:
    return prompt if prompt is None or isinstance(prompt, str) else [int(t) for t in prompt]


def parse(response: httpx.Response, cast_to: type[T]) -> T:
    try:
        return cast_to.model_validate(response.json())
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError) as e:
        raise APIError(f"unexpected response body from {response.request.url}: {e}", request=response.request) from e


def wrap_transport_error(e: httpx.TransportError, request: httpx.Request) -> APIConnectionError:
    if isinstance(e, httpx.TimeoutException):
        return APITimeoutError(f"Request timed out: {e}", request=request)
    return APIConnectionError(f"Connection error: {e}", request=request)


def _timeout_arg(timeout: float | httpx.Timeout | None) -> float | tuple[float | None, ...] | None:
    """``timeout`` as plain values: an injected client may be another httpx-compatible library (e.g.
    Starlette's ``TestClient`` runs on ``httpx2`` where installed), which rejects an ``httpx.Timeout``
    object but takes the (connect, read, write, pool) tuple, as httpx does."""
    if isinstance(timeout, httpx.Timeout):
        return (timeout.connect, timeout.read, timeout.write, timeout.pool)
    return timeout


class BaseClient:
    """Configuration and policy; subclasses own the ``httpx`` client and the request loop."""

    def __init__(
        self,
        *,
        base_url: str | None,
        api_key: str | None,
        timeout: float | httpx.Timeout | None,
        max_retries: int,
        default_headers: Mapping[str, str] | None,
    ) -> None:
        if max_retries < 0:
            raise ValueError("max_retries must be >= 0")
        self.base_url = normalize_base_url(base_url or os.environ.get("VSSM_BASE_URL") or DEFAULT_BASE_URL)
        self.api_key = api_key if api_key is not None else (os.environ.get("VSSM_API_KEY") or None)
        self.timeout = timeout
        self.max_retries = max_retries
        self.initial_retry_delay = INITIAL_RETRY_DELAY
        self.max_retry_delay = MAX_RETRY_DELAY
        self._default_headers = dict(default_headers or {})
        self._random: Callable[[], float] = random.random

    @property
    def api_url(self) -> str:
        return f"{self.base_url}/v1"

    def _headers(self, stream: bool) -> dict[str, str]:
        headers = {
            "Accept": "text/event-stream" if stream else "application/json",
            "User-Agent": f"vssm-client/{__version__}",
        }
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return {**headers, **self._default_headers}

    def _build_request(
        self,
        http: httpx.Client | httpx.AsyncClient,
        method: str,
        path: str,
        body: Any,
        stream: bool,
        headers: dict[str, str] | None = None,
    ) -> httpx.Request:
        return http.build_request(
            method,
            self.base_url + path,
            json=body,
            headers={**self._headers(stream), **(headers or {})},
            timeout=_timeout_arg(self.timeout),
        )

    def _retry_on_error(self, attempt: int, retries: int, error: httpx.TransportError, idempotent: bool) -> bool:
        return attempt < retries and (idempotent or isinstance(error, NOT_SENT))

    def _retry_on_status(self, attempt: int, retries: int, response: httpx.Response, idempotent: bool) -> bool:
        """429 (but a quota) and 503 are retried; for a step that is not safe to repeat, only when the
        server certainly did nothing (see ``server_did_nothing``)."""
        if attempt >= retries or response.status_code not in RETRY_STATUSES or error_code(response) in QUOTA_CODES:
            return False
        return idempotent or server_did_nothing(response)

    def _retry_delay(self, attempt: int, response: httpx.Response | None) -> float:
        after = retry_after_seconds(response)
        if after is not None:
            return after
        return backoff_delay(attempt, self.initial_retry_delay, self.max_retry_delay, self._random)

    def _log_retry(self, request: httpx.Request, why: str, delay: float, attempt: int, retries: int) -> None:
        log.info(
            "retrying %s %s in %.2fs after %s (retry %d of %d)",
            request.method,
            request.url.path,
            delay,
            why,
            attempt + 1,
            retries,
        )
