"""Every endpoint and every error code, with its envelope, against an in-process app on real Redis."""

from __future__ import annotations

import asyncio
import codecs
import gc
import json
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from tests.server.conftest import reference
from tests.test_generation import as_format_1
from vssm import model
from vssm.model import GenState
from vssm.model.state import STATE_FORMAT
from vssm.server import Settings, create_app
from vssm.server.store import SessionRecord

KEY_A, KEY_B = "key-a", "key-b"


def make_client(checkpoints, redis_url, **settings) -> TestClient:
    app = create_app(Settings(checkpoints=checkpoints, redis_url=redis_url, **settings))
    return TestClient(app, raise_server_exceptions=False)


@pytest.fixture
def client(checkpoints, redis) -> Iterator[TestClient]:
    with make_client(checkpoints, redis.url, max_tokens=64, max_n=4, max_body_bytes=4096) as c:
        yield c


def assert_error(resp, status: int, code: str, param: str | None = None) -> dict:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "code", "param"}
    assert body["error"]["code"] == code and body["error"]["message"]
    if param is not None:
        assert body["error"]["param"] == param
    return body["error"]


def sse(resp) -> list:
    events = []
    for block in resp.text.split("\n\n"):
        lines = [line[6:] for line in block.splitlines() if line.startswith("data: ")]
        if lines:
            data = "\n".join(lines)
            events.append(data if data == "[DONE]" else json.loads(data))
    return events


# ----- operations ----------------------------------------------------------------------------------
def test_health_ready_metrics(client):
    assert client.get("/health").json() == {"status": "ok"}
    ready = client.get("/ready").json()
    assert ready["status"] == "ready" and ready["store"] == "redis" and "mnist-vssm" in ready["models"]
    client.post("/v1/completions", json={"model": "mnist-vssm", "max_tokens": 4})
    text = client.get("/metrics").text
    for name in (
        "vssm_requests_total",
        "vssm_request_seconds",
        "vssm_tokens_generated_total",
        "vssm_batch_rows",
        "vssm_store_seconds",
        "vssm_queue_depth",
        "vssm_in_flight",
    ):
        assert name in text
    assert 'route="/v1/completions"' in text


def test_request_id_is_echoed_or_made(client):
    assert client.get("/health", headers={"X-Request-ID": "abc"}).headers["x-request-id"] == "abc"
    assert len(client.get("/health").headers["x-request-id"]) == 32
    # a request id that is not printable ASCII is replaced, not echoed (and never a 500)
    r = client.get("/health", headers=[("X-Request-ID", "caf\xe9".encode("latin-1"))])
    assert r.status_code == 200 and len(r.headers["x-request-id"]) == 32


# ----- models --------------------------------------------------------------------------------------
def test_models_list_and_get(client):
    data = client.get("/v1/models").json()
    assert data["object"] == "list"
    cards = {m["id"]: m for m in data["data"]}
    assert set(cards) == {"mnist-vssm", "text-vssm", "mnist-ar-ssm", "mnist-ar-transformer", "mnist-ar-gru"}
    v = cards["mnist-vssm"]
    assert v["object"] == "model" and v["family"] == "vssm" and v["vocab_size"] == 2 and v["max_position"] == 64
    assert v["text"] is False and cards["text-vssm"]["text"] is True and v["state_bytes"] > 0
    assert client.get("/v1/models/text-vssm").json()["max_position"] is None
    assert_error(client.get("/v1/models/nope"), 404, "model_not_found")


# ----- completions ------------------------------------------------------------------------------------
def test_completion_tokens_match_the_model_api(client, checkpoints):
    r = client.post(
        "/v1/completions", json={"model": "mnist-vssm", "prompt": [0, 1, 1], "max_tokens": 10, "seed": 5, "n": 2}
    )
    body = r.json()
    assert r.status_code == 200 and body["object"] == "text_completion" and body["seed"] == 5
    assert body["usage"] == {"prompt_tokens": 3, "completion_tokens": 20, "total_tokens": 23}
    for i, choice in enumerate(body["choices"]):
        assert choice["index"] == i and choice["finish_reason"] == "length" and choice["text"] == ""
        assert choice["tokens"] == reference(checkpoints, "mnist-vssm", [0, 1, 1], 5 + i, [10])[0]


