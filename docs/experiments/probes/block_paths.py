"""Probe (lab material): which block sizes and session chunks fall off the compiled paths, by their time.

docs/experiments/rounds-and-serving.md, thirty-sixth session.  Bundled checkpoints, one thread, medians.
Three measurements, each a subcommand:

- ``sweep CKPT T B SIZES``: a whole unprompted sequence of T tokens at batch B for each block size (0: one
  pass), not kept.  A block size whose time stands out from its neighbours' is one that leaves the
  compiled rounds (blocks 33-64 did, before 4ab44a1).
- ``kept CKPT BLOCK CHUNKS``: one call of each chunk size from position 64, kept (resumable) and not: what
  keeping the state costs over drawing the tokens.
- ``session CKPT T SIZES CHUNKS``: a session of T tokens in chunks at each block size, the state serialised and
  read back between chunks as the server stores it.
- ``mixed CKPT BLOCK CHUNK ROWS``: a batch of ROWS sessions at positions 0, CHUNK, 2 CHUNK, ... (as a server's
  batch of sessions in CHUNK-token chunks meets them: at different places in their blocks), one CHUNK-token kept
  call for the batch, beside the rows drawn one at a time (thirty-eighth session).

Run it under two builds by turns for a side-by-side comparison (an older build on the PYTHONPATH first)::

    .venv/bin/python docs/experiments/probes/block_paths.py sweep mnist-vssm 784 1 32,40,48,64,65
    .venv/bin/python docs/experiments/probes/block_paths.py kept mnist-vssm-prior16 16 10,16,64
    .venv/bin/python docs/experiments/probes/block_paths.py session mnist-vssm-prior 784 28 10,64,100
    .venv/bin/python docs/experiments/probes/block_paths.py mixed mnist-vssm-prior 28 64 8
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from vssm import model

CHECKPOINTS = Path(__file__).resolve().parents[3] / "checkpoints"


def median_ms(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def ints(arg: str) -> list[int]:
    return [int(x) for x in arg.split(",")]


def sweep(m: model.SequenceModel, T: int, batch: int, sizes: list[int]) -> None:
    start = m.start(torch.zeros(batch, 0, dtype=torch.long), list(range(batch)))
    for c in sizes:
        ms = median_ms(lambda c=c: m.generate(start, T, block_size=c or None, resumable=False), 9)
        print(f"block {c:4d}: {ms:8.2f} ms", flush=True)


def kept(m: model.SequenceModel, block: int, chunks: list[int]) -> None:
    state = m.generate(m.start(torch.zeros(1, 0, dtype=torch.long), [0]), 64, block_size=block)[1]
    for n in chunks:
        for resumable in (False, True):
            ms = median_ms(lambda n=n, r=resumable: m.generate(state, n, block_size=block, resumable=r), 200)
            print(f"{n} tokens, kept {resumable}: {ms:.3f} ms", flush=True)


def session(m: model.SequenceModel, T: int, sizes: list[int], chunks: list[int]) -> None:
    def run(c: int, chunk: int, seed: int) -> None:
        state, done = m.start(torch.zeros(1, 0, dtype=torch.long), [seed]), 0
        while done < T:
            k = min(chunk, T - done)
            state = model.GenState.from_bytes(m.generate(state, k, block_size=c or None)[1].to_bytes())
            done += k

    for c in sizes:
        row = [f"chunks of {k}: {median_ms(lambda c=c, k=k: run(c, k, 0), 5):7.2f} ms" for k in chunks]
        print(f"block {c:4d}: " + ", ".join(row), flush=True)


def mixed(m: model.SequenceModel, block: int, chunk: int, rows: int) -> None:
    empty = [m.start(torch.zeros(1, 0, dtype=torch.long), [k]) for k in range(rows)]
    states = [m.generate(e, k * chunk, block_size=block)[1] if k else e for k, e in enumerate(empty)]
    batch = model.GenState.cat(states)
    together = median_ms(lambda: m.generate(batch, chunk, block_size=block), 30)
    alone = median_ms(lambda: [m.generate(s, chunk, block_size=block) for s in states], 30)
    phases = sorted({k * chunk % block for k in range(rows)}) if block else [0]
    print(
        f"{rows} rows at {len(phases)} phases of block {block}, {chunk}-token kept chunk: batched {together:.2f} ms, "
        f"one at a time {alone:.2f} ms ({alone / together:.2f}x)",
        flush=True,
    )


if __name__ == "__main__":
    torch.set_num_threads(1)
    what, name, *args = sys.argv[1:]
    m = model.load_checkpoint(CHECKPOINTS / f"{name}.safetensors").freeze()  # as the server holds it
    with torch.inference_mode():
        if what == "sweep":
            sweep(m, int(args[0]), int(args[1]), ints(args[2]))
        elif what == "mixed":
            mixed(m, *(int(a) for a in args))
        elif what == "kept":
            kept(m, int(args[0]), ints(args[1]))
        else:
            session(m, int(args[0]), ints(args[1]), ints(args[2]))
