"""Block size at the API (docs/api.md, "Block size"): the field on completions, sessions and generate,
its precedence (call > session > model default), tokens that chunks never change, replays, batching
of mixed block sizes, and the model cards' default and measured curve read from the eval JSON."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient

from tests.server.conftest import CHECKPOINTS
from tests.server.test_api import assert_error, sse
from vssm import model
from vssm.server import Settings, create_app
from vssm.server.registry import read_block_curve
from vssm.server.store import SessionRecord

DEFAULT = 4  # the default block size of the "mnist-vssm" checkpoint below
ONE_PASS = 10**6  # past every max_position: one parallel pass


def curve_row(c: int, nats: float, batch_1: float, batch_32: float, bound: str = "iw") -> dict:
    """A ``block_curve`` row as ``vssm eval --block-sizes`` writes it (model/evaluate.py)."""
    return {
        "block_size": c,
        "sequences": 100,
        "nll": {"bound": bound, "samples": 8, "nats_per_sequence": nats, "bits_per_token": nats / 64 / 0.6931, "x": 1},
        "generation_seconds": {"length": 64, "batch_1": batch_1, "batch_32": batch_32},
        "samples": {"confident_share": 0.5},
    }


CURVE = [curve_row(64, 40.0, 0.002, 0.032), curve_row(1, 30.0, 0.064, 0.32), curve_row(8, 33.0, 0.01, 0.064)]


@pytest.fixture(scope="module")
def checkpoints_dir(tmp_path_factory) -> Path:
    """A VSSM with a default block size and a measured curve, one without either, an AR model."""
    d = tmp_path_factory.mktemp("block-checkpoints")
    family, dataset, cfg = CHECKPOINTS["mnist-vssm"]
    for i, name in enumerate(("mnist-vssm", "plain-vssm")):
        torch.manual_seed(i)
        m = model.build_model(family, cfg)
        m.default_block_size = DEFAULT if name == "mnist-vssm" else None
        model.save_checkpoint(m, d / f"{name}.safetensors", extra={"dataset": dataset})
        evaluation = {"fingerprint": m.fingerprint, "nll": {}}
        if name == "mnist-vssm":
            evaluation["block_curve"] = CURVE
        (d / f"{name}.json").write_text(json.dumps(evaluation))
    family, dataset, cfg = CHECKPOINTS["mnist-ar-gru"]
    torch.manual_seed(2)
    model.save_checkpoint(model.build_model(family, cfg), d / "mnist-ar-gru.safetensors", extra={"dataset": dataset})
    return d


@pytest.fixture(scope="module")
def models(checkpoints_dir) -> dict[str, model.SequenceModel]:
    return {p.stem: model.load_checkpoint(p) for p in checkpoints_dir.glob("*.safetensors")}


def app_client(checkpoints_dir: Path, redis_url: str | None = None, **settings) -> TestClient:
    app = create_app(Settings(checkpoints=checkpoints_dir, redis_url=redis_url, max_tokens=64, **settings))
    return TestClient(app, raise_server_exceptions=False)


@pytest.fixture(scope="module")
def client(checkpoints_dir) -> Iterator[TestClient]:
    with app_client(checkpoints_dir) as c:
        yield c


def reference(m: model.SequenceModel, prompt: list[int], seed: int, chunks: list[tuple[int, int | None]]) -> list:
    """The model API's own tokens, chunk by chunk: ``(n, block_size)`` per call (None: the default)."""
    state = m.start(torch.tensor([prompt], dtype=torch.long), seed)
    out = []
    for n, block in chunks:
        tokens, state = m.generate(state, n, block_size=block)
        out.append(tokens[0].tolist())
    return out


def create(client: TestClient, **body) -> dict:
    r = client.post("/v1/sessions", json={"model": "mnist-vssm", **body})
    assert r.status_code == 201, r.text
    return r.json()


def generate(client: TestClient, sid: str, **body) -> dict:
    r = client.post(f"/v1/sessions/{sid}/generate", json=body)
    assert r.status_code == 200, r.text
    return r.json()


