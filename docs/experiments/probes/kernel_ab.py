"""Probe (lab material): two builds of the C kernels side by side in one process, interleaved.

docs/experiments/blocks.md, twenty-fourth session.  Build A is the repository's sources; build B is a
copy of ``model/csrc`` (edited by hand) in the directory given.  Each repeat times a bundled AR-SSM
image and a bundled ``mnist-vssm-prior`` image at block 28 under A, then both under B (the order
alternating), one thread, so each VSSM call follows an AR-SSM call as in the benchmark's pair.  Another
bundled VSSM and its block size may follow (thirtieth session: ``mnist-vssm-prior16 16``)::

    cp -r model/csrc /tmp/variant && $EDITOR /tmp/variant/latent_prior.c
    .venv/bin/python docs/experiments/probes/kernel_ab.py /tmp/variant [BATCH] [REPEATS] [VSSM BLOCK]
"""

from __future__ import annotations

import ctypes
import statistics
import sys
import time
from pathlib import Path

import torch

from vssm import model
from vssm.model import native


def two_builds(variant: Path) -> tuple[ctypes.CDLL, ctypes.CDLL]:
    """Build A (the repository's sources, loaded first) and build B (the same entry points from the copied
    sources in ``variant``); ``native._lib`` is B's afterwards: a probe sets it to the build each call runs."""
    lib_a = native._load()
    assert lib_a is not None
    native._tried, native._lib = False, None  # build B: the same entry points from the copied sources
    native.SOURCES = [variant / p.name for p in native.SOURCES]
    native.HEADERS = [variant / p.name for p in native.HEADERS]
    lib_b = native._load()
    assert lib_b is not None and lib_b is not lib_a
    return lib_a, lib_b


def main(variant: Path, batch: int, repeats: int, name: str = "mnist-vssm-prior", block: int = 28) -> None:
    torch.set_num_threads(1)
    lib_a, lib_b = two_builds(variant)
    ar = model.load_checkpoint("checkpoints/mnist-ar-ssm.safetensors").freeze()  # as the benchmark holds them
    m = model.load_checkpoint(f"checkpoints/{name}.safetensors").freeze()
    empty = torch.zeros(batch, 0, dtype=torch.long)
    sa, sv = ar.start(empty, list(range(batch))), m.start(empty, list(range(batch)))
    calls = {
        "ar": lambda: ar.generate(sa, 784, resumable=False),
        "vssm": lambda: m.generate(sv, 784, block_size=block, resumable=False),
    }
    libs = {"A": lib_a, "B": lib_b}
    runs: dict[tuple[str, str], list[float]] = {(k, f): [] for k in libs for f in calls}
    with torch.no_grad():
        for lib in libs.values():  # warm-up
            native._lib = lib
            for fn in calls.values():
                fn()
        for i in range(repeats):
            for k in "AB" if i % 2 == 0 else "BA":
                native._lib = libs[k]
                for f, fn in calls.items():
                    t0 = time.perf_counter()
                    fn()
                    runs[(k, f)].append(time.perf_counter() - t0)
    med = {key: statistics.median(v) for key, v in runs.items()}
    for k in libs:
        a, v = med[(k, "ar")], med[(k, "vssm")]
        print(f"{k}: AR-SSM {a * 1e3:.2f} ms, VSSM {v * 1e3:.3f} ms (median of {repeats}), ratio {a / v:.2f}x")
    ratio = {f: med[("B", f)] / med[("A", f)] for f in calls}
    print(f"B / A: AR-SSM {ratio['ar']:.3f}, VSSM {ratio['vssm']:.3f}")


if __name__ == "__main__":
    args = sys.argv[1:]
    rest = (args[3], int(args[4])) if len(args) > 4 else ()
    main(Path(args[0]), int(args[1]) if len(args) > 1 else 1, int(args[2]) if len(args) > 2 else 15, *rest)