def test_text_model_speaks_text(client, checkpoints):
    r = client.post("/v1/completions", json={"model": "text-vssm", "prompt": "ROMEO:", "max_tokens": 12, "seed": 1})
    choice = r.json()["choices"][0]
    assert choice["tokens"] == reference(checkpoints, "text-vssm", list(b"ROMEO:"), 1, [12])[0]
    assert choice["text"] == bytes(choice["tokens"]).decode("utf-8", errors="replace")
    tokens = client.post(
        "/v1/completions", json={"model": "text-vssm", "prompt": list(b"ROMEO:"), "max_tokens": 12, "seed": 1}
    ).json()["choices"][0]["tokens"]
    assert tokens == choice["tokens"]  # token lists work for text models too


def test_text_chunks_never_split_a_character(client):
    """Chunk texts join into the text of all their tokens: a multi-byte UTF-8 character cut by a chunk
    boundary is held back until the next chunk completes it, in streams and across session calls."""
    body = {"model": "text-vssm", "prompt": "", "max_tokens": 48, "seed": 4}
    whole = client.post("/v1/completions", json=body).json()["choices"][0]
    expected = bytes(whole["tokens"]).decode("utf-8", errors="replace")
    assert any(ord(c) > 127 and c != "\ufffd" for c in expected)  # the seed makes a multi-byte character
    assert whole["text"] == expected
    with client.stream("POST", "/v1/completions", json={**body, "stream": True, "chunk_size": 1}) as r:
        r.read()
    texts = [e["choices"][0]["text"] for e in sse(r) if isinstance(e, dict)]
    assert len(texts) == 48 and "".join(texts) == expected
    # a session with the same seed makes the same tokens, in chunks of 1 to 3 over 27 calls
    s = client.post("/v1/sessions", json={"model": "text-vssm", "seed": 4}).json()
    chunks = [
        client.post(f"/v1/sessions/{s['id']}/generate", json={"max_tokens": n}).json()
        for n in [1, 2, 1, 3] * 6 + [1, 2, 3]
    ]
    assert [t for c in chunks for t in c["tokens"]] == whole["tokens"]
    # the session is not over, so an incomplete last character stays held back
    held = codecs.getincrementaldecoder("utf-8")(errors="replace").decode(bytes(whole["tokens"]), final=False)
    assert "".join(c["text"] for c in chunks) == held


def test_completion_stream(client, checkpoints):
    with client.stream(
        "POST",
        "/v1/completions",
        json={"model": "mnist-ar-ssm", "max_tokens": 10, "seed": 3, "stream": True, "chunk_size": 4},
    ) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        r.read()
    events = sse(r)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert [len(c["choices"][0]["tokens"]) for c in chunks] == [4, 4, 2]
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None, None, "length"]
    assert chunks[-1]["usage"]["completion_tokens"] == 10 and chunks[0]["usage"] is None
    tokens = [t for c in chunks for t in c["choices"][0]["tokens"]]
    assert tokens == reference(checkpoints, "mnist-ar-ssm", [], 3, [10])[0]


def test_unknown_openai_fields_are_ignored(client):
    r = client.post(
        "/v1/completions",
        json={
            "model": "mnist-gru" if False else "mnist-ar-gru",
            "max_tokens": 2,
            "top_p": 0.9,
            "user": "x",
            "logprobs": None,
        },
    )
    assert r.status_code == 200


