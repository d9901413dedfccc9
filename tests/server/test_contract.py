"""The contract's edges: strict request types, the envelope on every 4xx (those raised before
routing too), ``Allow`` on 405, and every error code the server can send listed in docs/api.md."""

from __future__ import annotations

import ast
import json
import re
import socket
import threading
from collections.abc import Iterator

import pytest
import uvicorn
from fastapi.testclient import TestClient

from tests.server.conftest import ROOT, free_port, wait_until
from tests.server.test_api import assert_error, make_client
from vssm.server import cli, errors
from vssm.server import protocol as protocol_module
from vssm_client._exceptions import _STATUS_BY_CODE


@pytest.fixture(scope="module")
def client(checkpoints) -> Iterator[TestClient]:
    with make_client(checkpoints, None) as c:
        yield c


@pytest.fixture(scope="module")
def sid(client) -> str:
    return client.post("/v1/sessions", json={"model": "mnist-vssm"}).json()["id"]


BASE = {
    "/v1/completions": {"model": "mnist-vssm", "max_tokens": 2},
    "/v1/sessions": {"model": "mnist-vssm"},
    "generate": {"max_tokens": 2},
    "append": {"prompt": [1]},
    "fork": {},
}
STRICT = [
    ("/v1/completions", "max_tokens", "2"),
    ("/v1/completions", "max_tokens", 2.0),
    ("/v1/completions", "max_tokens", True),
    ("/v1/completions", "stream", "yes"),
    ("/v1/completions", "stream", 1),
    ("/v1/completions", "prompt", [True, False]),
    ("/v1/completions", "prompt", [1, "0"]),
    ("/v1/completions", "temperature", "1.0"),
    ("/v1/completions", "temperature", True),
    ("/v1/completions", "n", "2"),
    ("/v1/completions", "seed", "3"),
    ("/v1/completions", "chunk_size", "4"),
    ("/v1/completions", "model", 5),
    ("/v1/completions", "block_size", "4"),
    ("/v1/sessions", "block_size", 2.0),
    ("generate", "block_size", True),
    ("/v1/sessions", "prompt", [True]),
    ("/v1/sessions", "seed", 3.0),
    ("/v1/sessions", "ttl_seconds", "60"),
    ("/v1/sessions", "max_tokens", "2"),
    ("/v1/sessions", "temperature", "1"),
    ("generate", "max_tokens", "2"),
    ("generate", "stream", "yes"),
    ("generate", "expected_position", "0"),
    ("generate", "chunk_size", 1.0),
    ("append", "prompt", [True]),
    ("append", "expected_position", False),
    ("fork", "ttl_seconds", "60"),
]


@pytest.mark.parametrize(("path", "field", "value"), STRICT)
def test_every_request_field_is_strict(client, sid, path, field, value):
    """No coercion: a string is not a number, a number not a bool, a bool not a token."""
    url = path if path.startswith("/") else f"/v1/sessions/{sid}/{path}"
    assert_error(client.post(url, json={**BASE[path], field: value}), 400, "invalid_field", field)


def test_integers_are_still_floats(client):
    r = client.post("/v1/completions", json={"model": "mnist-vssm", "max_tokens": 1, "temperature": 1})
    assert r.status_code == 200


@pytest.mark.parametrize("value", [b"NaN", b"Infinity", b"-Infinity"])
def test_a_temperature_that_is_not_finite(client, sid, value):
    for url, body in (
        ("/v1/completions", b'{"model": "mnist-vssm", "temperature": %s}'),
        ("/v1/sessions", b'{"model": "mnist-vssm", "temperature": %s}'),
        (f"/v1/sessions/{sid}/generate", b'{"max_tokens": 1, "temperature": %s}'),
    ):
        r = client.post(url, content=body % value, headers={"content-type": "application/json"})
        err = assert_error(r, 400, "invalid_field", "temperature")
        assert "not a finite number" in err["message"], err


def test_an_over_long_idempotency_key_names_the_header(client):
    r = client.post("/v1/sessions", json={"model": "mnist-vssm"}, headers={"Idempotency-Key": "k" * 201})
    err = assert_error(r, 400, "invalid_field", "Idempotency-Key")
    assert err["message"].startswith("Idempotency-Key: ")


