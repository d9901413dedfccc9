"""End to end: `vssm serve` processes on loopback, real Redis, resumed anywhere, faults injected."""

from __future__ import annotations

import json
import re
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from tests.server.conftest import RedisServer, reference, wait_until

pytestmark = pytest.mark.slow  # end to end: real servers, subprocesses or training runs


def post(srv, path: str, body: dict | None = None, **kw) -> httpx.Response:
    return httpx.post(srv.url + path, json=body, timeout=30, **kw)


def create(srv, **body) -> dict:
    r = post(srv, "/v1/sessions", {"model": "mnist-vssm", **body})
    assert r.status_code == 201, r.text
    return r.json()


def generate(srv, sid: str, n: int, **extra) -> dict:
    r = post(srv, f"/v1/sessions/{sid}/generate", {"max_tokens": n, **extra})
    assert r.status_code == 200, r.text
    return r.json()


def test_restart_between_chunks_equals_uninterrupted(serve, redis, checkpoints):
    srv = serve(redis.url)
    s = create(srv, prompt=[1, 0, 0], seed=3)
    got = []
    for n in (5, 7, 4):
        got.append(generate(srv, s["id"], n)["tokens"])
        srv.restart()
    assert got == reference(checkpoints, "mnist-vssm", [1, 0, 0], 3, [5, 7, 4])
    assert httpx.get(f"{srv.url}/v1/sessions/{s['id']}").json()["position"] == 19


def test_two_replicas_share_sessions(serve, redis, checkpoints):
    a, b = serve(redis.url), serve(redis.url)
    for model in ("mnist-vssm", "mnist-ar-transformer"):
        s = create(a, model=model, prompt=[1], seed=8)
        got = [generate(b, s["id"], 6)["tokens"], generate(a, s["id"], 5)["tokens"], generate(b, s["id"], 3)["tokens"]]
        assert got == reference(checkpoints, model, [1], 8, [6, 5, 3])
        fork = post(b, f"/v1/sessions/{s['id']}/fork").json()
        assert generate(a, fork["id"], 2)["tokens"] == generate(b, s["id"], 2)["tokens"]


def test_concurrent_generate_on_one_session(serve, redis, checkpoints):
    # a wide batching window makes the racers read the same version and compute together
    srv = serve(redis.url, VSSM_BATCH_WINDOW_MS="300")
    s = create(srv, prompt=[0, 1], seed=5)
    with ThreadPoolExecutor(4) as pool:
        rs = list(pool.map(lambda _: post(srv, f"/v1/sessions/{s['id']}/generate", {"max_tokens": 6}), range(4)))
    codes = sorted(r.status_code for r in rs)
    assert codes == [200, 409, 409, 409], [r.text for r in rs]
    for r in rs:
        if r.status_code == 409:
            assert r.json()["error"]["code"] in ("session_busy", "position_mismatch")
    winner = next(r.json() for r in rs if r.status_code == 200)
    ref = reference(checkpoints, "mnist-vssm", [0, 1], 5, [6, 4])
    assert winner["tokens"] == ref[0]
    assert httpx.get(f"{srv.url}/v1/sessions/{s['id']}").json()["position"] == 8  # advanced exactly once
    assert generate(srv, s["id"], 4)["tokens"] == ref[1]


def test_redis_outage_gives_503_then_recovers_without_losing_sessions(serve, redis, checkpoints):
    srv = serve(redis.url, VSSM_STORE_TIMEOUT_SECONDS="0.5")
    s = create(srv, prompt=[1, 1], seed=2)
    first = generate(srv, s["id"], 5)["tokens"]
    redis.stop()
    r = post(srv, f"/v1/sessions/{s['id']}/generate", {"max_tokens": 4})
    assert r.status_code == 503 and r.json()["error"]["code"] == "store_unavailable"
    assert int(r.headers["retry-after"]) >= 1
    ready = httpx.get(srv.url + "/ready", timeout=10)
    assert ready.status_code == 503 and ready.json()["error"]["code"] == "store_unavailable"
    assert post(srv, "/v1/sessions", {"model": "mnist-vssm"}).status_code == 503
    assert httpx.get(srv.url + "/health").status_code == 200  # alive, just not ready
    redis.start()  # same port and AOF directory: committed sessions come back
    wait_until(lambda: httpx.get(srv.url + "/ready", timeout=2).status_code == 200, 20, "recovery")
    second = generate(srv, s["id"], 4)["tokens"]
    assert [first, second] == reference(checkpoints, "mnist-vssm", [1, 1], 2, [5, 4])


