"""Probe (lab material): two running servers side by side under load: CLIENTS concurrent sessions of MODEL, each
streaming CHUNK-token chunks from a position of its own (client k first draws k * 7 tokens, so the sessions stand
at different places in their blocks), in rounds taken by the servers by turns (ABBA...); per server the median
round's throughput and chunk latency, and the server's CPU per chunk (psutil).  The load generator runs in this
process and shares the machine's cores with the servers.

docs/experiments/rounds-and-serving.md, forty-first session.  Start two servers on one Redis (other builds or
other environments), then::

    .venv/bin/python docs/experiments/probes/load_ab.py PORT_A PID_A PORT_B PID_B MODEL CLIENTS CHUNK ROUNDS
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time

import httpx
import psutil

TOKENS = 392  # tokens a session draws in a round, after its first offset


def cpu_s(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return t.user + t.system


async def session(http: httpx.AsyncClient, model: str, k: int, chunk: int, lat: list[float]) -> int:
    sid = (await http.post("/v1/sessions", json={"model": model, "seed": 1000 + k})).json()["id"]
    pos, drawn = 0, 0
    sizes = ([k * 7 % 64] if k * 7 % 64 else []) + [chunk] * (TOKENS // chunk)
    for n in sizes:
        body = {"max_tokens": n, "expected_position": pos, "stream": True, "chunk_size": n}
        t0 = time.perf_counter()
        async with http.stream("POST", f"/v1/sessions/{sid}/generate", json=body) as r:
            if r.status_code != 200:
                raise RuntimeError(f"{r.status_code}: {(await r.aread())[:200]!r}")
            async for _ in r.aiter_lines():
                pass
        lat.append(time.perf_counter() - t0)
        pos, drawn = pos + n, drawn + n
    await http.delete(f"/v1/sessions/{sid}")
    return drawn


async def main() -> None:
    pa, pida, pb, pidb = (int(a) for a in sys.argv[1:5])
    model, clients, chunk, rounds = sys.argv[5], int(sys.argv[6]), int(sys.argv[7]), int(sys.argv[8])
    servers = {"A": (pa, psutil.Process(pida)), "B": (pb, psutil.Process(pidb))}
    rate: dict[str, list[float]] = {"A": [], "B": []}
    lat: dict[str, list[float]] = {"A": [], "B": []}
    cpu: dict[str, list[float]] = {"A": [], "B": []}
    limits = httpx.Limits(max_connections=clients + 4)

    async def one(name: str, keep: bool) -> None:
        port, proc = servers[name]
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60, limits=limits) as http:
            got: list[float] = []
            c0, t0 = cpu_s(proc), time.perf_counter()
            drawn = await asyncio.gather(*[session(http, model, k, chunk, got) for k in range(clients)])
            wall, used = time.perf_counter() - t0, cpu_s(proc) - c0
        if keep:
            rate[name].append(sum(drawn) / wall)
            lat[name] += got
            cpu[name].append(used / len(got))

    for name in "AB":  # warm-up
        await one(name, False)
    for r in range(rounds):
        for name in "AB" if r % 2 == 0 else "BA":
            await one(name, True)
    for name in "AB":
        ls, each = sorted(lat[name]), ", ".join(f"{x:.0f}" for x in rate[name])
        print(
            f"{name}: {statistics.median(rate[name]):8.0f} tokens/s (rounds {each}), "
            f"chunk p50 {statistics.median(ls) * 1e3:.2f} ms, p90 {ls[int(0.9 * len(ls))] * 1e3:.2f} ms, "
            f"server CPU per chunk {statistics.median(cpu[name]) * 1e3:.2f} ms"
        )


if __name__ == "__main__":
    asyncio.run(main())
