"""An in-memory stand-in for the server (docs/api.md) behind ``httpx.MockTransport``, with fault injection."""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from vssm_client import AsyncClient, Client

BASE = "http://vssm.test"
TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    409: "conflict_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    500: "internal_error",
    503: "service_unavailable_error",
}
CURVE = [  # as the server reports a measured block curve (docs/api.md, "Models")
    {
        "block_size": 28,
        "bound": "iw",
        "nats_per_sequence": 80.5,
        "bits_per_token": 0.148,
        "length": 784,
        "ms_per_sequence_batch_1": 40.0,
        "ms_per_sequence_batch_32": 6.5,
    },
    {
        "block_size": 784,
        "bound": "iw",
        "nats_per_sequence": 88.3,
        "bits_per_token": 0.162,
        "length": 784,
        "ms_per_sequence_batch_1": 9.0,
        "ms_per_sequence_batch_32": 0.8,
    },
]
MODELS = {
    "mnist-vssm": {"vocab_size": 2, "max_position": 784, "text": False, "default_block_size": 28, "block_curve": CURVE},
    "shakespeare-vssm": {
        "vocab_size": 256,
        "max_position": None,
        "text": True,
        "default_block_size": None,
        "block_curve": [],
    },
}


def error(status: int, code: str, message: str = "nope", *, headers: dict[str, str] | None = None) -> httpx.Response:
    body = {"error": {"message": message, "type": TYPES.get(status, "internal_error"), "code": code, "param": None}}
    return httpx.Response(status, json=body, headers={"X-Request-ID": "req_123", **(headers or {})})


def sse(*events: Any, done: bool = True, comments: bool = True) -> bytes:
    """An SSE body: each event a dict (JSON) or a raw string; keep-alive comments between them."""
    parts = [": keep-alive\n\n"] if comments else []
    for ev in events:
        parts.append(f"data: {ev if isinstance(ev, str) else json.dumps(ev)}\n\n")
        if comments:
            parts.append(": keep-alive\n\n")
    if done:
        parts.append("data: [DONE]\n\n")
    return "".join(parts).encode()


def sampled(seed: int, start: int, n: int) -> list[int]:
    """The fake model's tokens: a pure function of seed and position, like a seeded sampler."""
    return [(seed * 31 + p * 7) % 2 for p in range(start, start + n)]


@dataclass
class FakeSession:
    id: str
    model: str
    position: int
    seed: int
    ttl_seconds: int = 3600
    block_size: int | None = None
    last_chunk: dict[str, Any] | None = None  # start, max_tokens, block_size, tokens: replayed for a lost response

    def body(self, chunk: dict[str, Any] | None = None) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "session",
            "model": self.model,
            "position": self.position,
            "seed": self.seed,
            "block_size": self.block_size,
            "created_at": 1763830000.5,
            "expires_at": 1763830000.5 + self.ttl_seconds,
            "ttl_seconds": self.ttl_seconds,
            "state_bytes": 117412,
            "fingerprint": "3f2a",
            "chunk": chunk,
            "future_field": "ignored by old clients",
        }