@pytest.mark.parametrize(
    ("body", "code", "param"),
    [
        ({"model": "mnist-vssm", "temperature": -1}, "invalid_field", "temperature"),
        ({"model": "mnist-vssm", "max_tokens": 0}, "invalid_field", "max_tokens"),
        ({"model": "mnist-vssm", "seed": -3}, "invalid_field", "seed"),
        ({"model": "mnist-vssm", "prompt": [0, -1]}, "invalid_field", "prompt"),
        ({"max_tokens": 3}, "invalid_field", "model"),
        ({"model": "mnist-vssm", "max_tokens": 65}, "max_tokens_exceeded", "max_tokens"),
        ({"model": "mnist-vssm", "prompt": [0] * 60, "max_tokens": 5}, "max_position_exceeded", "max_tokens"),
        ({"model": "mnist-vssm", "prompt": "hello"}, "text_not_supported", "prompt"),
        ({"model": "mnist-vssm", "prompt": [0, 2]}, "invalid_token", "prompt"),
        ({"model": "mnist-vssm", "n": 5}, "n_exceeded", "n"),
    ],
)
def test_completion_bad_requests(client, body, code, param):
    assert_error(client.post("/v1/completions", json=body), 400, code, param)


def test_malformed_json_and_unknown_routes(client):
    assert_error(
        client.post("/v1/completions", content=b"{oops", headers={"content-type": "application/json"}),
        400,
        "invalid_field",
    )
    assert_error(client.get("/v1/nothing"), 404, "not_found")
    assert_error(client.delete("/v1/models"), 405, "method_not_allowed")


def test_unknown_model(client):
    assert_error(client.post("/v1/completions", json={"model": "gpt-9"}), 404, "model_not_found")
    assert_error(client.post("/v1/sessions", json={"model": "gpt-9"}), 404, "model_not_found")


def test_body_too_large(client):
    err = assert_error(
        client.post("/v1/completions", json={"model": "mnist-vssm", "prompt": [0] * 5000}), 413, "body_too_large"
    )
    assert "4096" in err["message"]


def test_chunked_body_limit(client):
    """A body sent without Content-Length (chunked) is held to the same limit, and one within it works."""
    big = json.dumps({"model": "mnist-vssm", "prompt": [0] * 5000}).encode()
    json_type = {"content-type": "application/json"}
    r = client.post("/v1/completions", content=iter([big[:2000], big[2000:]]), headers=json_type)
    assert "content-length" not in r.request.headers
    assert_error(r, 413, "body_too_large")
    small = json.dumps({"model": "mnist-vssm", "prompt": [0, 1], "max_tokens": 3}).encode()
    r = client.post("/v1/completions", content=iter([small[:10], small[10:]]), headers=json_type)
    assert r.status_code == 200 and len(r.json()["choices"][0]["tokens"]) == 3


def test_admission_limit(client):
    ctx = client.app.state.ctx
    ctx.in_flight = ctx.settings.max_in_flight  # every slot taken
    try:
        r = client.post("/v1/completions", json={"model": "mnist-vssm", "max_tokens": 2})
        assert_error(r, 429, "overloaded")
        assert int(r.headers["retry-after"]) >= 1
    finally:
        ctx.in_flight = 0
    assert client.post("/v1/completions", json={"model": "mnist-vssm", "max_tokens": 2}).status_code == 200


# ----- sessions ------------------------------------------------------------------------------------------
def create(client, **body) -> dict:
    r = client.post("/v1/sessions", json={"model": "mnist-vssm", **body})
    assert r.status_code == 201, r.text
    return r.json()


def test_idempotency_key_makes_create_and_fork_happen_once(client):
    ctx = client.app.state.ctx
    key = {"Idempotency-Key": "create-7f3a"}
    body = {"model": "mnist-vssm", "prompt": [1, 0], "max_tokens": 4}  # no seed: the server picks one
    first = client.post("/v1/sessions", json=body, headers=key)
    again = client.post("/v1/sessions", json=body, headers=key)  # a retry after a lost response
    assert first.status_code == again.status_code == 201
    assert again.json()["id"] == first.json()["id"] and again.json()["chunk"] == first.json()["chunk"]
    assert client.post("/v1/sessions", json=body).json()["id"] != first.json()["id"]  # no key: a new one
    assert_error(
        client.post("/v1/sessions", json={**body, "max_tokens": 5}, headers=key), 409, "idempotency_key_reused"
    )
    sid = first.json()["id"]
    forks = [client.post(f"/v1/sessions/{sid}/fork", headers={"Idempotency-Key": "fork-1"}).json() for _ in range(2)]
    assert forks[0]["id"] == forks[1]["id"] != sid and forks[0]["position"] == 6
    # the same key on another session's fork is another request
    other = client.post(f"/v1/sessions/{forks[0]['id']}/fork", headers={"Idempotency-Key": "fork-1"}).json()
    assert other["id"] not in (sid, forks[0]["id"])
    assert client.portal.call(ctx.store.get, other["id"]) is not None
    assert_error(client.post("/v1/sessions", json=body, headers={"Idempotency-Key": "k" * 201}), 400, "invalid_field")