# ----- model cards --------------------------------------------------------------------------------------
def test_model_cards_report_the_default_and_the_measured_curve(client):
    cards = {m["id"]: m for m in client.get("/v1/models").json()["data"]}
    card = client.get("/v1/models/mnist-vssm").json()
    assert card == cards["mnist-vssm"] and card["default_block_size"] == DEFAULT
    assert card["block_curve"] == [  # compact, sorted by block size; ms per sequence at batch 1 and 32
        {
            "block_size": 1,
            "bound": "iw",
            "nats_per_sequence": 30.0,
            "bits_per_token": CURVE[1]["nll"]["bits_per_token"],
            "length": 64,
            "ms_per_sequence_batch_1": 64.0,
            "ms_per_sequence_batch_32": 10.0,
        },
        {
            "block_size": 8,
            "bound": "iw",
            "nats_per_sequence": 33.0,
            "bits_per_token": CURVE[2]["nll"]["bits_per_token"],
            "length": 64,
            "ms_per_sequence_batch_1": 10.0,
            "ms_per_sequence_batch_32": 2.0,
        },
        {
            "block_size": 64,
            "bound": "iw",
            "nats_per_sequence": 40.0,
            "bits_per_token": CURVE[0]["nll"]["bits_per_token"],
            "length": 64,
            "ms_per_sequence_batch_1": 2.0,
            "ms_per_sequence_batch_32": 1.0,
        },
    ]
    for name in ("plain-vssm", "mnist-ar-gru"):  # an eval JSON without a curve, and none at all
        assert cards[name]["default_block_size"] is None and cards[name]["block_curve"] == []


def test_a_curve_is_read_only_when_it_fits_the_weights(tmp_path, caplog):
    path = tmp_path / "m.json"
    assert read_block_curve(path, "fp") == []  # no eval JSON
    path.write_text("{not json")
    assert read_block_curve(path, "fp") == []
    path.write_text(json.dumps({"fingerprint": "other", "block_curve": CURVE}))
    assert read_block_curve(path, "fp") == []  # measured on other weights: it would mislead
    assert "other" in caplog.text
    broken = {"block_size": 2, "nll": {"bound": "iw"}}  # no figures: skipped, the rest kept
    exact = curve_row(1, 50.0, 0.1, 0.5, bound="exact")  # an autoregressive family's one row
    path.write_text(json.dumps({"fingerprint": "fp", "block_curve": [broken, exact]}))
    [point] = read_block_curve(path, "fp")
    assert (point.block_size, point.bound, point.nats_per_sequence) == (1, "exact", 50.0)
    path.write_text(json.dumps({"block_curve": [exact]}))  # no fingerprint recorded: taken as is
    assert len(read_block_curve(path, "fp")) == 1


# ----- completions --------------------------------------------------------------------------------------
def test_completion_block_size_is_the_request_s_else_the_model_default(client, models):
    m, prompt, seed = models["mnist-vssm"], [1, 0, 1], 3
    one_pass = reference(m, prompt, seed, [(24, ONE_PASS)])[0]
    token_by_token = reference(m, prompt, seed, [(24, 1)])[0]
    assert one_pass != token_by_token  # the block size matters for this seed: the test below can fail
    for sent, used, tokens in (
        (None, DEFAULT, reference(m, prompt, seed, [(24, DEFAULT)])[0]),
        (1, 1, token_by_token),
        (64, 64, one_pass),  # at the maximum position: one pass
        (ONE_PASS, ONE_PASS, one_pass),
    ):
        body = {"model": "mnist-vssm", "prompt": prompt, "max_tokens": 24, "seed": seed, "block_size": sent}
        out = client.post("/v1/completions", json=body).json()
        assert out["block_size"] == used and out["choices"][0]["tokens"] == tokens, sent
    out = client.post("/v1/completions", json={"model": "plain-vssm", "max_tokens": 8, "seed": 1}).json()
    assert out["block_size"] is None  # no default: one parallel pass
    assert out["choices"][0]["tokens"] == reference(models["plain-vssm"], [], 1, [(8, None)])[0]
    # autoregressive families accept a block size and sample token by token as always
    body = {"model": "mnist-ar-gru", "max_tokens": 8, "seed": 1, "block_size": 3}
    out = client.post("/v1/completions", json=body).json()
    assert out["block_size"] == 3
    assert out["choices"][0]["tokens"] == reference(models["mnist-ar-gru"], [], 1, [(8, None)])[0]


