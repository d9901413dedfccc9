"""``Client`` and ``AsyncClient``: one HTTP connection pool, the retry loop, and the resources."""

from __future__ import annotations

import asyncio
import copy
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import httpx

from ._base import (
    DEFAULT_MAX_RETRIES,
    DEFAULT_TIMEOUT,
    NOT_SENT,
    BaseClient,
    server_did_nothing,
    wrap_transport_error,
)
from ._exceptions import make_status_error
from ._resources import AsyncCompletions, AsyncModels, AsyncSessions, Completions, Models, Sessions

__all__ = ["AsyncClient", "Client"]

_KEEP: Any = object()  # ``with_options`` sentinel: keep the current value


class Client(BaseClient):
    """Synchronous client.

    ``base_url`` is the server root (a trailing ``/v1`` is accepted); it and ``api_key`` default to
    ``VSSM_BASE_URL`` and ``VSSM_API_KEY``.  Connection errors, 429 and 503 are retried up to
    ``max_retries`` times with jittered exponential backoff, honouring ``Retry-After``.  Pass
    ``http_client`` (left open on ``close``) or ``transport`` to control the HTTP layer.
    """

    models: Models
    completions: Completions
    sessions: Sessions

    def __init__(
        self,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout: float | httpx.Timeout | None = DEFAULT_TIMEOUT,
        max_retries: int = DEFAULT_MAX_RETRIES,
        default_headers: Mapping[str, str] | None = None,
        http_client: httpx.Client | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        super().__init__(
            base_url=base_url,
            api_key=api_key,
            timeout=timeout,
            max_retries=max_retries,
            default_headers=default_headers,
        )
        if http_client is not None and transport is not None:
            raise ValueError("pass http_client or transport, not both")
        self._owns_http = http_client is None
        self._http = http_client if http_client is not None else httpx.Client(transport=transport, timeout=timeout)
        self._sleep: Callable[[float], None] = time.sleep
        self._bind()

    def _bind(self) -> None:
        self.models = Models(self)
        self.completions = Completions(self)
        self.sessions = Sessions(self)

    def with_options(self, *, timeout: float | httpx.Timeout | None = _KEEP, max_retries: int | None = None) -> Client:
        """A copy with another timeout or retry budget, sharing this client's connection pool."""
        other = copy.copy(self)
        other._owns_http = False
        if timeout is not _KEEP:
            other.timeout = timeout
        if max_retries is not None:
            other.max_retries = max_retries
        other._bind()
        return other

    def health(self) -> dict[str, Any]:
        """``GET /health`` (not retried)."""
        return self._request("GET", "/health", max_retries=0).json()

    def ready(self) -> dict[str, Any]:
        """``GET /ready`` (not retried); raises ``ServiceUnavailableError`` while loading or without a store."""
        return self._request("GET", "/ready", max_retries=0).json()

    def _request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        idempotent: bool = True,
        stream: bool = False,
        max_retries: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        """Send with retries; return a successful response (unread if ``stream``) or raise the typed error.

        ``idempotent=False`` limits retries to failures that prove the server did nothing: transport
        errors before the request was sent, 429, and 503 ``not_ready``.
        """
        retries = self.max_retries if max_retries is None else max_retries
        attempt, lost = 0, False
        while True:
            request = self._build_request(self._http, method, path, body, stream, headers)
            try:
                response = self._http.send(request, stream=stream)
            except httpx.TransportError as e:
                if not self._retry_on_error(attempt, retries, e, idempotent):
                    raise wrap_transport_error(e, request) from e
                lost = lost or not isinstance(e, NOT_SENT)
                delay = self._retry_delay(attempt, None)
                self._log_retry(request, type(e).__name__, delay, attempt, retries)
            else:
                if response.is_success:
                    return response
                if stream:
                    response.read()
                    response.close()
                if not self._retry_on_status(attempt, retries, response, idempotent):
                    err = make_status_error(response)
                    err._after_lost_response = lost
                    raise err
                lost = lost or not server_did_nothing(response)
                delay = self._retry_delay(attempt, response)
                self._log_retry(request, str(response.status_code), delay, attempt, retries)
            self._sleep(delay)
            attempt += 1

    def close(self) -> None:
        """Close the connection pool (unless it was passed in)."""
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Client(base_url={self.base_url!r})"


class AsyncClient(BaseClient):
    """Asynchronous twin of ``Client``: same arguments, awaitable methods, async iterators for streams."""

    models: AsyncModels
    completions: AsyncCompletions
    sessions: AsyncSessions

    def __init__(
        self,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout: float | httpx.Timeout | None = DEFAULT_TIMEOUT,
        max_retries: int = DEFAULT_MAX_RETRIES,
        default_headers: Mapping[str, str] | None = None,
        http_client: httpx.AsyncClient | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(
            base_url=base_url,
            api_key=api_key,
            timeout=timeout,
            max_retries=max_retries,
            default_headers=default_headers,
        )
        if http_client is not None and transport is not None:
            raise ValueError("pass http_client or transport, not both")
        self._owns_http = http_client is None
        self._http = http_client if http_client is not None else httpx.AsyncClient(transport=transport, timeout=timeout)
        self._sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
        self._bind()

    def _bind(self) -> None:
        self.models = AsyncModels(self)
        self.completions = AsyncCompletions(self)
        self.sessions = AsyncSessions(self)

    def with_options(
        self, *, timeout: float | httpx.Timeout | None = _KEEP, max_retries: int | None = None
    ) -> AsyncClient:
        """A copy with another timeout or retry budget, sharing this client's connection pool."""
        other = copy.copy(self)
        other._owns_http = False
        if timeout is not _KEEP:
            other.timeout = timeout
        if max_retries is not None:
            other.max_retries = max_retries
        other._bind()
        return other

    async def health(self) -> dict[str, Any]:
        """``GET /health`` (not retried)."""
        return (await self._request("GET", "/health", max_retries=0)).json()

    async def ready(self) -> dict[str, Any]:
        """``GET /ready`` (not retried); raises ``ServiceUnavailableError`` while loading or without a store."""
        return (await self._request("GET", "/ready", max_retries=0)).json()

    async def _request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        idempotent: bool = True,
        stream: bool = False,
        max_retries: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        """See ``Client._request``."""
        retries = self.max_retries if max_retries is None else max_retries
        attempt, lost = 0, False
        while True:
            request = self._build_request(self._http, method, path, body, stream, headers)
            try:
                response = await self._http.send(request, stream=stream)
            except httpx.TransportError as e:
                if not self._retry_on_error(attempt, retries, e, idempotent):
                    raise wrap_transport_error(e, request) from e
                lost = lost or not isinstance(e, NOT_SENT)
                delay = self._retry_delay(attempt, None)
                self._log_retry(request, type(e).__name__, delay, attempt, retries)
            else:
                if response.is_success:
                    return response
                if stream:
                    await response.aread()
                    await response.aclose()
                if not self._retry_on_status(attempt, retries, response, idempotent):
                    err = make_status_error(response)
                    err._after_lost_response = lost
                    raise err
                lost = lost or not server_did_nothing(response)
                delay = self._retry_delay(attempt, response)
                self._log_retry(request, str(response.status_code), delay, attempt, retries)
            await self._sleep(delay)
            attempt += 1

    async def close(self) -> None:
        """Close the connection pool (unless it was passed in)."""
        if self._owns_http:
            await self._http.aclose()

    aclose = close

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"AsyncClient(base_url={self.base_url!r})"