def test_405_says_which_methods_are_allowed(client, sid):
    r = client.delete("/v1/models")
    assert_error(r, 405, "method_not_allowed")
    assert r.headers["allow"] == "GET"
    r = client.put(f"/v1/sessions/{sid}")  # two routes serve this path: Allow names the methods of both
    assert_error(r, 405, "method_not_allowed")
    assert r.headers["allow"] == "DELETE, GET"


def test_a_malformed_session_id_is_not_echoed(client):
    r = client.get("/v1/sessions/" + "a" * 60_000)
    assert_error(r, 404, "session_not_found")
    assert len(r.content) < 500


def _raw(port: int, request: bytes) -> tuple[str, dict[str, str], bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(request)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    return status, headers, body


REFUSED = [
    b"GET /v1/sessions/" + b"a" * 200_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",  # past the parser's limits
    b"GET /he alth HTTP/1.1\r\nHost: x\r\n\r\n",
    b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: nine\r\n\r\n",
]


@pytest.mark.parametrize("protocol", ["HTTPProtocol", "EnvelopeH11Protocol"])
def test_requests_refused_before_routing_get_the_envelope(protocol):
    """uvicorn answers a request its parser refuses by itself, before any app; our protocols answer
    in the envelope (h11 is uvicorn's fallback where httptools is missing)."""

    async def app(scope, receive, send) -> None:  # never reached: the parser refuses first
        raise AssertionError("a refused request reached the app")

    port = free_port()
    config = uvicorn.Config(app, port=port, http=getattr(protocol_module, protocol), lifespan="off", log_level="error")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started, 10, "uvicorn")
        # h11 refuses a long request line at 16 KB, while the client is still sending it: closing then
        # resets the connection, which may drop any answer, so it is asked the other two
        for request in REFUSED if protocol == "HTTPProtocol" else REFUSED[1:]:
            status, headers, body = _raw(port, request)
            assert status.startswith("HTTP/1.1 400"), (request[:40], status)
            assert headers["content-type"] == "application/json"
            err = json.loads(body)["error"]
            assert err["code"] == "http_error" and err["type"] == "invalid_request_error" and err["message"]
    finally:
        server.should_exit = True
        thread.join(10)


def test_vssm_serve_runs_uvicorn_with_our_protocol(monkeypatch, checkpoints):
    runs: list[dict] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: runs.append(kw))
    cli.main(["serve", "--checkpoints", str(checkpoints), "--port", "0"])
    assert runs[0]["http"] == "vssm.server.protocol:HTTPProtocol"


# ----- every code, documented ---------------------------------------------------------------------
CODE_ARG = {"APIError": 1, "envelope": 1, "bad_request": 0, "not_found": 0, "conflict": 0, "unavailable": 0}


def codes_in_the_code() -> set[str]:
    """The string literals passed as an error code anywhere in server/."""
    found = set(errors.HTTP_CODES.values())
    for path in (ROOT / "server").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            name = getattr(node.func, "id", None) or getattr(node.func, "attr", None)
            if name not in CODE_ARG:
                continue
            i = CODE_ARG[name]
            args = [*node.args[i : i + 1], *(k.value for k in node.keywords if k.arg == "code")]
            found |= {a.value for a in args if isinstance(a, ast.Constant) and isinstance(a.value, str)}
    found.add("http_error")  # the errors module's fallback for statuses Starlette raises itself
    return found


def documented_codes() -> dict[str, int]:
    """docs/api.md's error table: code -> the status of its row."""
    doc = (ROOT / "docs" / "api.md").read_text()
    table = doc[doc.index("| status | type | codes |") :].split("\n\n")[0]
    out = {}
    for row in table.splitlines()[2:]:
        status, _, codes = (c.strip() for c in row.strip("|").split("|"))
        for code in re.findall(r"`([a-z_]+)`", codes):
            out.setdefault(code, int(status))
    return out


def test_every_error_code_is_documented_with_its_status():
    used = codes_in_the_code()
    assert len(used) > 15
    assert used == set(errors.CODES), "server.errors.CODES must list exactly the codes the server uses"
    doc = documented_codes()
    for code, status in errors.CODES.items():
        assert doc.get(code) == status, f"{code} ({status}) is not in docs/api.md's error table under {status}"
    assert _STATUS_BY_CODE == errors.CODES, "the client maps in-band errors by code: keep it in step"
