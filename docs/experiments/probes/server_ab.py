"""Probe (lab material): two running servers side by side, one client, sequential streamed 64-token
session chunks of ``mnist-vssm`` (a new session every 12 chunks), alternating blocks of chunks between
the servers (ABBA...); per server the median and 90th-percentile chunk latency and the server's CPU per
chunk (psutil, session creation included).

docs/experiments/rounds-and-serving.md, twenty-fifth session.  Start two servers on one Redis (e.g. a
worktree of the code before on PYTHONPATH for one of them), then::

    .venv/bin/python docs/experiments/probes/server_ab.py PORT_A PID_A PORT_B PID_B [blocks] [chunks]
"""

from __future__ import annotations

import statistics
import sys
import time

import httpx
import psutil


def cpu_s(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return t.user + t.system


def main() -> None:
    pa, pida, pb, pidb = (int(a) for a in sys.argv[1:5])
    blocks = int(sys.argv[5]) if len(sys.argv) > 5 else 10
    per = int(sys.argv[6]) if len(sys.argv) > 6 else 100
    servers = {
        name: (httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30), psutil.Process(pid))
        for name, port, pid in (("A", pa, pida), ("B", pb, pidb))
    }
    latency: dict[str, list[float]] = {"A": [], "B": []}
    cpu: dict[str, list[float]] = {"A": [], "B": []}

    def block(name: str) -> None:
        http, proc = servers[name]
        c0, sid, pos = cpu_s(proc), "", 0
        for i in range(per):
            if i % 12 == 0:
                sid, pos = http.post("/v1/sessions", json={"model": "mnist-vssm", "seed": i}).json()["id"], 0
            body = {"max_tokens": 64, "expected_position": pos, "stream": True, "chunk_size": 64}
            t0 = time.perf_counter()
            with http.stream("POST", f"/v1/sessions/{sid}/generate", json=body) as r:
                for _ in r.iter_lines():
                    pass
            latency[name].append(time.perf_counter() - t0)
            pos += 64
        cpu[name].append((cpu_s(proc) - c0) / per)

    for name in "AB":  # warm both, then forget it
        block(name)
        latency[name].clear(), cpu[name].clear()
    for b in range(blocks):
        for name in "AB" if b % 2 == 0 else "BA":
            block(name)
    for name in "AB":
        lat = sorted(latency[name])
        print(
            f"{name}: p50 {statistics.median(lat) * 1e3:.2f} ms, p90 {lat[int(0.9 * len(lat))] * 1e3:.2f} ms, "
            f"server CPU per chunk {statistics.median(cpu[name]) * 1e3:.2f} ms ({len(lat)} chunks)"
        )


if __name__ == "__main__":
    main()