def test_a_streamed_completion_gives_the_tokens_of_one_call(client, models):
    body = {"model": "mnist-vssm", "prompt": [0, 1], "max_tokens": 23, "seed": 8, "n": 2, "block_size": 5}
    whole = client.post("/v1/completions", json=body).json()
    events = sse(client.post("/v1/completions", json={**body, "stream": True, "chunk_size": 3}))
    assert events[-1] == "[DONE]" and all(e["block_size"] == 5 for e in events[:-1])
    for i in range(2):  # chunks of 3 cut blocks of 5 anywhere: the same tokens
        streamed = [t for e in events[:-1] for t in e["choices"][i]["tokens"]]
        assert streamed == whole["choices"][i]["tokens"] == reference(models["mnist-vssm"], [0, 1], 8 + i, [(23, 5)])[0]


# ----- sessions -----------------------------------------------------------------------------------------
def test_a_session_keeps_its_block_size_forks_copy_it_and_a_call_may_override_it(checkpoints_dir, models, redis):
    m = models["mnist-vssm"]
    with app_client(checkpoints_dir, redis.url) as client:  # records through Redis: the field survives the store
        s = create(client, prompt=[1, 0], seed=5, block_size=3, max_tokens=5)
        assert s["block_size"] == 3 and s["chunk"]["block_size"] == 3
        ref = reference(m, [1, 0], 5, [(5, 3), (4, 3), (6, 1), (3, 3)])
        assert s["chunk"]["tokens"] == ref[0]
        fork = client.post(f"/v1/sessions/{s['id']}/fork").json()
        assert fork["block_size"] == 3
        c = generate(client, s["id"], max_tokens=4)
        assert c["tokens"] == ref[1] and c["block_size"] == 3
        assert generate(client, fork["id"], max_tokens=4)["tokens"] == ref[1]
        c = generate(client, s["id"], max_tokens=6, block_size=1)  # this call only
        assert c["tokens"] == ref[2] and c["block_size"] == 1
        assert client.get(f"/v1/sessions/{s['id']}").json()["block_size"] == 3
        assert generate(client, s["id"], max_tokens=3)["tokens"] == ref[3]
        # without one, a session takes the model's default (or one pass without a default)
        assert create(client)["block_size"] == DEFAULT
        plain = create(client, model="plain-vssm", seed=2)
        assert plain["block_size"] is None
        c = generate(client, plain["id"], max_tokens=7)
        assert c["block_size"] is None and c["tokens"] == reference(models["plain-vssm"], [], 2, [(7, None)])[0]


def test_a_streamed_session_gives_the_tokens_of_one_call(client, models):
    a, b = create(client, prompt=[1], seed=6, block_size=4), create(client, prompt=[1], seed=6, block_size=4)
    whole = generate(client, a["id"], max_tokens=13)["tokens"]
    body = {"max_tokens": 13, "stream": True, "chunk_size": 3, "expected_position": 1}
    events = sse(client.post(f"/v1/sessions/{b['id']}/generate", json=body))[:-1]
    assert [(e["start_position"], e["block_size"]) for e in events] == [(1, 4), (4, 4), (7, 4), (10, 4), (13, 4)]
    assert [t for e in events for t in e["tokens"]] == whole == reference(models["mnist-vssm"], [1], 6, [(13, 4)])[0]
    # and as many calls as you like: positions 14.. in chunks of 2 and 5 equal one call of 7
    assert [t for n in (2, 5) for t in generate(client, a["id"], max_tokens=n)["tokens"]] == generate(
        client, b["id"], max_tokens=7
    )["tokens"]


