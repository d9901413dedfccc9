"""Server-sent events: a line decoder and the sync/async streams of typed items built on it."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import httpx
from pydantic import BaseModel

from ._exceptions import APIConnectionError, APITimeoutError, make_stream_error

__all__ = ["AsyncStream", "SSEDecoder", "ServerSentEvent", "Stream"]

T = TypeVar("T", bound=BaseModel)
DONE = "[DONE]"


@dataclass(frozen=True)
class ServerSentEvent:
    data: str
    event: str | None = None
    id: str | None = None
    retry: int | None = None

    def json(self) -> Any:
        return json.loads(self.data)


class SSEDecoder:
    """Feed lines (without their terminators); a blank line completes an event (WHATWG rules)."""

    def __init__(self) -> None:
        self._data: list[str] = []
        self._event: str | None = None
        self._id: str | None = None
        self._retry: int | None = None

    def decode(self, line: str) -> ServerSentEvent | None:
        if not line:
            if not self._data and self._event is None:
                return None  # nothing pending (e.g. after comments only)
            sse = ServerSentEvent("\n".join(self._data), self._event, self._id, self._retry)
            self._data, self._event, self._retry = [], None, None  # ``id`` persists, as in browsers
            return sse
        if line.startswith(":"):
            return None  # comment, e.g. ": keep-alive"
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id" and "\0" not in value:
            self._id = value
        elif name == "retry" and value.isdigit():
            self._retry = int(value)
        return None

    def iter_events(self, lines: Iterable[str]) -> Iterator[ServerSentEvent]:
        for line in lines:
            sse = self.decode(line)
            if sse is not None:
                yield sse


def _item(sse: ServerSentEvent, cast_to: type[T], response: httpx.Response | None) -> T | None:
    """The typed item of one event, ``None`` for ``[DONE]``; raises on an in-band error."""
    if sse.data.strip() == DONE:
        return None
    try:
        body = sse.json()
    except json.JSONDecodeError as e:
        raise APIConnectionError(f"malformed stream event: {sse.data[:200]!r}") from e
    if isinstance(body, dict) and "error" in body and (sse.event in (None, "error", "message")):
        raise make_stream_error(body, response)
    return cast_to.model_validate(body)


def _transport_error(e: httpx.TransportError) -> APIConnectionError:
    request = getattr(e, "_request", None)
    if isinstance(e, httpx.TimeoutException):
        return APITimeoutError(f"stream timed out: {e}", request=request)
    return APIConnectionError(f"stream interrupted: {e}", request=request)


_NO_DONE = "stream ended before [DONE]"


class Stream(Generic[T]):
    """Items of one streamed response, closed at ``[DONE]``, on error, or by ``close()``.

    The request is sent on first iteration (so status errors surface there), and retried per the
    client's policy until the response starts; once it has, a broken stream raises
    ``APIConnectionError`` and is never retried.  Use ``with`` to close a stream left unfinished.
    """

    def __init__(
        self,
        open_response: Callable[[], httpx.Response],
        cast_to: type[T],
        on_item: Callable[[T], None] | None = None,
    ) -> None:
        self._open_response = open_response
        self._cast_to = cast_to
        self._on_item = on_item
        self._iterator: Iterator[T] | None = None
        self.response: httpx.Response | None = None

    def _iter(self) -> Iterator[T]:
        response = self.response = self._open_response()
        try:
            events = SSEDecoder().iter_events(response.iter_lines())
            for sse in events:
                item = _item(sse, self._cast_to, response)
                if item is None:
                    return
                if self._on_item is not None:
                    self._on_item(item)
                yield item
            raise APIConnectionError(_NO_DONE, request=response.request)
        except httpx.TransportError as e:
            raise _transport_error(e) from e
        finally:
            response.close()

    def __iter__(self) -> Iterator[T]:
        return self

    def __next__(self) -> T:
        if self._iterator is None:
            self._iterator = self._iter()
        return next(self._iterator)

    def __enter__(self) -> Stream[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._iterator is not None and hasattr(self._iterator, "close"):
            self._iterator.close()
        if self.response is not None:
            self.response.close()


class AsyncStream(Generic[T]):
    """The async twin of ``Stream``: ``async for item in stream``, ``async with stream``."""

    def __init__(
        self,
        open_response: Callable[[], Awaitable[httpx.Response]],
        cast_to: type[T],
        on_item: Callable[[T], None] | None = None,
    ) -> None:
        self._open_response = open_response
        self._cast_to = cast_to
        self._on_item = on_item
        self._iterator: AsyncIterator[T] | None = None
        self.response: httpx.Response | None = None

    async def _iter(self) -> AsyncIterator[T]:
        response = self.response = await self._open_response()
        try:
            decoder = SSEDecoder()
            async for line in response.aiter_lines():
                sse = decoder.decode(line)
                if sse is None:
                    continue
                item = _item(sse, self._cast_to, response)
                if item is None:
                    return
                if self._on_item is not None:
                    self._on_item(item)
                yield item
            raise APIConnectionError(_NO_DONE, request=response.request)
        except httpx.TransportError as e:
            raise _transport_error(e) from e
        finally:
            await response.aclose()

    def __aiter__(self) -> AsyncIterator[T]:
        return self

    async def __anext__(self) -> T:
        if self._iterator is None:
            self._iterator = self._iter()
        return await self._iterator.__anext__()

    async def __aenter__(self) -> AsyncStream[T]:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._iterator is not None and hasattr(self._iterator, "aclose"):
            await self._iterator.aclose()
        if self.response is not None:
            await self.response.aclose()
