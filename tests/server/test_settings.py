"""Settings from the environment (lists as ``a,b`` and as JSON), keys from a file, ``vssm serve
--workers 2`` passing keys to its workers without a command line and sharing its sessions through Redis,
and refused without Redis."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import typing

import httpx
import psutil
import pytest

from tests.server.conftest import ROOT, free_port, wait_until
from tests.server.test_contract import _raw
from vssm.server import Settings


def _kind(name: str) -> type | None:
    """``list`` or ``dict`` for a collection setting, else None."""
    ann = Settings.model_fields[name].annotation
    if typing.get_origin(ann) is typing.Annotated:
        ann = typing.get_args(ann)[0]
    origin = typing.get_origin(ann)
    return origin if origin in (list, dict) else None


COLLECTIONS = [name for name in Settings.model_fields if _kind(name) is not None]


def test_there_are_collection_settings():
    assert {"api_keys", "max_prompt_tokens_by_model"} <= set(COLLECTIONS)


@pytest.mark.parametrize("name", COLLECTIONS)
def test_every_collection_setting_reads_the_plain_form_and_json(name, monkeypatch):
    var = f"VSSM_{name.upper()}"
    if _kind(name) is list:
        forms, expected = ["k1,k2", " k1 , k2 ,", '["k1", "k2"]'], ["k1", "k2"]
    else:
        forms, expected = ["m1=3,m2=4", " m1 = 3, m2=4 ", '{"m1": 3, "m2": 4}'], {"m1": 3, "m2": 4}
    for form in forms:
        monkeypatch.setenv(var, form)
        assert getattr(Settings(), name) == expected, form
    monkeypatch.setenv(var, "")
    assert getattr(Settings(), name) == type(expected)()


def test_a_mapping_entry_without_a_value_is_refused(monkeypatch):
    monkeypatch.setenv("VSSM_MAX_PROMPT_TOKENS_BY_MODEL", "m1")
    with pytest.raises(ValueError, match="key=value"):
        Settings()


def test_keys_file_adds_to_the_keys(tmp_path, monkeypatch):
    f = tmp_path / "keys"
    f.write_text("k2\n\nk3,k1\n")  # a trailing newline, as secret files have
    monkeypatch.setenv("VSSM_API_KEYS", "k1")
    monkeypatch.setenv("VSSM_API_KEYS_FILE", str(f))
    assert Settings().api_keys == ["k1", "k2", "k3"]
    monkeypatch.delenv("VSSM_API_KEYS")
    assert Settings().api_keys == ["k2", "k3", "k1"]
    monkeypatch.setenv("VSSM_API_KEYS_FILE", str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError):
        Settings()


def test_settings_survive_the_environment(tmp_path, monkeypatch):
    """What ``vssm serve --workers N`` exports rebuilds the same settings in a worker."""
    f = tmp_path / "keys"
    f.write_text("from-file\n")
    s = Settings(
        api_keys=["a,b", "c"],  # a key may even hold a comma: JSON keeps it whole
        api_keys_file=f,
        max_prompt_tokens_by_model={"m": 5},
        redis_url="redis://127.0.0.1:1/0",
        batch_window_ms=2.5,
        batching=False,
    )
    env = s.to_environment()
    assert "VSSM_API_KEYS_FILE" not in env  # its keys are in VSSM_API_KEYS already
    for k in [k for k in os.environ if k.startswith("VSSM_")]:
        monkeypatch.delenv(k)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert Settings().model_dump() == s.model_dump(exclude={"api_keys_file"}) | {"api_keys_file": None}
    assert Settings().api_keys == ["a,b", "c", "from-file"]


@pytest.mark.parametrize(
    ("flags", "env_url", "why"),
    [
        (["--workers", "2"], None, "needs a session store"),
        # the flag wins over the variable, as in the settings the server runs with: "" is the in-process store
        (["--workers", "2", "--redis-url", ""], "redis://127.0.0.1:1/0", "needs a session store"),
        (["--workers", "0"], "redis://127.0.0.1:1/0", "at least 1"),
    ],
)
def test_serve_refuses_workers_without_a_shared_store(flags, env_url, why, monkeypatch):
    """Each worker process has its own memory: sessions kept there would 404 on every other worker, so
    ``--workers 2`` without Redis is refused before anything loads (and fewer than one worker always)."""
    monkeypatch.delenv("VSSM_REDIS_URL", raising=False)
    if env_url:
        monkeypatch.setenv("VSSM_REDIS_URL", env_url)
    out = subprocess.run(
        [sys.executable, "-m", "vssm.server", "serve", *flags, "--port", str(free_port())],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2, out
    assert why in out.stderr


@pytest.mark.slow
def test_serve_with_workers_passes_keys_by_environment_only(checkpoints, tmp_path, redis):
    """``vssm serve --workers 2 --api-keys ...`` starts, every worker knows the keys (given on the
    command line and in a file), no worker's command line holds one, and a session made on one worker
    is continued chunk by chunk from the store they share (Redis), whichever worker answers."""
    port = free_port()
    keys_file = tmp_path / "keys"
    keys_file.write_text("file-key-5d1c\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "VSSM_TORCH_THREADS": "1", "VSSM_API_KEYS_FILE": str(keys_file)}
    env.pop("VSSM_API_KEYS", None)
    args = ["--port", str(port), "--checkpoints", str(checkpoints), "--workers", "2", "--api-keys", "cli-key-9e2b,x"]
    args += ["--redis-url", redis.url]
    log = (tmp_path / "serve.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "vssm.server", "serve", *args], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
    )
    url = f"http://127.0.0.1:{port}"
    try:

        def up() -> bool:
            if proc.poll() is not None:  # it exited: fail now rather than time out
                raise RuntimeError(f"vssm serve exited: {(tmp_path / 'serve.log').read_text()[-2000:]}")
            return httpx.get(url + "/ready", timeout=1).status_code == 200

        wait_until(up, 90, "two workers")
        workers = psutil.Process(proc.pid).children(recursive=True)
        assert len(workers) >= 2
        for p in workers:
            line = " ".join(p.cmdline())
            assert "cli-key-9e2b" not in line and "file-key-5d1c" not in line, line
        assert httpx.get(url + "/v1/models", timeout=5).status_code == 401
        # the workers run our HTTP protocol too: a request the parser refuses gets the envelope
        status, headers, _ = _raw(port, b"GET /he alth HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status.startswith("HTTP/1.1 400") and headers["content-type"] == "application/json"
        # several requests, so that both workers answer some (each rebuilt its settings from the environment)
        for key in ["cli-key-9e2b", "x", "file-key-5d1c"] * 3:
            r = httpx.get(url + "/v1/models", headers={"Authorization": f"Bearer {key}"}, timeout=5)
            assert r.status_code == 200, r.text
        # one session, chunk by chunk on fresh connections: each may land on either worker
        auth = {"Authorization": "Bearer x"}
        model_id = httpx.get(url + "/v1/models", headers=auth, timeout=5).json()["data"][0]["id"]
        sid = httpx.post(url + "/v1/sessions", json={"model": model_id, "seed": 3}, headers=auth, timeout=30)
        assert sid.status_code in (200, 201), sid.text
        sid = sid.json()["id"]
        for position in range(0, 24, 4):
            body = {"max_tokens": 4, "expected_position": position}
            r = httpx.post(f"{url}/v1/sessions/{sid}/generate", json=body, headers=auth, timeout=30)
            assert r.status_code == 200, r.text
        # the session lives in the store both workers read, not in the memory of the one that made it
        assert sid in redis.cli("--scan", "--pattern", "vssm:session:*")
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()
    text = (tmp_path / "serve.log").read_text()
    assert "cli-key-9e2b" not in text and json.dumps(["cli-key-9e2b"]) not in text
