"""Probe (lab material): block sampling's compiled rounds (csrc/rounds.c) under two builds, side by side.

docs/experiments/rounds-and-serving.md, thirty-fifth session.  Build A is the repository's sources, build B a
copy of ``model/csrc`` in the directory given (``kernel_ab.py``'s way of holding both).  Times, interleaved and
alternating which build goes first, one thread, medians of REPEATS:
- the benchmark's rounds (``bench/rounds.py``: the ``mnist-vssm-blocks`` shapes, random weights, batch 1,
  position 64, a call of n tokens at block size n, resumable);
- whole unprompted 784-token images of the bundled ``mnist-vssm-blocks`` and ``mnist-vssm-split`` at several
  block sizes (not resumable, as the benchmark's images), and a resumable 64-token chunk at their block 28.
Every call's tokens, and a resumable call's state tensors, must be the same bits under both builds.  Both builds
run under the repository's Python, so build B must take the arguments it passes: since 0deb633 (a call that
stops inside a block, as the 64-token chunks do) a build from before compares only the other calls::

    git show HEAD~1:model/csrc/rounds.c > /tmp/old/rounds.c ...   # (or: cp -r model/csrc /tmp/old, then edit)
    PYTHONPATH=.:docs/experiments/probes .venv/bin/python docs/experiments/probes/rounds_ab.py /tmp/old [REPEATS]
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from kernel_ab import two_builds

from bench.common import build_models, matched_configs, with_block_vssm
from vssm import model
from vssm.model import native


def cases() -> dict[str, Callable[[], tuple[torch.Tensor, model.GenState | None]]]:
    out: dict[str, Callable[[], tuple[torch.Tensor, model.GenState | None]]] = {}
    vssm = with_block_vssm(build_models(matched_configs(), 1088))["vssm"]
    prompt = torch.randint(0, vssm.vocab_size, (1, 64), generator=torch.Generator().manual_seed(0))
    state = vssm.start(prompt, [0])
    for n in (1, 2, 4, 8, 16, 32, 64):
        out[f"bench round n={n}"] = lambda n=n: vssm.generate(state, n, block_size=n, resumable=True)
    for name in ("mnist-vssm-blocks", "mnist-vssm-split"):
        m = model.load_checkpoint(f"checkpoints/{name}.safetensors").freeze()
        empty = m.start(torch.zeros(1, 0, dtype=torch.long), [0])
        for c in (2, 4, 8, 16, 28):
            image = lambda m=m, s=empty, c=c: m.generate(s, 784, block_size=c, resumable=False)  # noqa: E731
            out[f"{name} image, block {c}"] = image
        _, mid = m.generate(empty, 128, block_size=28)
        out[f"{name} 64-token chunk at block 28"] = lambda m=m, s=mid: m.generate(s, 64, block_size=28)
    return out


def main(variant: Path, repeats: int) -> None:
    torch.set_num_threads(1)
    lib_a, lib_b = two_builds(variant)
    calls = cases()
    times: dict[tuple[str, str], list[float]] = {(k, b): [] for k in calls for b in "AB"}
    first: dict[tuple[str, str], tuple[torch.Tensor, model.GenState | None]] = {}
    with torch.inference_mode():
        for i in range(repeats):
            for key, fn in calls.items():
                for build, lib in (("A", lib_a), ("B", lib_b)) if (i % 2 == 0) else (("B", lib_b), ("A", lib_a)):
                    native._lib = lib
                    t0 = time.perf_counter()
                    got = fn()
                    times[key, build].append(time.perf_counter() - t0)
                    first.setdefault((key, build), got)
    for key in calls:
        (ta, sa), (tb, sb) = first[key, "A"], first[key, "B"]
        same = torch.equal(ta, tb) and (sa is None) == (sb is None)
        if sa is not None and sb is not None:
            same = same and all(torch.equal(sa[k], sb[k]) for k in sa.tensors)
        a, b = statistics.median(times[key, "A"]), statistics.median(times[key, "B"])
        print(f"{key:44s} A {1e3 * a:8.3f} ms  B {1e3 * b:8.3f} ms  A/B {a / b:.3f}  same bits: {same}", flush=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 41)