def test_concurrent_creates_with_one_key_keep_one_session(client):
    """Both requests make a session; the second to claim the key deletes its own and answers with the first."""
    ctx = client.app.state.ctx
    made: list[str] = []
    real_create = ctx.store.create

    async def create_and_race(rec):
        made.append(rec.id)
        out = await real_create(rec)
        if len(made) == 1:  # the racing request claims the key while this one is still making its session
            ctx.store.create = real_create
            r = await asyncio.to_thread(
                client.post, "/v1/sessions", json={"model": "mnist-vssm"}, headers={"Idempotency-Key": "race"}
            )
            made.append(r.json()["id"])
        return out

    ctx.store.create = create_and_race
    try:
        r = client.post("/v1/sessions", json={"model": "mnist-vssm"}, headers={"Idempotency-Key": "race"})
    finally:
        ctx.store.create = real_create
    assert r.json()["id"] == made[-1] != made[0]
    assert client.portal.call(ctx.store.get, made[0]) is None  # the loser's session was deleted


def test_session_lifecycle_matches_the_model_api(client, checkpoints):
    s = create(client, prompt=[1, 0, 1], seed=9, max_tokens=5, ttl_seconds=120)
    assert s["id"].startswith("sess_") and len(s["id"]) == 5 + 32 and s["object"] == "session"
    assert s["position"] == 8 and s["seed"] == 9 and s["ttl_seconds"] == 120 and s["state_bytes"] > 0
    assert s["chunk"]["start_position"] == 3 and s["chunk"]["position"] == 8
    ref = reference(checkpoints, "mnist-vssm", [1, 0, 1], 9, [5, 6, 4])
    assert s["chunk"]["tokens"] == ref[0]
    c = client.post(f"/v1/sessions/{s['id']}/generate", json={"max_tokens": 6, "expected_position": 8}).json()
    assert c["object"] == "session.chunk" and c["tokens"] == ref[1] and c["start_position"] == 8
    assert c["position"] == 14 and c["replayed"] is False
    got = client.get(f"/v1/sessions/{s['id']}").json()
    assert got["position"] == 14 and got["expires_at"] > got["created_at"]
    c = client.post(f"/v1/sessions/{s['id']}/generate", json={"max_tokens": 4}).json()
    assert c["tokens"] == ref[2]
    d = client.delete(f"/v1/sessions/{s['id']}")
    assert d.json() == {"id": s["id"], "object": "session.deleted", "deleted": True}
    assert_error(client.get(f"/v1/sessions/{s['id']}"), 404, "session_not_found")
    assert_error(client.delete(f"/v1/sessions/{s['id']}"), 404, "session_not_found")
    assert_error(client.post(f"/v1/sessions/{s['id']}/generate", json={"max_tokens": 1}), 404, "session_not_found")


def test_append_then_generate_equals_one_prompt(client):
    a = create(client, prompt=[1, 1, 0, 1], seed=4)
    b = create(client, prompt=[1, 1], seed=4)
    r = client.post(f"/v1/sessions/{b['id']}/append", json={"prompt": [0, 1], "expected_position": 2})
    assert r.status_code == 200 and r.json()["position"] == 4
    retry = client.post(f"/v1/sessions/{b['id']}/append", json={"prompt": [0, 1], "expected_position": 2})
    assert retry.status_code == 200 and retry.json()["position"] == 4  # recognised as already done
    ga = client.post(f"/v1/sessions/{a['id']}/generate", json={"max_tokens": 7}).json()["tokens"]
    gb = client.post(f"/v1/sessions/{b['id']}/generate", json={"max_tokens": 7}).json()["tokens"]
    assert ga == gb
    assert_error(
        client.post(f"/v1/sessions/{b['id']}/append", json={"prompt": [1], "expected_position": 2}),
        409,
        "position_mismatch",
    )