def test_stream_disconnect_leaves_a_resumable_session(serve, redis, checkpoints):
    srv = serve(redis.url)
    r = post(srv, "/v1/sessions", {"model": "text-vssm", "prompt": "To be", "seed": 4})
    sid = r.json()["id"]
    body = {"max_tokens": 4000, "stream": True, "chunk_size": 1, "expected_position": 5}
    with httpx.stream("POST", f"{srv.url}/v1/sessions/{sid}/generate", json=body, timeout=30) as resp:
        first = None
        for line in resp.iter_lines():
            if line.startswith("data: "):
                first = json.loads(line[6:])
                break
    assert first is not None and first["position"] == 6
    time.sleep(1.0)
    p1 = httpx.get(f"{srv.url}/v1/sessions/{sid}").json()["position"]
    time.sleep(0.5)
    p2 = httpx.get(f"{srv.url}/v1/sessions/{sid}").json()["position"]
    assert 6 <= p1 == p2 < 5 + 4000  # the disconnect stopped the work, and what was committed stays
    more = generate(srv, sid, 7, expected_position=p1)["tokens"]
    ref = reference(checkpoints, "text-vssm", list(b"To be"), 4, [p1 - 5, 7])
    assert first["tokens"] == ref[0][:1] and more == ref[1]


def test_batched_requests_equal_alone(serve, redis, checkpoints):
    srv = serve(redis.url, VSSM_BATCH_WINDOW_MS="100")
    jobs = [("mnist-vssm", [1] * (i % 3), 20 + i, 6) for i in range(6)] + [
        ("mnist-ar-transformer", [0] * (i % 4), 40 + i, 5) for i in range(6)
    ]

    def complete(job):
        model, prompt, seed, n = job
        return post(srv, "/v1/completions", {"model": model, "prompt": prompt, "seed": seed, "max_tokens": n})

    sessions = [create(srv, prompt=[1] * k, seed=60 + k) for k in range(4)]  # rows at different positions
    with ThreadPoolExecutor(len(jobs) + len(sessions)) as pool:
        futs = [pool.submit(complete, j) for j in jobs]
        sfuts = [pool.submit(generate, srv, s["id"], 5) for s in sessions]
    for job, f in zip(jobs, futs, strict=True):
        model, prompt, seed, n = job
        assert f.result().json()["choices"][0]["tokens"] == reference(checkpoints, model, prompt, seed, [n])[0]
    for k, f in enumerate(sfuts):
        assert f.result()["tokens"] == reference(checkpoints, "mnist-vssm", [1] * k, 60 + k, [5])[0]
    metrics = httpx.get(srv.url + "/metrics").text
    count = float(re.search(r'vssm_batch_rows_count\{model="mnist-vssm"\} (\S+)', metrics).group(1))
    single = float(re.search(r'vssm_batch_rows_bucket\{le="1.0",model="mnist-vssm"\} (\S+)', metrics).group(1))
    assert single < count  # some calls did carry several requests