@dataclass
class FakeServer:
    """Implements the contract's happy paths and replay; ``faults`` injects failures per request.

    A fault is called with the request before it is handled and may return a response (sent instead)
    or raise; ``lose_response`` handles the request and then raises, as when a response is lost;
    ``commit_unknown`` handles it and then answers 503 ``store_unavailable``.
    """

    sessions: dict[str, FakeSession] = field(default_factory=dict)
    requests: list[httpx.Request] = field(default_factory=list)
    faults: list[Callable[[httpx.Request], httpx.Response | None]] = field(default_factory=list)
    lose_response: int = 0  # number of upcoming responses to lose after handling
    commit_unknown: int = 0  # upcoming responses to replace by a 503 store_unavailable after handling
    _ids: itertools.count = field(default_factory=lambda: itertools.count(1))

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.faults:
            replaced = self.faults.pop(0)(request)
            if replaced is not None:
                return replaced
        response = self.handle(request)
        if self.lose_response:
            self.lose_response -= 1
            raise httpx.ReadTimeout("response lost", request=request)
        if self.commit_unknown:  # the store wrote the step, its reply to the server timed out
            self.commit_unknown -= 1
            return error(503, "store_unavailable", "session store timed out")
        response.headers.setdefault("X-Request-ID", "req_fake")
        return response

    def bodies(self, path_suffix: str = "") -> list[dict[str, Any]]:
        return [json.loads(r.content) for r in self.requests if r.url.path.endswith(path_suffix) and r.content]

    # ----- routing --------------------------------------------------------------------------------------
    def handle(self, request: httpx.Request) -> httpx.Response:
        path, method = request.url.path, request.method
        body = json.loads(request.content) if request.content else {}
        if path == "/v1/models":
            return httpx.Response(200, json={"object": "list", "data": [self.model(m) for m in MODELS]})
        if m := re.fullmatch(r"/v1/models/(.+)", path):
            return httpx.Response(200, json=self.model(m[1])) if m[1] in MODELS else error(404, "model_not_found")
        if path == "/v1/completions":
            return self.completion(body)
        if path == "/v1/sessions" and method == "POST":
            return self.create(body)
        m = re.fullmatch(r"/v1/sessions/([^/]+)(?:/(generate|append|fork))?", path)
        if not m:
            return error(404, "not_found")
        sess = self.sessions.get(m[1])
        if sess is None:
            return error(404, "session_not_found")
        action = m[2] or method
        return getattr(self, f"session_{action.lower()}")(sess, body)

    def model(self, name: str) -> dict[str, Any]:
        return {
            "id": name,
            "object": "model",
            "created": 1763830000,
            "owned_by": "vssm-serve",
            "family": "vssm",
            "state_bytes": 117412,
            "fingerprint": "3f2a",
            "parameters": 126274,
            **MODELS[name],
        }

    def completion(self, body: dict[str, Any]) -> httpx.Response:
        if body["model"] not in MODELS:
            return error(404, "model_not_found")
        seed, n_tok, prompt = body.get("seed", 0), body.get("max_tokens", 16), body.get("prompt", [])
        text = MODELS[body["model"]]["text"]
        start = len(prompt)

        def completion(a: int, b: int, last: bool) -> dict[str, Any]:
            choices = []
            for i in range(body.get("n", 1)):
                toks = sampled(seed + i, start + a, b - a)
                text_out = "".join("ab"[t] for t in toks) if text else ""
                reason = "length" if last else None
                choices.append(
                    {"index": i, "text": text_out, "tokens": toks, "finish_reason": reason, "logprobs": None}
                )
            return {
                "id": "cmpl-1",
                "object": "text_completion",
                "created": 1,
                "model": body["model"],
                "choices": choices,
                "seed": seed,
                "block_size": body.get("block_size", MODELS[body["model"]]["default_block_size"]),
                "usage": {"prompt_tokens": start, "completion_tokens": b - a, "total_tokens": start + b - a},
            }

        if not body.get("stream"):
            return httpx.Response(200, json=completion(0, n_tok, True))
        size = body.get("chunk_size") or 64
        events = [completion(a, min(a + size, n_tok), a + size >= n_tok) for a in range(0, n_tok, size)]
        return httpx.Response(200, content=sse(*events), headers={"Content-Type": "text/event-stream"})

    def create(self, body: dict[str, Any]) -> httpx.Response:
        if body["model"] not in MODELS:
            return error(404, "model_not_found")
        prompt = body.get("prompt", [])
        sess = FakeSession(f"sess_{next(self._ids):032x}", body["model"], len(prompt), body.get("seed", 0))
        sess.ttl_seconds = body.get("ttl_seconds", 3600)
        sess.block_size = body.get("block_size", MODELS[body["model"]]["default_block_size"])
        self.sessions[sess.id] = sess
        chunk = self.step(sess, body["max_tokens"], sess.block_size) if body.get("max_tokens") else None
        return httpx.Response(201, json=sess.body(chunk))

    def step(self, sess: FakeSession, max_tokens: int, block_size: int | None = None) -> dict[str, Any]:
        block_size = sess.block_size if block_size is None else block_size
        start = sess.position
        tokens = sampled(sess.seed, start, max_tokens)
        sess.position += max_tokens
        sess.last_chunk = {"start": start, "max_tokens": max_tokens, "block_size": block_size, "tokens": tokens}
        return self.chunk(sess, start, tokens, block_size)

    @staticmethod
    def chunk(
        sess: FakeSession, start: int, tokens: list[int], block_size: int | None, replayed: bool = False
    ) -> dict[str, Any]:
        return {
            "object": "session.chunk",
            "session_id": sess.id,
            "start_position": start,
            "position": start + len(tokens),
            "tokens": tokens,
            "text": "",
            "finish_reason": "length",
            "block_size": block_size,
            "replayed": replayed,
        }

    def session_generate(self, sess: FakeSession, body: dict[str, Any]) -> httpx.Response:
        expected, max_tokens = body.get("expected_position"), body["max_tokens"]
        block = body.get("block_size", sess.block_size)  # this call's, else the session's
        if expected is not None and expected != sess.position:
            last = sess.last_chunk
            same = last and (last["start"], last["max_tokens"], last["block_size"]) == (expected, max_tokens, block)
            if same and not body.get("stream"):
                return httpx.Response(200, json=self.chunk(sess, expected, last["tokens"], block, replayed=True))
            return error(409, "position_mismatch")
        if not body.get("stream"):
            return httpx.Response(200, json=self.step(sess, max_tokens, block))
        size = body.get("chunk_size") or 64
        events = [self.step(sess, min(size, max_tokens - a), block) for a in range(0, max_tokens, size)]
        return httpx.Response(200, content=sse(*events), headers={"Content-Type": "text/event-stream"})

    def session_append(self, sess: FakeSession, body: dict[str, Any]) -> httpx.Response:
        expected = body.get("expected_position")
        if expected is not None and expected != sess.position:
            return error(409, "position_mismatch")
        prompt = body["prompt"]
        sess.position += len(prompt.encode()) if isinstance(prompt, str) else len(prompt)
        sess.last_chunk = None
        return httpx.Response(200, json=sess.body())

    def session_fork(self, sess: FakeSession, body: dict[str, Any]) -> httpx.Response:
        new = FakeSession(
            f"sess_{next(self._ids):032x}", sess.model, sess.position, sess.seed, block_size=sess.block_size
        )
        self.sessions[new.id] = new
        return httpx.Response(201, json=new.body())

    def session_get(self, sess: FakeSession, body: dict[str, Any]) -> httpx.Response:
        return httpx.Response(200, json=sess.body())

    def session_delete(self, sess: FakeSession, body: dict[str, Any]) -> httpx.Response:
        del self.sessions[sess.id]
        return httpx.Response(200, json={"id": sess.id, "object": "session.deleted", "deleted": True})


class Sleeps(list):
    """Records the delays a client would have slept."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


class AsyncSleeps(list):
    async def __call__(self, seconds: float) -> None:
        self.append(seconds)


def make_client(handler: Callable[[httpx.Request], httpx.Response], **kwargs: Any) -> tuple[Client, Sleeps]:
    client = Client(base_url=BASE, transport=httpx.MockTransport(handler), **kwargs)
    client._sleep = sleeps = Sleeps()
    return client, sleeps


def make_async_client(
    handler: Callable[[httpx.Request], httpx.Response], **kwargs: Any
) -> tuple[AsyncClient, AsyncSleeps]:
    client = AsyncClient(base_url=BASE, transport=httpx.MockTransport(handler), **kwargs)
    client._sleep = sleeps = AsyncSleeps()
    return client, sleeps