def test_fork_copies_the_state(client):
    s = create(client, prompt=[0, 1], seed=2, max_tokens=3)
    f = client.post(f"/v1/sessions/{s['id']}/fork", json={})
    assert f.status_code == 201
    fork = f.json()
    assert fork["id"] != s["id"] and fork["position"] == s["position"] and fork["seed"] == 2
    a = client.post(f"/v1/sessions/{s['id']}/generate", json={"max_tokens": 5}).json()["tokens"]
    b = client.post(f"/v1/sessions/{fork['id']}/generate", json={"max_tokens": 5}).json()["tokens"]
    assert a == b
    assert client.post(f"/v1/sessions/{fork['id']}/fork").status_code == 201  # no body at all is fine
    assert_error(client.post(f"/v1/sessions/{s['id']}/fork", json={"ttl_seconds": 10**9}), 400, "ttl_exceeded")


def test_retry_after_a_lost_response_is_replayed_not_regenerated(client):
    s = create(client, seed=11)
    body = {"max_tokens": 6, "expected_position": 0}
    first = client.post(f"/v1/sessions/{s['id']}/generate", json=body).json()
    again = client.post(f"/v1/sessions/{s['id']}/generate", json=body).json()  # as if the response was lost
    assert again["replayed"] is True and again["tokens"] == first["tokens"] and again["position"] == 6
    assert client.get(f"/v1/sessions/{s['id']}").json()["position"] == 6  # advanced once
    assert_error(
        client.post(f"/v1/sessions/{s['id']}/generate", json={"max_tokens": 5, "expected_position": 0}),
        409,
        "position_mismatch",
    )


def test_session_stream_commits_each_chunk(client, checkpoints):
    s = create(client, prompt=[1], seed=6)
    with client.stream(
        "POST",
        f"/v1/sessions/{s['id']}/generate",
        json={"max_tokens": 9, "stream": True, "chunk_size": 4, "expected_position": 1},
    ) as r:
        r.read()
    events = sse(r)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert [(c["start_position"], c["position"]) for c in chunks] == [(1, 5), (5, 9), (9, 10)]
    assert [c["finish_reason"] for c in chunks] == [None, None, "length"]
    ref = reference(checkpoints, "mnist-vssm", [1], 6, [9])[0]
    assert [t for c in chunks for t in c["tokens"]] == ref
    assert client.get(f"/v1/sessions/{s['id']}").json()["position"] == 10


def test_a_one_chunk_stream_is_one_body_sent_after_its_commit(client, checkpoints):
    """A stream whose first chunk is its last comes whole (a length, not chunked), its bytes those of the
    stream; the chunk is committed and the admission slot given back before it; a longer one streams."""
    s = create(client, prompt=[1], seed=6)
    r = client.post(f"/v1/sessions/{s['id']}/generate", json={"max_tokens": 5, "stream": True, "expected_position": 1})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    assert int(r.headers["content-length"]) == len(r.content) and "transfer-encoding" not in r.headers
    assert r.headers["cache-control"] == "no-cache" and r.headers["x-accel-buffering"] == "no"
    events = sse(r)
    assert len(events) == 2 and events[-1] == "[DONE]" and events[0]["finish_reason"] == "length"
    assert events[0]["tokens"] == reference(checkpoints, "mnist-vssm", [1], 6, [5])[0]
    assert client.get(f"/v1/sessions/{s['id']}").json()["position"] == 6
    assert client.app.state.ctx.in_flight == 0
    # a completion of n choices that all end in their first chunk: one body, usage in it
    body = {"model": "mnist-ar-ssm", "max_tokens": 3, "n": 2, "seed": 3, "stream": True}
    whole = client.post("/v1/completions", json=body)
    assert "content-length" in whole.headers
    events = sse(whole)
    assert len(events) == 2 and events[0]["usage"]["completion_tokens"] == 6
    # more than one chunk: streamed, as before
    streamed = client.post("/v1/completions", json={**body, "chunk_size": 2})
    assert "content-length" not in streamed.headers and len(sse(streamed)) == 3
    assert client.app.state.ctx.in_flight == 0


