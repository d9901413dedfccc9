"""Probe (lab material): where one streamed 64-token session chunk's wall time goes at one client.

docs/experiments/rounds-and-serving.md, thirty-fourth session.  Starts redis-server and one server
with batching on, as the benchmark's overhead figure does (``bench.serving._Stack``, random weights
of the small mnist preset), then runs ``sessions`` sessions of ``chunks`` streamed chunks each from
one client, twice by turns: with httpx (the benchmark's client) and with a bare keep-alive socket
(HTTP/1.1 written and read by hand: what the client itself costs).  From the server's metrics, per
chunk: the route's own time (``vssm_request_seconds``, the request's handler until the stream
ends), the batcher job (queue to result) and the model call inside it, the store's get and
compare-and-set; and the in-process chunk time as the benchmark takes it (``model_time``)::

    PYTHONPATH=. .venv/bin/python docs/experiments/probes/chunk_parts.py [sessions] [chunks]
"""

from __future__ import annotations

import json
import re
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil

from bench import serving

SUMS = {
    "request": r'vssm_request_seconds_(sum|count)\{route="/v1/sessions/\{sid\}/generate"\}',
    "job": r"vssm_job_seconds_(sum|count)\{[^}]*\}",
    "model": r"vssm_model_seconds_(sum|count)\{[^}]*\}",
    "get": r'vssm_store_seconds_(sum|count)\{op="get"\}',
    "cas": r'vssm_store_seconds_(sum|count)\{op="cas"\}',
}


def metrics(url: str) -> dict[str, float]:
    text = httpx.get(url + "/metrics").text
    out: dict[str, float] = {}
    for key, pat in SUMS.items():
        for line in text.splitlines():
            m = re.match(pat + r" (\S+)$", line)
            if m:
                out[f"{key}_{m.group(1)}"] = out.get(f"{key}_{m.group(1)}", 0.0) + float(m.group(2))
    return out


def raw_chunk(sock: socket.socket, host: str, sid: str, pos: int) -> None:
    """One streamed chunk over a kept-alive socket: the request by hand, the chunked body read to its end."""
    body = json.dumps(
        {"max_tokens": serving.CHUNK, "expected_position": pos, "stream": True, "chunk_size": serving.CHUNK}
    ).encode()
    head = (
        f"POST /v1/sessions/{sid}/generate HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    sock.sendall(head + body)
    buf = b""

    def done(buf: bytes) -> bool:  # a whole response: its Content-Length read, or a chunked body's last chunk
        head, sep, body = buf.partition(b"\r\n\r\n")
        if not sep:
            return False
        length = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
        return len(body) >= int(length.group(1)) if length else body.endswith(b"0\r\n\r\n")

    while not done(buf):  # a one-chunk stream comes as one body with a Content-Length (server/sse.py)
        got = sock.recv(65536)
        if not got:
            raise RuntimeError("connection closed")
        buf += got
    if b" 200 " not in buf.split(b"\r\n", 1)[0] or b'"tokens"' not in buf:
        raise RuntimeError(buf[:300])


def run(url: str, client: str, sessions: int, chunks: int, seed0: int) -> list[float]:
    times = []
    with httpx.Client(base_url=url, timeout=30) as http:
        made = [http.post("/v1/sessions", json={"model": "mnist-vssm", "seed": seed0 + i}) for i in range(sessions)]
        sids = [r.json()["id"] for r in made]
        if client == "raw":
            host, port = url.removeprefix("http://").split(":")
            sock = socket.create_connection((host, int(port)))
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for sid in sids:
            for c in range(chunks):
                pos = c * serving.CHUNK
                t0 = time.perf_counter()
                if client == "raw":
                    raw_chunk(sock, host, sid, pos)
                else:
                    body = {"max_tokens": serving.CHUNK, "expected_position": pos, "stream": True}
                    body["chunk_size"] = serving.CHUNK
                    with http.stream("POST", f"/v1/sessions/{sid}/generate", json=body) as r:
                        r.raise_for_status()
                        for _ in r.iter_lines():
                            pass
                times.append(time.perf_counter() - t0)
        if client == "raw":
            sock.close()
    return times


def main() -> None:
    sessions = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    chunks = int(sys.argv[2]) if len(sys.argv) > 2 else serving.SESSION_CHUNKS
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp)
        m = serving.random_checkpoint(ckpt).freeze()
        with serving._Stack(ckpt, True, 1) as stack:
            run(stack.url, "httpx", 1, 2, 0)  # warm-up
            server = psutil.Process(stack.server_pid)
            for rnd in range(2):
                for client in ("httpx", "raw"):
                    _, inproc = serving.model_time(m, 1, 10)
                    m0, cpu0 = metrics(stack.url), server.cpu_times()
                    times = run(stack.url, client, sessions, chunks, 100 * (rnd + 1))
                    m1, cpu1 = metrics(stack.url), server.cpu_times()
                    n = len(times)
                    d = {k: m1[k] - m0.get(k, 0.0) for k in m1}

                    def per(key: str, d: dict[str, float] = d) -> float:
                        return 1000 * d[f"{key}_sum"] / max(d[f"{key}_count"], 1)

                    e2e = 1000 * statistics.median(times)
                    print(
                        f"{client:5s} e2e p50 {e2e:.2f} (mean {1000 * statistics.fmean(times):.2f}) ms; "
                        f"route {per('request'):.2f}, job {per('job'):.2f}, model call {per('model'):.2f}, "
                        f"get {per('get'):.2f}, cas {per('cas'):.2f}; in process {1000 * inproc:.2f}; "
                        f"e2e - in process {e2e - 1000 * inproc:.2f}; server CPU a chunk "
                        f"{1000 * (cpu1.user - cpu0.user) / n:.2f} user + "
                        f"{1000 * (cpu1.system - cpu0.system) / n:.2f} sys",
                        flush=True,
                    )


if __name__ == "__main__":
    main()