def test_a_replay_returns_the_chunk_of_its_block_size(client):
    s = create(client, seed=11)
    body = {"max_tokens": 6, "expected_position": 0, "block_size": 2}
    first = generate(client, s["id"], **body)
    again = generate(client, s["id"], **body)  # as if the response was lost
    assert again["replayed"] is True and again["tokens"] == first["tokens"] and again["block_size"] == 2
    streamed = sse(client.post(f"/v1/sessions/{s['id']}/generate", json={**body, "stream": True}))
    assert streamed[0]["replayed"] is True and streamed[0]["tokens"] == first["tokens"]
    # another block size is another request: not answered with these tokens
    r = client.post(f"/v1/sessions/{s['id']}/generate", json={**body, "block_size": 3})
    assert_error(r, 409, "position_mismatch")
    r = client.post(f"/v1/sessions/{s['id']}/generate", json={"max_tokens": 6, "expected_position": 0})
    assert_error(r, 409, "position_mismatch")  # the session's own (the default, 4) is not 2 either
    assert client.get(f"/v1/sessions/{s['id']}").json()["position"] == 6


def test_a_session_recorded_without_a_block_size_is_pinned_to_the_default(client, models):
    """A record from before sessions kept their block size: the model's default, kept from then on."""
    s = create(client, seed=9, block_size=2)
    store = client.app.state.ctx.store
    rec, deadline = store._data[s["id"]]
    store._data[s["id"]] = (replace(rec, block_size=None), deadline)
    assert client.get(f"/v1/sessions/{s['id']}").json()["block_size"] == DEFAULT
    c = generate(client, s["id"], max_tokens=5)
    assert c["block_size"] == DEFAULT and c["tokens"] == reference(models["mnist-vssm"], [], 9, [(5, DEFAULT)])[0]
    assert store._data[s["id"]][0].block_size == DEFAULT


def test_records_keep_the_block_size_and_read_ones_without_it():
    rec = SessionRecord("sess_" + "0" * 32, "m", "fp", 3, 1, "", 0.0, 60, state=b"s", block_size=0)
    assert SessionRecord.from_parts(rec.id, rec.meta_json(), b"s", 1, None).block_size == 0
    legacy = json.loads(rec.meta_json())
    del legacy["block_size"]
    assert SessionRecord.from_parts(rec.id, json.dumps(legacy), b"s", 1, None).block_size is None


# ----- contract -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("value", [0, -1, 1_000_001, "4", 4.0, True])
@pytest.mark.parametrize("path", ["/v1/completions", "/v1/sessions", "generate"])
def test_a_bad_block_size_is_a_400(client, path, value):
    if path == "generate":
        path = f"/v1/sessions/{create(client)['id']}/generate"
    body = {"model": "mnist-vssm", "max_tokens": 2} if path.startswith("/v1/c") else {"max_tokens": 2}
    if path == "/v1/sessions":
        body = {"model": "mnist-vssm"}
    assert_error(client.post(path, json={**body, "block_size": value}), 400, "invalid_field", "block_size")


# ----- batching -----------------------------------------------------------------------------------------
def test_concurrent_requests_with_different_block_sizes_share_one_model_call(checkpoints_dir, models):
    """Four completions, four block sizes (the default, 1, 3 and one pass), one model call: each gets
    the tokens it gets alone.  The batcher waits for all four (``max_batch_size``), long at most."""
    sizes = [None, 1, 3, ONE_PASS]
    results: dict[int, dict] = {}
    with app_client(checkpoints_dir, batch_window_ms=10_000, max_batch_size=len(sizes)) as client:

        def call(i: int) -> None:
            body = {"model": "mnist-vssm", "max_tokens": 12, "seed": 20 + i, "block_size": sizes[i]}
            results[i] = client.post("/v1/completions", json=body).json()

        threads = [threading.Thread(target=call, args=(i,)) for i in range(len(sizes))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        metrics = client.get("/metrics").text
    for i, size in enumerate(sizes):
        alone = reference(models["mnist-vssm"], [], 20 + i, [(12, size)])[0]
        assert results[i]["choices"][0]["tokens"] == alone and results[i]["block_size"] == (size or DEFAULT)
    assert 'vssm_batch_rows_count{model="mnist-vssm"} 1.0' in metrics
    assert 'vssm_batch_rows_sum{model="mnist-vssm"} 4.0' in metrics
