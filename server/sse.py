"""Server-Sent Events: one ``data:`` event per chunk, keep-alive comments, in-band errors, ``[DONE]``."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import TypeVar

from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel
from starlette.background import BackgroundTask

from .errors import APIError, envelope
from .store import StoreUnavailable

log = logging.getLogger(__name__)

M = TypeVar("M", bound=BaseModel)

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
DONE = b"data: [DONE]\n\n"  # the end of every stream


def event(data: BaseModel | dict | str) -> bytes:
    if isinstance(data, BaseModel):
        payload = data.model_dump_json()
    elif isinstance(data, dict):
        payload = json.dumps(data)
    else:
        payload = data
    return f"data: {payload}\n\n".encode()


def error_event(exc: BaseException) -> bytes:
    if isinstance(exc, APIError):
        return event(exc.body())
    if isinstance(exc, StoreUnavailable):
        return event(envelope(503, "store_unavailable", str(exc)))
    log.exception("error inside a stream", exc_info=exc)
    return event(envelope(500, "internal_error", "internal server error"))


async def with_keepalive(
    events: AsyncIterator[BaseModel], keepalive: float, on_first: Callable[[], None] | None = None
) -> AsyncIterator[bytes]:
    """Encode ``events``; a comment every ``keepalive`` seconds of silence; errors in band; then [DONE]."""
    it = events.__aiter__()
    first = True
    try:
        while True:
            task = asyncio.ensure_future(it.__anext__())
            try:
                while True:
                    done, _ = await asyncio.wait({task}, timeout=keepalive)
                    if done:
                        break
                    yield b": keep-alive\n\n"
                item = task.result()
            except StopAsyncIteration:
                break
            except Exception as exc:
                yield error_event(exc)
                return
            finally:
                if not task.done():  # the client went away while a chunk was being made
                    task.cancel()
                    # let the producer unwind first: closing it below while it still runs would
                    # raise "aclose(): asynchronous generator is already running"
                    await asyncio.wait({task})
                    if not task.cancelled():
                        task.exception()  # retrieved, so asyncio does not log it as lost
            if first and on_first is not None:
                on_first()
            first = False
            yield event(item)
        yield DONE
    finally:
        aclose = getattr(it, "aclose", None)
        if aclose is not None:  # run the producer's own cleanup now, not at garbage collection
            await aclose()


def sse_response(body: AsyncIterator[bytes], on_close: Callable[[], None] | None = None) -> StreamingResponse:
    """``on_close`` runs once the response is over, even if the client left before the body started.

    It runs on the event loop: Starlette hands a plain function to a worker thread, a thread hop
    per streamed response (a fifth of the loop's request work at 64 clients, by py-spy) and a
    callback that would touch the loop's counters from another thread.
    """

    async def closed() -> None:
        if on_close is not None:
            on_close()

    return StreamingResponse(
        body,
        media_type="text/event-stream",
        headers=SSE_HEADERS,
        background=BackgroundTask(closed) if on_close else None,
    )


async def stream_response(
    events: AsyncGenerator[M, None],
    keepalive: float,
    last: Callable[[M], bool],
    on_first: Callable[[], None] | None = None,
    on_close: Callable[[], None] | None = None,
) -> Response:
    """The event stream of ``events``, run up to its first item now, before any byte is sent: a failure
    there (a busy session, an incompatible state, the store down) is then an ordinary HTTP error with its
    status, and only a failure after the first chunk goes in band.

    Where that item is the last one (``last(item)``: the producer yields nothing after it), the stream's
    every byte is known: it goes as one response, the events and ``[DONE]`` in one write, with the
    producer closed first (its cleanup run, ``on_close`` called).  A stream made of one chunk (a session's
    chunk streamed at its own size) otherwise paid three writes and the streaming response's task group:
    one response took 0.33-0.47 ms off such a chunk at one client, and 0.33-0.50 ms of the server's CPU
    (docs/experiments/rounds-and-serving.md, thirty-fourth session).  The bytes are those the stream would
    send (a failure while closing the producer: the event, then the error in band); only keep-alive
    comments could not precede them, and none can where the first item is already made.  Else the stream,
    as :func:`sse_response`.
    """
    try:
        head = await anext(events)
    except StopAsyncIteration:
        return _whole(DONE, None, on_close)
    try:
        whole = last(head)
        if whole:
            await events.aclose()  # the producer's cleanup now: it releases the admission slot
    except Exception as exc:
        with contextlib.suppress(Exception):  # closed already, or failing again: the first failure is reported
            await events.aclose()
        return _whole(event(head) + error_event(exc), on_first, on_close)
    if whole:
        return _whole(event(head) + DONE, on_first, on_close)

    async def rest() -> AsyncIterator[M]:
        async with contextlib.aclosing(events):  # closing the stream runs the producer's cleanup now
            yield head
            async for item in events:
                yield item

    return sse_response(with_keepalive(rest(), keepalive, on_first), on_close)


def _whole(body: bytes, on_first: Callable[[], None] | None, on_close: Callable[[], None] | None) -> Response:
    """A whole event stream's bytes as one response; ``on_close`` runs whatever ``on_first`` does."""
    try:
        if on_first is not None:
            on_first()
    finally:
        if on_close is not None:
            on_close()
    return Response(body, media_type="text/event-stream", headers=SSE_HEADERS)