def test_session_limits(client):
    s = create(client, prompt=[0] * 60)
    assert_error(
        client.post(f"/v1/sessions/{s['id']}/generate", json={"max_tokens": 5}),
        400,
        "max_position_exceeded",
        "max_tokens",
    )
    assert_error(
        client.post(f"/v1/sessions/{s['id']}/append", json={"prompt": [0] * 5}), 400, "max_position_exceeded", "prompt"
    )
    assert_error(
        client.post("/v1/sessions", json={"model": "mnist-vssm", "prompt": [0] * 65}),
        400,
        "max_position_exceeded",
        "prompt",
    )
    assert_error(
        client.post(f"/v1/sessions/{s['id']}/generate", json={"max_tokens": 1, "colour": 1}),
        400,
        "invalid_field",
        "colour",
    )
    assert_error(
        client.post("/v1/sessions", json={"model": "mnist-vssm", "ttl_seconds": 10**6}),
        400,
        "ttl_exceeded",
        "ttl_seconds",
    )


def test_state_of_other_weights_is_refused(client):
    s = create(client, seed=1)
    ctx = client.app.state.ctx
    rec = client.portal.call(ctx.store.get, s["id"])
    forged = SessionRecord(**{**rec.__dict__, "fingerprint": "0000000000000000"})
    assert client.portal.call(ctx.store.compare_and_set, forged, rec.version) is not None
    assert_error(client.post(f"/v1/sessions/{s['id']}/generate", json={"max_tokens": 2}), 409, "state_incompatible")
    # a record naming the right fingerprint but holding another model's bytes is refused as well
    other = create(client, model="mnist-ar-gru")
    rec2 = client.portal.call(ctx.store.get, other["id"])
    rec = client.portal.call(ctx.store.get, s["id"])
    swapped = SessionRecord(
        **{
            **rec.__dict__,
            "fingerprint": client.get("/v1/models/mnist-vssm").json()["fingerprint"],
            "state": rec2.state,
        }
    )
    assert client.portal.call(ctx.store.compare_and_set, swapped, rec.version) is not None
    assert_error(client.post(f"/v1/sessions/{s['id']}/generate", json={"max_tokens": 2}), 409, "state_incompatible")
    # streamed, the failure comes before the first byte: a 409 with the envelope, not a 200 and an event
    streamed = client.post(f"/v1/sessions/{s['id']}/generate", json={"max_tokens": 4, "stream": True})
    assert_error(streamed, 409, "state_incompatible")
    assert ctx.in_flight == 0  # the stream's admission slot was given back


@pytest.mark.parametrize("name", ["mnist-vssm", "mnist-ar-ssm"])
def test_a_session_stored_by_an_earlier_release_goes_on(client, checkpoints, name):
    """An SSM session stored in state format 1 (docs/api.md) is converted on its next call and goes on as its
    copy stored in this release's format does; the state written back is this release's."""
    s = create(client, model=name, seed=3, prompt=[0, 1, 1])
    assert client.post(f"/v1/sessions/{s['id']}/generate", json={"max_tokens": 5}).status_code == 200
    copy = client.post(f"/v1/sessions/{s['id']}/fork").json()
    ctx = client.app.state.ctx
    rec = client.portal.call(ctx.store.get, s["id"])
    m = model.load_checkpoint(checkpoints / f"{name}.safetensors")
    old = SessionRecord(**{**rec.__dict__, "state": as_format_1(m, GenState.from_bytes(rec.state))})
    assert client.portal.call(ctx.store.compare_and_set, old, rec.version) is not None
    a = client.post(f"/v1/sessions/{s['id']}/generate", json={"max_tokens": 12})
    b = client.post(f"/v1/sessions/{copy['id']}/generate", json={"max_tokens": 12})
    assert a.status_code == b.status_code == 200, a.text
    assert a.json()["tokens"] == b.json()["tokens"]
    after = GenState.from_bytes(client.portal.call(ctx.store.get, s["id"]).state)
    assert after.format == STATE_FORMAT and after.position.tolist() == [20]

    def upgraded() -> list[str]:
        lines = client.get("/metrics").text.splitlines()
        return [line for line in lines if line.startswith("vssm_sessions_total") and 'event="upgraded"' in line]

    assert upgraded() == ['vssm_sessions_total{event="upgraded"} 1.0']  # the copy was this release's already
    streamed = client.post(f"/v1/sessions/{s['id']}/generate", json={"max_tokens": 8, "stream": True, "chunk_size": 3})
    assert streamed.status_code == 200 and upgraded() == ['vssm_sessions_total{event="upgraded"} 1.0']  # once


