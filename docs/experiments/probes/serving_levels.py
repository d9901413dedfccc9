"""Probe (lab material): the benchmark's serving levels, one run each, with what the server's own
metrics and process say about each: rows a model call, model time a call and a chunk, Redis time a
chunk as awaited, the server's user and system CPU and its context switches a chunk.

docs/experiments/rounds-and-serving.md, thirty-second session.  It starts redis-server and one
server with batching on (``bench.serving._Stack``, random weights of the small mnist preset) and runs
the levels in the order given, e.g. 16 and 64 clients by turns, three times, full sessions::

    PYTHONPATH=. .venv/bin/python docs/experiments/probes/serving_levels.py 16,64,16,64,16,64 12
"""

from __future__ import annotations

import re
import sys
import tempfile
from pathlib import Path

import httpx
import psutil

from bench import serving

METRICS = {"vssm_batch_rows": "rows", "vssm_model_seconds": "model", "vssm_job_seconds": "job"}


def metrics(url: str) -> dict[str, float]:
    """Sums and counts of the server's batch histograms, over its models."""
    text = httpx.get(url + "/metrics").text
    out = {}
    for name, key in METRICS.items():
        for part in ("sum", "count"):
            found = re.findall(rf"^{name}_{part}\{{[^}}]*\}} (\S+)", text, re.M)
            out[f"{key}_{part}"] = sum(float(x) for x in found)
    return out


def main() -> None:
    levels = [int(c) for c in sys.argv[1].split(",")]
    chunks = int(sys.argv[2]) if len(sys.argv) > 2 else serving.SESSION_CHUNKS
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp)
        serving.random_checkpoint(ckpt)
        with serving._Stack(ckpt, True, 1) as stack:
            serving._run_level(stack.url, "mnist-vssm", 1, 1, stack.server_pid)  # warm-up
            server = psutil.Process(stack.server_pid)
            for clients in levels:
                cpu0, cs0, m0, st0 = (
                    server.cpu_times(),
                    server.num_ctx_switches(),
                    metrics(stack.url),
                    stack.store_totals(),
                )
                row = serving._run_level(stack.url, "mnist-vssm", clients, chunks, stack.server_pid)
                cpu1, cs1, m1, st1 = (
                    server.cpu_times(),
                    server.num_ctx_switches(),
                    metrics(stack.url),
                    stack.store_totals(),
                )
                n = clients * chunks
                d = {k: m1[k] - m0[k] for k in m1}
                calls = max(d["rows_count"], 1)
                print(
                    f"{clients:3d} clients: {row['tokens_per_s']:8,.0f} tokens/s, p50 / p99 "
                    f"{row['full_p50_ms']:.1f} / {row['full_p99_ms']:.1f} ms; {d['rows_sum'] / calls:.1f} rows a call, "
                    f"model {1000 * d['model_sum'] / calls:.1f} ms a call, {1000 * d['model_sum'] / n:.2f} a chunk; "
                    f"Redis {serving._store_ms_per_chunk(st0, st1):.1f} ms a chunk; server CPU a chunk "
                    f"{1000 * (cpu1.user - cpu0.user) / n:.2f} user + {1000 * (cpu1.system - cpu0.system) / n:.2f} "
                    f"system ms, {(cs1.voluntary - cs0.voluntary) / n:.2f} + "
                    f"{(cs1.involuntary - cs0.involuntary) / n:.2f} switches; "
                    f"load generator {row['client_cpu_ms_per_chunk']:.2f} ms",
                    flush=True,
                )


if __name__ == "__main__":
    main()
