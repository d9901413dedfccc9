"""Serving costs, measured with a real ``vssm serve`` on loopback and a real ``redis-server``.

For 1, 4, 16, 64 concurrent clients, each running a session chunk by chunk (64-token chunks),
with dynamic batching on and off: first-chunk and full-request latency (p50 / p99), throughput,
Redis read + write time per chunk (from the server's own metrics), and the server's overhead per
chunk over calling the model in process.  Model-time throughput of batching is measured in
process: one 64-token chunk for 1 row against a batch of 16 rows at different positions.
Then one server process against ``vssm serve --workers 2`` (both up, their levels taken by turns):
what a second worker process buys where one process's event loop holds the interpreter.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing as mp
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import psutil
import torch

from vssm import model
from vssm.model.presets import preset_config

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]
CHUNK = 64


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(url: str, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited ({proc.returncode}) before {url} answered")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise TimeoutError(url)


def _settle(pid: int, workers: int, timeout: float = 180) -> None:
    """Wait until a server's ``workers`` worker processes are up and idle: uvicorn's supervisor answers as soon
    as one worker has loaded the models, while another may still be loading them (then the first timed run
    would be one worker beside one busy loading, and count the loading as the server's CPU)."""
    proc, deadline = psutil.Process(pid), time.monotonic() + timeout
    before = None
    while time.monotonic() < deadline:
        up = workers == 1 or len(proc.children(recursive=True)) >= workers
        now = _tree_cpu_s(proc)
        if up and before is not None and now - before < 0.05:
            return
        before = now
        time.sleep(0.5)
    raise TimeoutError(f"the server's {workers} worker(s) did not settle in {timeout:.0f} s")


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))]