def test_openai_package_works_unchanged(serve, redis, checkpoints):
    srv = serve(redis.url)
    client = openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0)
    ids = {m.id for m in client.models.list()}
    assert {"mnist-vssm", "text-vssm"} <= ids
    out = client.completions.create(model="text-vssm", prompt="ROMEO:", max_tokens=10, seed=7)
    ref = reference(checkpoints, "text-vssm", list(b"ROMEO:"), 7, [10])[0]
    assert out.choices[0].text == bytes(ref).decode("utf-8", errors="replace")
    assert out.choices[0].finish_reason == "length" and out.usage.completion_tokens == 10
    assert out.choices[0].model_extra["tokens"] == ref
    text = ""
    for chunk in client.completions.create(
        model="text-vssm", prompt="ROMEO:", max_tokens=10, seed=7, stream=True, extra_body={"chunk_size": 3}
    ):
        text += chunk.choices[0].text
    assert text == out.choices[0].text
    tokens = client.completions.create(model="mnist-vssm", prompt=[0, 1], max_tokens=4, seed=1)
    assert tokens.choices[0].model_extra["tokens"] == reference(checkpoints, "mnist-vssm", [0, 1], 1, [4])[0]
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="gpt-nope", prompt="x", max_tokens=1)
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model="mnist-vssm", prompt=[0], max_tokens=100)


def test_session_flow_on_a_three_node_redis_cluster(serve, tmp_path, checkpoints):
    nodes = [RedisServer(tmp_path, cluster=True).start() for _ in range(3)]
    try:
        out = nodes[0].cli(
            "--cluster", "create", *[f"127.0.0.1:{n.port}" for n in nodes], "--cluster-replicas", "0", "--cluster-yes"
        )
        assert "[OK]" in out, out
        wait_until(lambda: "cluster_state:ok" in nodes[0].cli("cluster", "info"), 20, "cluster ok")
        srv = serve(f"redis+cluster://127.0.0.1:{nodes[1].port}")
        assert httpx.get(srv.url + "/ready").json()["store"] == "redis-cluster"

        def sizes() -> list[int]:
            """Session keys per node (the caller's quota keys live beside them)."""
            return [len(n.cli("--scan", "--pattern", "vssm:session:{sess_*").split()) for n in nodes]

        ids, got = [], []
        # at least 6 sessions, and more until their random ids have put keys on two nodes (6 alone
        # all land on one node 0.4% of the time); bounded, so a broken cluster still fails
        for seed in range(30):
            s = create(srv, prompt=[1], seed=seed)
            ids.append(s["id"])
            got.append([generate(srv, s["id"], 4)["tokens"], generate(srv, s["id"], 3)["tokens"]])
            if seed >= 5 and sum(n > 0 for n in sizes()) >= 2:
                break
        for seed, g in enumerate(got):
            assert g == reference(checkpoints, "mnist-vssm", [1], seed, [4, 3])
        assert sum(sizes()) == len(ids) and sum(n > 0 for n in sizes()) >= 2
        body = {"max_tokens": 2, "expected_position": 8}
        first = post(srv, f"/v1/sessions/{ids[0]}/generate", body).json()
        again = post(srv, f"/v1/sessions/{ids[0]}/generate", body).json()  # a retry: replayed from the cluster
        assert first["replayed"] is False and again["replayed"] is True and again["tokens"] == first["tokens"]
        assert httpx.delete(f"{srv.url}/v1/sessions/{ids[1]}").status_code == 200
    finally:
        for n in nodes:
            n.stop()


def test_abandoned_streams_release_their_admission_slots(serve, redis):
    """Clients that vanish right after sending a stream request must not leak admission slots."""
    import socket

    srv = serve(redis.url, VSSM_MAX_IN_FLIGHT="4")
    body = json.dumps({"model": "text-vssm", "max_tokens": 3000, "stream": True, "chunk_size": 1}).encode()
    request = (
        f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    for _ in range(12):  # three times the limit
        with socket.create_connection(("127.0.0.1", srv.port)) as s:
            s.sendall(request)

    def in_flight() -> float:
        text = httpx.get(srv.url + "/metrics").text
        return float(re.search(r"^vssm_in_flight (\S+)$", text, re.M).group(1))

    wait_until(lambda: in_flight() == 0, 30, "slots released")
    r = post(srv, "/v1/completions", {"model": "mnist-vssm", "max_tokens": 2})
    assert r.status_code == 200, r.text
