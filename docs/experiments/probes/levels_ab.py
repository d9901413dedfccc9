"""Probe (lab material): the benchmark's serving levels under two builds of the server, side by side.

docs/experiments/rounds-and-serving.md, thirty-fifth session.  Starts four stacks (``bench.serving._Stack``:
redis-server and one server each, random weights of the small mnist preset, one torch thread): build A (the
code on the PYTHONPATH given, e.g. a worktree of an older commit beside a directory ``vssm`` whose ``model`` and
``server`` link to it) and build B (this checkout), each with batching on and off.  Then runs the client
levels given, by turns over the four stacks (the order rotating each time), ``rounds`` times, and prints each
stack's median throughput per level and the batched / unbatched ratio of each build::

    PYTHONPATH=.:docs/experiments/probes .venv/bin/python docs/experiments/probes/levels_ab.py /tmp/ab 1,16 3
"""

from __future__ import annotations

import contextlib
import os
import statistics
import sys
import tempfile
from pathlib import Path

from bench import serving


def main(old_path: str, levels: list[int], rounds: int) -> None:
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stacks:
        ckpt = Path(tmp)
        serving.random_checkpoint(ckpt)
        running = {}
        for build in ("A", "B"):
            before = os.environ.get("PYTHONPATH")
            if build == "A":  # the server process inherits it: the older code is found first
                os.environ["PYTHONPATH"] = old_path + (os.pathsep + before if before else "")
            try:
                for batching in (True, False):
                    running[build, batching] = stacks.enter_context(serving._Stack(ckpt, batching, 1))
            finally:
                if before is None:
                    os.environ.pop("PYTHONPATH", None)
                else:
                    os.environ["PYTHONPATH"] = before
        for stack in running.values():  # warm-up: connections, first calls
            serving._run_level(stack.url, "mnist-vssm", 4, 2, stack.server_pid)
        got: dict[tuple[str, bool, int], list[float]] = {(*k, c): [] for k in running for c in levels}
        keys = list(running)
        for r in range(rounds):
            order = keys[r % len(keys) :] + keys[: r % len(keys)]
            for clients in levels:
                for key in order:
                    stack = running[key]
                    row = serving._run_level(stack.url, "mnist-vssm", clients, serving.SESSION_CHUNKS, stack.server_pid)
                    got[(*key, clients)].append(row["tokens_per_s"])
        for clients in levels:
            med = {k: statistics.median(got[(*k, clients)]) for k in running}
            line = ", ".join(f"{b} {'on' if on else 'off'} {med[b, on]:,.0f}" for b, on in running)
            ratios = ", ".join(f"{b} on / off {med[b, True] / med[b, False]:.2f}" for b in ("A", "B"))
            gains = ", ".join(f"{'on' if o else 'off'} B / A {med['B', o] / med['A', o]:.2f}" for o in (True, False))
            print(f"{clients:3d} clients, tokens/s (medians of {rounds}): {line}; {ratios}; {gains}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], [int(c) for c in sys.argv[2].split(",")], int(sys.argv[3]) if len(sys.argv) > 3 else 3)