class _Stack:
    """redis-server + one ``vssm serve`` (``workers`` worker processes), torn down on exit."""

    def __init__(self, ckpt_dir: Path, batching: bool, threads: int, workers: int = 1) -> None:
        self.ckpt_dir, self.batching, self.threads, self.workers = ckpt_dir, batching, threads, workers
        self.procs: list[subprocess.Popen] = []

    def __enter__(self) -> _Stack:
        try:
            return self._start()
        except BaseException:
            self.__exit__()  # whatever started goes down with the failure
            raise

    def _start(self) -> _Stack:
        redis_bin = shutil.which("redis-server")
        if redis_bin is None:
            raise RuntimeError("redis-server is needed for the serving benchmark")
        self.redis_port = _free_port()
        self.procs.append(
            subprocess.Popen(
                [redis_bin, "--port", str(self.redis_port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
                stdout=subprocess.DEVNULL,
            )
        )
        self.port = _free_port()
        env = {
            **os.environ,
            "VSSM_BATCHING": str(self.batching).lower(),
            "VSSM_TORCH_THREADS": str(self.threads),
            "VSSM_MAX_IN_FLIGHT": "1024",
            "VSSM_LOG_LEVEL": "warning",
        }
        self.procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "vssm.server",
                    "serve",
                    "--port",
                    str(self.port),
                    "--checkpoints",
                    str(self.ckpt_dir),
                    "--redis-url",
                    f"redis://127.0.0.1:{self.redis_port}/0",
                    "--workers",
                    str(self.workers),
                ],
                cwd=ROOT,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        self.server_pid = self.procs[-1].pid
        self.url = f"http://127.0.0.1:{self.port}"
        _wait(self.url + "/ready", self.procs[-1])
        _settle(self.server_pid, self.workers)
        return self

    def __exit__(self, *exc: object) -> None:
        for p in reversed(self.procs):
            try:
                children = psutil.Process(p.pid).children(recursive=True)  # a supervisor's workers
            except psutil.NoSuchProcess:
                children = []
            p.terminate()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(10)
            for child in children:  # none outlives its supervisor, however that went
                with contextlib.suppress(psutil.NoSuchProcess):
                    child.kill()
        self.procs = []

    def store_totals(self) -> dict[str, tuple[float, float]]:
        """(seconds, calls) of the server's store reads and compare-and-sets so far (its /metrics)."""
        text = httpx.get(self.url + "/metrics").text
        out = {}
        for op in ("get", "cas"):
            s = re.search(rf'vssm_store_seconds_sum\{{op="{op}"\}} (\S+)', text)
            c = re.search(rf'vssm_store_seconds_count\{{op="{op}"\}} (\S+)', text)
            out[op] = (float(s.group(1)), float(c.group(1))) if s and c else (0.0, 0.0)
        return out


def _store_ms_per_chunk(before: dict[str, tuple[float, float]], after: dict[str, tuple[float, float]]) -> float:
    """Redis read + compare-and-set per chunk between two readings (each as the server awaited it)."""
    total = 0.0
    for op in ("get", "cas"):
        calls = after[op][1] - before[op][1]
        if calls:
            total += 1000 * (after[op][0] - before[op][0]) / calls
    return total


async def _client(http: httpx.AsyncClient, sid: str, chunks: int, results: dict[str, list[float]]) -> None:
    pos = 0
    for _ in range(chunks):
        t0 = time.perf_counter()
        first = None
        body = {"max_tokens": CHUNK, "expected_position": pos, "stream": True, "chunk_size": CHUNK}
        async with http.stream("POST", f"/v1/sessions/{sid}/generate", json=body) as r:
            r.raise_for_status()
            async for line in r.aiter_lines():
                if line.startswith("data: {") and first is None:
                    first = time.perf_counter() - t0
        if first is None:
            raise RuntimeError(f"session {sid}: the stream carried no chunk")
        results["full"].append(time.perf_counter() - t0)
        results["first"].append(first)
        pos += CHUNK


def _cpu_s(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return t.user + t.system


def _tree_cpu_s(proc: psutil.Process) -> float:
    """CPU seconds of a server and its worker processes (``--workers`` > 1: uvicorn's supervisor and its children)."""
    total = _cpu_s(proc)
    for child in proc.children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess):  # gone since the listing: its seconds went with it
            total += _cpu_s(child)
    return total


CLIENTS_PER_PROCESS = 16  # one asyncio + httpx process drives at most this many sessions


def _load_process(url: str, model_id: str, seeds: list[int], chunks: int, ready: Any, go: Any, out: Any) -> None:
    """One load-generator process: make its sessions, signal ``ready``, wait for ``go``, run them,
    and put its latencies, wall time and own CPU seconds on ``out``."""
    results: dict[str, list[float]] = {"full": [], "first": []}
    me = psutil.Process()

    async def main() -> tuple[float, float]:
        limits = httpx.Limits(max_connections=len(seeds), max_keepalive_connections=len(seeds))
        async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as http:
            made = await asyncio.gather(
                *[http.post("/v1/sessions", json={"model": model_id, "seed": seed}) for seed in seeds]
            )
            sids = [r.raise_for_status().json()["id"] for r in made]
            ready.release()
            await asyncio.get_running_loop().run_in_executor(None, go.wait)
            cpu0, t0 = _cpu_s(me), time.perf_counter()
            await asyncio.gather(*[_client(http, sid, chunks, results) for sid in sids])
            return time.perf_counter() - t0, _cpu_s(me) - cpu0

    try:
        wall, cpu = asyncio.run(main())
        out.put((results, wall, cpu, None))
    except Exception as exc:  # reported by the parent, which must not wait forever
        ready.release()
        out.put((results, 0.0, 0.0, repr(exc)))


def _run_level(url: str, model_id: str, clients: int, chunks: int, server_pid: int) -> dict[str, float]:
    """``clients`` concurrent sessions, each ``chunks`` streamed chunks; sessions are made before the clock starts.

    The clients run in separate processes of at most ``CLIENTS_PER_PROCESS`` sessions each: one
    asyncio + httpx process driving 64 streams was itself the bottleneck (its requests waited
    seconds before the server saw them, while the server's own request timer stayed under 0.5 s:
    p99 / p50 of 5.7 with one process, 1.8 with four).  CPU seconds of the server and of the
    load generators are read around the timed part: on a 2-core machine they share the cores.
    """
    ctx = mp.get_context("spawn")
    groups = [list(range(i, min(i + CLIENTS_PER_PROCESS, clients))) for i in range(0, clients, CLIENTS_PER_PROCESS)]
    ready, go, out = ctx.Semaphore(0), ctx.Event(), ctx.Queue()
    procs = [
        ctx.Process(target=_load_process, args=(url, model_id, [1000 + i for i in g], chunks, ready, go, out))
        for g in groups
    ]
    for p in procs:
        p.start()
    for _ in procs:
        if not ready.acquire(timeout=120):
            raise TimeoutError("a load-generator process did not make its sessions")
    server = psutil.Process(server_pid)
    cpu0, t0 = _tree_cpu_s(server), time.perf_counter()
    go.set()
    parts = [out.get(timeout=600) for _ in procs]
    wall = time.perf_counter() - t0
    server_cpu = _tree_cpu_s(server) - cpu0
    for p in procs:
        p.join(30)
    errors = [e for *_, e in parts if e]
    if errors:
        raise RuntimeError(f"load generator failed: {errors[0]}")
    full = [x for r, *_ in parts for x in r["full"]]
    first = [x for r, *_ in parts for x in r["first"]]
    client_cpu = sum(c for _, _, c, _ in parts)
    n = clients * chunks
    return {
        "clients": clients,
        "chunks_per_client": chunks,
        "load_processes": len(procs),
        "wall_s": wall,
        "tokens_per_s": n * CHUNK / wall,
        "full_p50_ms": 1000 * _pct(full, 0.5),
        "full_p99_ms": 1000 * _pct(full, 0.99),
        "first_chunk_p50_ms": 1000 * _pct(first, 0.5),
        "first_chunk_p99_ms": 1000 * _pct(first, 0.99),
        "server_cpu_ms_per_chunk": 1000 * server_cpu / n,
        "client_cpu_ms_per_chunk": 1000 * client_cpu / n,
    }


# Runs of every level (quick / full), taken by turns.  One run of 16 clients lasts about 0.4 s: on a
# 2-core machine whose load generator shares the cores, the 64 / 16 throughput ratio of single runs of
# the same code read 0.79 to 1.05 (docs/experiments/rounds-and-serving.md, thirty-second session).
LEVEL_RUNS = {True: 1, False: 3}


def _median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """A level's figures: those of its run of median throughput (the lower middle of an even number),
    with every run's throughput and p99 / p50 beside them."""
    ranked = sorted(runs, key=lambda r: r["tokens_per_s"])
    return {
        **ranked[(len(ranked) - 1) // 2],
        "runs": len(runs),
        "runs_tokens_per_s": [r["tokens_per_s"] for r in runs],
        "runs_p99_over_p50": [r["full_p99_ms"] / r["full_p50_ms"] for r in runs],
    }


OVERHEAD_REPEATS = {True: 1, False: 6}  # quick / full: single-client runs for the server's overhead
SESSION_CHUNKS = 12  # 64-token chunks in one 784-token MNIST session


def _overhead(stack: _Stack, m: model.SequenceModel, repeats: int, chunks: int) -> dict[str, Any]:
    """The server's own cost per chunk at one client: the p50 of a session's chunks end to end
    minus the median in-process chunk, measured back to back ``repeats`` times and the median taken.

    One run of a few chunks, against a model time measured minutes earlier, moved by 2x between
    two runs of the same code (3.8 and 7.5 ms on a virtual machine whose load comes and goes):
    each difference here is of two medians taken within seconds of each other.
    """
    diffs, p50s, models = [], [], []
    for _ in range(repeats):
        _, model_median = model_time(m, 1, 10)
        row = _run_level(stack.url, "mnist-vssm", 1, chunks, stack.server_pid)
        p50s.append(row["full_p50_ms"])
        models.append(1000 * model_median)
        diffs.append(row["full_p50_ms"] - 1000 * model_median)
    return {
        "repeats": repeats,
        "chunks_per_repeat": chunks,
        "request_p50_ms": p50s,
        "model_median_ms": models,
        "per_repeat_ms": diffs,
        "median_ms": statistics.median(diffs),
    }


@torch.inference_mode()
def model_time(m: model.SequenceModel, rows: int, repeats: int) -> tuple[float, float]:
    """Best and median seconds for one 64-token chunk of ``rows`` sessions at different positions,
    state bytes included."""
    states = []
    for i in range(rows):
        s = m.start(torch.zeros(1, 0, dtype=torch.long), i)
        _, s = m.generate(s, CHUNK * (1 + i % 4))
        states.append(s)
    blobs = [s.to_bytes() for s in states]
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        batch, sizes = model.GenState.from_bytes_many(blobs)  # as the server's batcher reads and writes them
        _, nxt = m.generate(batch, CHUNK)
        nxt.to_bytes_split(sizes)
        runs.append(time.perf_counter() - t0)
    return min(runs), statistics.median(runs)


WORKER_LEVELS = {True: (4,), False: (16, 64)}  # quick / full: client counts of the workers comparison


def _workers(ckpt_dir: Path, threads: int, quick: bool, chunks: int) -> dict[str, Any]:
    """One server process against two worker processes (``vssm serve --workers 2``), batching on, both stacks up
    and their levels taken by turns, each level ``LEVEL_RUNS`` times: the throughput a second process buys.

    One process is bound by its event loop's Python, which holds the interpreter most of the time
    (docs/experiments/rounds-and-serving.md, thirty-second session); a second process has its own.
    On a machine whose load generator shares the cores the second worker competes with it too."""
    levels, counts = WORKER_LEVELS[quick], (1, 2)
    runs: dict[tuple[int, int], list[dict[str, Any]]] = {(w, c): [] for w in counts for c in levels}
    with _Stack(ckpt_dir, True, threads) as one, _Stack(ckpt_dir, True, threads, workers=2) as two:
        stacks = dict(zip(counts, (one, two), strict=True))
        for stack in stacks.values():  # warm-up: the first requests (connections, first calls) go untimed
            _run_level(stack.url, "mnist-vssm", 8, 1, stack.server_pid)
        for _ in range(LEVEL_RUNS[quick]):
            for c in levels:
                for w, stack in stacks.items():
                    runs[w, c].append(_run_level(stack.url, "mnist-vssm", c, chunks, stack.server_pid))
    rows = []
    for c in levels:
        one, two = _median_run(runs[1, c]), _median_run(runs[2, c])  # every run's throughput in run order
        pairs = zip(one["runs_tokens_per_s"], two["runs_tokens_per_s"], strict=True)
        rows.append(
            {
                "clients": c,
                "one": one,
                "two": two,
                "two_over_one": two["tokens_per_s"] / one["tokens_per_s"],
                "runs_two_over_one": [b / a for a, b in pairs],
            }
        )
    return {"worker_counts": list(counts), "levels": rows}


def random_checkpoint(ckpt_dir: Path) -> model.SequenceModel:
    """The served model of the serving part when no trained one is given: the small mnist preset's VSSM,
    seeded random weights, written to ``ckpt_dir / "mnist-vssm.safetensors"`` and returned."""
    torch.manual_seed(0)
    m = model.build_model("vssm", preset_config("mnist", "vssm", "small"))
    model.save_checkpoint(m, ckpt_dir / "mnist-vssm.safetensors", extra={"dataset": "mnist"})
    return m


def run(quick: bool = False, threads: int = 1, model_dir: Path | None = None) -> dict[str, Any]:
    """The serving part of the benchmark; ``model_dir`` may hold a trained mnist-vssm, else random weights."""
    torch.set_num_threads(threads)
    levels = (1, 4) if quick else (1, 4, 16, 64)
    chunks = 2 if quick else SESSION_CHUNKS
    with tempfile.TemporaryDirectory() as tmp:
        ckpt_dir = Path(tmp)
        src = model_dir / "mnist-vssm.safetensors" if model_dir else None
        if src is not None and src.exists():
            shutil.copy(src, ckpt_dir / "mnist-vssm.safetensors")
        else:
            random_checkpoint(ckpt_dir)
        m = model.load_checkpoint(ckpt_dir / "mnist-vssm.safetensors").freeze()  # as the server holds it
        repeats = 3 if quick else 10
        alone, alone_median = model_time(m, 1, repeats)
        batch16, _ = model_time(m, 16, repeats)
        out: dict[str, Any] = {
            "model": "mnist-vssm (small preset)",
            "chunk_tokens": CHUNK,
            "threads": threads,
            "model_time": {
                "alone_ms": 1000 * alone,
                "alone_median_ms": 1000 * alone_median,
                "batch16_ms": 1000 * batch16,
                "batch16_per_request_ms": 1000 * batch16 / 16,
                "throughput_ratio": alone * 16 / batch16,
            },
            "levels": {},
        }
        # both stacks up, each level run on one and then the other by turns, so that batching on and off sit
        # side by side: run one after the other, the on / off ratio of two runs read 1.77 and 1.24 on one
        # host half an hour apart (docs/experiments/rounds-and-serving.md, thirty-sixth session)
        with _Stack(ckpt_dir, True, threads) as on, _Stack(ckpt_dir, False, threads) as off:
            stacks = {"batching_on": on, "batching_off": off}
            for stack in stacks.values():
                _run_level(stack.url, "mnist-vssm", 1, 1, stack.server_pid)  # warm-up
            runs: dict[tuple[str, int], list[dict[str, Any]]] = {(k, c): [] for k in stacks for c in levels}
            for i in range(LEVEL_RUNS[quick]):  # the levels by turns, so that their runs sit side by side
                for c in levels:
                    for key, stack in stacks.items() if i % 2 == 0 else reversed(stacks.items()):
                        before = stack.store_totals()
                        row = _run_level(stack.url, "mnist-vssm", c, chunks, stack.server_pid)
                        # session creation is one "create", so the reads and CASes counted are the chunks'
                        row["store_ms_per_chunk"] = _store_ms_per_chunk(before, stack.store_totals())
                        runs[key, c].append(row)
            for key in stacks:
                out["levels"][key] = [_median_run(runs[key, c]) for c in levels]
            out["overhead"] = _overhead(on, m, OVERHEAD_REPEATS[quick], chunks)
        out["workers"] = _workers(ckpt_dir, threads, quick, chunks)
        single = out["levels"]["batching_on"][0]
        out["server_overhead_ms_per_chunk"] = out["overhead"]["median_ms"]
        out["store_ms_per_chunk"] = single["store_ms_per_chunk"]  # at 1 client: Redis itself, not queueing
        by_level = {r["clients"]: r for r in out["levels"]["batching_on"]}
        off = {r["clients"]: r for r in out["levels"]["batching_off"]}
        top = 4 if quick else 16
        out["end_to_end_batching_ratio"] = by_level[top]["tokens_per_s"] / off[top]["tokens_per_s"]
        pairs = zip(by_level[top]["runs_tokens_per_s"], off[top]["runs_tokens_per_s"], strict=True)
        out["runs_end_to_end_batching_ratio"] = [a / b for a, b in pairs]  # each run's, side by side
        out["ratio_at_clients"] = top
    return out
