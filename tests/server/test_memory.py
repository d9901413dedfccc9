"""The server under a fixed address-space cap survives the worst request each endpoint accepts.

``vssm serve`` runs the bundled text models with ``RLIMIT_AS`` set, and configured limits
(``VSSM_MAX_PROMPT_TOKENS`` and friends) that keep the test short.  Before prompts were read in
windows, one 4,096-byte prompt alone needed 2.4 GB more than the idle server's 0.9 GB, which the
cap turns into a failed allocation (a 500); now every answer is below 500 and the server lives on.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.server.conftest import ROOT, free_port, wait_until

CAP = 2560 << 20  # bytes of address space: idle, the server maps about 0.9 GB of it
LIMITS = {"max_prompt_tokens": 4096, "max_n": 4, "max_tokens": 128, "max_body_bytes": 1 << 20}
MODELS = ["shakespeare-vssm", "shakespeare-ar-ssm", "shakespeare-ar-gru", "shakespeare-ar-transformer"]
LAUNCH = (
    "import resource, runpy, sys; "
    "resource.setrlimit(resource.RLIMIT_AS, (int(sys.argv[1]), int(sys.argv[1]))); "
    "sys.argv = ['vssm', *sys.argv[2:]]; "
    "runpy.run_module('server', run_name='__main__')"
)


@pytest.mark.slow
def test_worst_requests_under_an_address_space_cap(tmp_path):
    ckpts = tmp_path / "checkpoints"
    ckpts.mkdir()
    for m in MODELS:
        (ckpts / f"{m}.safetensors").symlink_to(ROOT / "checkpoints" / f"{m}.safetensors")
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "VSSM_TORCH_THREADS": "1"}
    env.update({f"VSSM_{k.upper()}": str(v) for k, v in LIMITS.items()})
    args = ["serve", "--port", str(port), "--checkpoints", str(ckpts)]
    log = tmp_path / "serve.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", LAUNCH, str(CAP), *args], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT
        )
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"vssm serve exited: {log.read_text()[-2000:]}")
        return httpx.get(url + "/ready", timeout=1).status_code == 200

    statuses: dict[str, int] = {}
    try:
        wait_until(up, 60, "the capped server")
        assert _limit_of(proc.pid) == CAP
        with httpx.Client(base_url=url, timeout=300) as c:

            def call(name: str, method: str, path: str, **kw) -> httpx.Response:
                r = c.request(method, path, **kw)
                statuses[name] = r.status_code
                assert r.status_code < 500, f"{name}: {r.status_code} {r.text[:300]}"
                return r

            cards = {m["id"]: m for m in c.get("/v1/models").json()["data"]}
            n, k = LIMITS["max_n"], LIMITS["max_tokens"]
            for m in MODELS:
                room = cards[m]["max_position"] or 1 << 30
                prompt = "a" * min(LIMITS["max_prompt_tokens"], room - k)
                body = {"model": m, "prompt": prompt, "n": n, "max_tokens": k}
                call(f"{m} completion", "POST", "/v1/completions", json=body)
                body = {"model": m, "prompt": prompt, "max_tokens": k}
                sid = call(f"{m} create", "POST", "/v1/sessions", json=body).json()["id"]
                if cards[m]["max_position"] is None:
                    call(f"{m} append", "POST", f"/v1/sessions/{sid}/append", json={"prompt": prompt})
                body = {"max_tokens": k, "stream": True, "chunk_size": k // 2}
                call(f"{m} generate", "POST", f"/v1/sessions/{sid}/generate", json=body)
                call(f"{m} fork", "POST", f"/v1/sessions/{sid}/fork")
                call(f"{m} get", "GET", f"/v1/sessions/{sid}")
                call(f"{m} delete", "DELETE", f"/v1/sessions/{sid}")
            # the largest body the server reads: a token list just under the body limit (a 400, not a crash)
            tokens = ",".join(["1"] * (LIMITS["max_body_bytes"] // 2 - 64))
            raw = f'{{"model": "shakespeare-vssm", "prompt": [{tokens}]}}'.encode()
            assert len(raw) <= LIMITS["max_body_bytes"]
            headers = {"content-type": "application/json"}
            assert call("largest body", "POST", "/v1/completions", content=raw, headers=headers).status_code == 400
            for path in ("/v1/models", "/metrics", "/ready", "/health"):
                call(path, "GET", path)
        assert proc.poll() is None, log.read_text()[-2000:]
        assert statuses["shakespeare-vssm append"] == 200 and statuses["shakespeare-vssm create"] == 201
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def _limit_of(pid: int) -> int:
    """The process's RLIMIT_AS, as the kernel reports it."""
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max address space"):
            return int(line.split()[3])
    return resource.RLIM_INFINITY
