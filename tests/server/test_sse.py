"""The SSE encoder on its own: keep-alives, in-band errors, a client that leaves mid-chunk, and a stream whose
first item is its last sent whole (``stream_response``)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator

from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from vssm.server.errors import APIError
from vssm.server.sse import stream_response, with_keepalive


class Item(BaseModel):
    n: int


def test_keepalive_then_items_then_done():
    async def slow() -> AsyncIterator[Item]:
        await asyncio.sleep(0.05)
        yield Item(n=1)
        yield Item(n=2)

    async def main() -> list[bytes]:
        return [b async for b in with_keepalive(slow(), keepalive=0.01)]

    out = asyncio.run(main())
    assert out[0] == b": keep-alive\n\n"
    data = [b for b in out if b.startswith(b"data")]
    assert data == [b'data: {"n":1}\n\n', b'data: {"n":2}\n\n', b"data: [DONE]\n\n"]


def test_error_after_first_item_is_in_band():
    async def failing() -> AsyncIterator[Item]:
        yield Item(n=1)
        raise APIError(409, "session_busy", "busy")

    async def main() -> list[bytes]:
        return [b async for b in with_keepalive(failing(), keepalive=1.0)]

    out = asyncio.run(main())
    assert out[0] == b'data: {"n":1}\n\n'
    assert b'"code": "session_busy"' in out[1] and len(out) == 2  # no [DONE] after an error


def test_a_stream_closed_between_chunks_closes_its_producer_at_once():
    """``stream_response`` reads the first chunk ahead; closing the stream must still run the producer's
    cleanup (it releases the admission slot), not leave it to garbage collection."""
    cleaned = asyncio.Event()

    async def producer() -> AsyncGenerator[Item, None]:
        try:
            yield Item(n=1)
            yield Item(n=2)
        finally:
            cleaned.set()

    async def main() -> None:
        response = await stream_response(producer(), keepalive=10.0, last=lambda item: item.n == 2)
        assert isinstance(response, StreamingResponse) and not cleaned.is_set()
        stream = response.body_iterator
        assert await anext(stream) == b'data: {"n":1}\n\n'
        await stream.aclose()  # the client left after the first chunk
        assert cleaned.is_set()

    asyncio.run(main())


def test_a_stream_whose_first_item_is_its_last_is_one_response_of_the_same_bytes():
    """Where the first item is the last, every byte is known before the response starts: one write of
    the event and [DONE], the producer closed and the slot released first; a longer stream sends the
    same events one by one."""
    calls: list[str] = []

    def producer(n: int):
        async def items() -> AsyncGenerator[Item, None]:
            try:
                for i in range(1, n + 1):
                    yield Item(n=i)
            finally:
                calls.append("cleaned")

        return items()

    async def main() -> None:
        def last(item: Item) -> bool:
            return item.n == 1

        one = await stream_response(
            producer(1), 10.0, last, lambda: calls.append("first"), lambda: calls.append("closed")
        )
        assert not isinstance(one, StreamingResponse) and one.media_type == "text/event-stream"
        assert one.body == b'data: {"n":1}\n\ndata: [DONE]\n\n'
        assert one.headers["cache-control"] == "no-cache" and one.headers["x-accel-buffering"] == "no"
        assert calls == ["cleaned", "first", "closed"]
        empty = await stream_response(producer(0), 10.0, last)
        assert empty.body == b"data: [DONE]\n\n"
        two = await stream_response(producer(2), 10.0, lambda item: item.n == 2)
        assert isinstance(two, StreamingResponse)
        assert b"".join([b async for b in two.body_iterator]) == (b'data: {"n":1}\n\ndata: {"n":2}\n\ndata: [DONE]\n\n')

    asyncio.run(main())


def test_a_whole_stream_whose_producer_fails_to_close_sends_what_the_stream_would():
    """A failure in the producer's cleanup after its last item: the item, then the error in band (no [DONE]),
    as the stream would have sent them; the slot is still released."""
    calls: list[str] = []

    async def producer() -> AsyncGenerator[Item, None]:
        try:
            yield Item(n=1)
        finally:
            raise APIError(409, "session_busy", "busy")

    async def main() -> None:
        r = await stream_response(producer(), 10.0, lambda item: True, None, lambda: calls.append("closed"))
        first, second = r.body.split(b"\n\n", 1)
        assert first == b'data: {"n":1}' and b'"code": "session_busy"' in second and b"[DONE]" not in second
        assert calls == ["closed"]

    asyncio.run(main())


def test_client_leaving_mid_chunk_closes_the_producer_cleanly():
    """The server cancels the response while a chunk is being made: the producer's cleanup must run
    and the cancellation must surface as itself, not as "aclose(): generator already running"."""
    cleaned = asyncio.Event()

    async def producer() -> AsyncIterator[Item]:
        try:
            yield Item(n=1)
            await asyncio.sleep(30)  # a chunk that takes long
            yield Item(n=2)
        finally:
            cleaned.set()

    async def main() -> None:
        stream = with_keepalive(producer(), keepalive=10.0)
        assert await stream.__anext__() == b'data: {"n":1}\n\n'
        consumer = asyncio.ensure_future(stream.__anext__())
        await asyncio.sleep(0.02)  # the second chunk is now being made
        consumer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await consumer
        assert cleaned.is_set()

    asyncio.run(asyncio.wait_for(main(), 5))