# ----- auth ------------------------------------------------------------------------------------------------
def test_api_keys_and_session_ownership(checkpoints, redis):
    with make_client(checkpoints, redis.url, api_keys=[KEY_A, KEY_B]) as c:
        assert_error(c.get("/v1/models"), 401, "invalid_api_key")
        assert_error(c.get("/v1/models", headers={"Authorization": "Bearer wrong"}), 401, "invalid_api_key")
        assert_error(c.get("/v1/models", headers={"Authorization": f"Basic {KEY_A}"}), 401, "invalid_api_key")
        latin = [("Authorization", "Bearer caf\xe9".encode("latin-1"))]  # not ASCII: still a 401, not a 500
        assert_error(c.get("/v1/models", headers=latin), 401, "invalid_api_key")
        assert c.get("/health").status_code == 200 and c.get("/ready").status_code == 200
        a = {"Authorization": f"Bearer {KEY_A}"}
        b = {"Authorization": f"Bearer {KEY_B}"}
        s = c.post("/v1/sessions", json={"model": "mnist-vssm"}, headers=a).json()
        assert c.get(f"/v1/sessions/{s['id']}", headers=a).status_code == 200
        for call in (
            lambda h: c.get(f"/v1/sessions/{s['id']}", headers=h),
            lambda h: c.post(f"/v1/sessions/{s['id']}/generate", json={"max_tokens": 1}, headers=h),
            lambda h: c.post(f"/v1/sessions/{s['id']}/append", json={"prompt": [1]}, headers=h),
            lambda h: c.post(f"/v1/sessions/{s['id']}/fork", headers=h),
            lambda h: c.delete(f"/v1/sessions/{s['id']}", headers=h),
        ):
            assert_error(call(b), 404, "session_not_found")
        assert c.get(f"/v1/sessions/{s['id']}", headers=a).json()["position"] == 0  # B changed nothing


def test_embedded_store_without_redis(checkpoints, tmp_path):
    with make_client(checkpoints, None) as c:
        assert c.get("/ready").json()["store"] == "memory"
        s = c.post("/v1/sessions", json={"model": "mnist-ar-transformer", "prompt": [1, 0]}).json()
        c.post(f"/v1/sessions/{s['id']}/generate", json={"max_tokens": 3})
        assert c.get(f"/v1/sessions/{s['id']}").json()["position"] == 5


def test_streams_give_their_admission_slot_back(client):
    ctx = client.app.state.ctx
    s = create(client, seed=1)
    for path, body in (
        ("/v1/completions", {"model": "mnist-vssm", "max_tokens": 6, "stream": True}),
        (f"/v1/sessions/{s['id']}/generate", {"max_tokens": 6, "stream": True, "chunk_size": 2}),
    ):
        with client.stream("POST", path, json=body) as r:
            r.read()
        assert ctx.in_flight == 0
        with client.stream("POST", path, json=body) as r:  # the client leaves before reading anything
            pass
        wait = 0
        while ctx.in_flight and wait < 100:
            client.get("/health")
            wait += 1
        assert ctx.in_flight == 0


def test_the_objects_alive_at_startup_are_frozen_until_shutdown(checkpoints, redis):
    """Full collections skip what lives as long as the process (torch, the models, the app), and
    shutdown hands it back to the collector, so apps started and stopped in one process leak nothing."""
    gc.unfreeze()
    with make_client(checkpoints, redis.url) as c:
        assert c.get("/ready").status_code == 200
        assert gc.get_freeze_count() > 10_000
    assert gc.get_freeze_count() == 0
