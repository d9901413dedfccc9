"""SSE parsing and streamed completions: chunks, comments, [DONE], in-band errors, no retry mid-stream."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

import vssm_client as vc
from tests.client.fakes import FakeServer, error, make_client, sse
from vssm_client._streaming import ServerSentEvent, SSEDecoder

EVENT = {"id": "cmpl-1", "choices": [{"index": 0, "text": "", "tokens": [1, 0], "finish_reason": None}]}


def decode(text: str) -> list[ServerSentEvent]:
    return list(SSEDecoder().iter_events(text.splitlines()))


def test_decoder_joins_multiline_data_and_skips_comments() -> None:
    events = decode(': keep-alive\n\ndata: {"a":\ndata: 1}\n\n:comment\nevent: msg\nid: 7\ndata:[DONE]\n\n')
    assert [e.data for e in events] == ['{"a":\n1}', "[DONE]"]
    assert events[0].json() == {"a": 1}
    assert (events[1].event, events[1].id) == ("msg", "7")


def test_decoder_drops_an_unterminated_event_and_comment_only_blocks() -> None:
    assert decode(": ping\n\n: ping\n\ndata: partial") == []


def test_decoder_handles_crlf_through_httpx() -> None:
    client, _ = make_client(lambda r: httpx.Response(200, content=b'data: {"choices": []}\r\n\r\ndata: [DONE]\r\n\r\n'))
    assert [c.choices for c in client.completions.stream(model="m")] == [[]]


def test_completion_stream_yields_chunks_until_done() -> None:
    server = FakeServer()
    client, _ = make_client(server)
    chunks = list(client.completions.stream(model="mnist-vssm", prompt=[0, 1], max_tokens=10, chunk_size=4, seed=3))
    assert [len(c.tokens) for c in chunks] == [4, 4, 2]
    assert [c.finish_reason for c in chunks] == [None, None, "length"]
    whole = client.completions.create(model="mnist-vssm", prompt=[0, 1], max_tokens=10, seed=3)
    assert [t for c in chunks for t in c.tokens] == whole.tokens
    body = server.bodies("/completions")[0]
    assert body["stream"] is True and body["chunk_size"] == 4
    assert server.requests[0].headers["accept"] == "text/event-stream"


def test_stream_stops_at_done_and_ignores_what_follows() -> None:
    body = sse(EVENT) + b"data: not json at all\n\n"
    client, _ = make_client(lambda r: httpx.Response(200, content=body))
    assert len(list(client.completions.stream(model="m"))) == 1


def test_in_band_error_raises_after_the_chunks_before_it() -> None:
    err = {"error": {"message": "redis went away", "type": "service_unavailable_error", "code": "store_unavailable"}}
    client, sleeps = make_client(lambda r: httpx.Response(200, content=sse(EVENT, err, done=False)))
    stream = client.completions.stream(model="m")
    assert next(stream).tokens == [1, 0]
    with pytest.raises(vc.ServiceUnavailableError, match="redis went away"):
        next(stream)
    assert sleeps == []


def test_stream_that_ends_without_done_raises_connection_error() -> None:
    client, _ = make_client(lambda r: httpx.Response(200, content=sse(EVENT, done=False)))
    with pytest.raises(vc.APIConnectionError, match=r"\[DONE\]"):
        list(client.completions.stream(model="m"))


def test_broken_stream_is_not_retried() -> None:
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)

        def body() -> Iterator[bytes]:
            yield sse(EVENT, done=False)
            raise httpx.ReadError("connection reset", request=request)

        return httpx.Response(200, content=body())

    client, sleeps = make_client(handler)
    got = []
    with pytest.raises(vc.APIConnectionError, match="connection reset"):
        for chunk in client.completions.stream(model="m"):
            got.append(chunk)
    assert len(got) == 1 and len(calls) == 1 and sleeps == []


def test_stream_is_retried_before_it_starts() -> None:
    answers = [error(429, "overloaded", headers={"Retry-After": "1"}), httpx.Response(200, content=sse(EVENT))]
    client, sleeps = make_client(lambda r: answers.pop(0))
    assert len(list(client.completions.stream(model="m"))) == 1 and sleeps == [1.0]


def test_status_error_surfaces_on_iteration_and_stream_closes() -> None:
    client, _ = make_client(lambda r: error(404, "model_not_found"))
    with pytest.raises(vc.NotFoundError), client.completions.stream(model="nope") as stream:
        next(iter(stream))


def test_closing_early_closes_the_response() -> None:
    client, _ = make_client(lambda r: httpx.Response(200, content=sse(EVENT, EVENT)))
    with client.completions.stream(model="m") as stream:
        next(stream)
    assert stream.response is not None and stream.response.is_closed
