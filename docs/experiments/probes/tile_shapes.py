"""Probe (lab material): LINEAR's register tiles (csrc/s4d_block.c) at other shapes, on this host's vectors.

docs/experiments/rounds-and-serving.md, forty-fourth session.  ``build`` copies ``model/csrc`` once per shape
``RxV`` with that shape's ``TILE_R`` and ``TILE_V`` in the branch this CPU compiles (AVX-512 or not) and builds each
into ``OUT/RxV.so``; ``time`` loads one build (``native.kernel_path`` pointed at it) and prints one JSON line:
``linear_rows_f32``'s GFLOP/s at three shapes and bundled models' 784-token generation at batch 1 and 32, in ms,
the best of a few calls each.  Run the builds by turns, a process each, so that a slow spell of the host falls
on all of them::

    PYTHONPATH=. .venv/bin/python docs/experiments/probes/tile_shapes.py build /tmp/tiles 4x2 6x2
    for r in 1 2 3; do for v in 4x2 6x2; do echo -n "$v "; \\
        PYTHONPATH=. .venv/bin/python docs/experiments/probes/tile_shapes.py time /tmp/tiles/$v.so; done; done

For two builds side by side in one process use ``probes/kernel_ab.py`` with a copied ``model/csrc``.
"""

from __future__ import annotations

import ctypes
import json
import re
import shutil
import sys
import time
from pathlib import Path

import torch

from vssm import model
from vssm.model import native

CHECKPOINTS = Path(__file__).resolve().parents[3] / "checkpoints"
SHAPES = ((784, 64, 128), (32, 64, 128), (264, 96, 192))  # R x K x M: an image's rows, a batch's, a wide product
MODELS = ("mnist-vssm", "mnist-ar-ssm", "mnist-vssm-prior16", "mnist-vrnn")


def build(out: Path, shapes: list[str]) -> None:
    branch = "__AVX512F__" if native.vector_bits() == 512 else "__AVX__"
    for shape in shapes:
        rows, vectors = map(int, shape.split("x"))
        src = out / f"src_{shape}"
        shutil.rmtree(src, ignore_errors=True)
        src.mkdir(parents=True)
        for f in [*native.SOURCES, *native.HEADERS]:
            shutil.copy(f, src / f.name)
        path = src / "s4d_block.c"
        text = path.read_text()
        # the TILE_R / TILE_V pair in this CPU's branch of the vector-width #if
        head, _, rest = text.partition(f"defined({branch})")
        pair = f"#define TILE_R {rows}\n#define TILE_V {vectors}"
        rest, n = re.subn(r"#define TILE_R \d+[^\n]*\n#define TILE_V \d+", pair, rest, count=1)
        assert n == 1, "no TILE_R / TILE_V pair after the branch"
        path.write_text(head + f"defined({branch})" + rest)
        saved = native.SOURCES
        native.SOURCES = [src / f.name for f in saved]
        try:
            native._build(native._compiler(), native.FMA, str(out / f"{shape}.so"))
        finally:
            native.SOURCES = saved
        print("built", out / f"{shape}.so")


def timings(so: Path) -> dict[str, float]:
    native.kernel_path = lambda: so  # type: ignore[assignment]
    torch.set_num_threads(1)
    lib = native._load()
    assert lib is not None, f"{so} did not load"
    fn = lib.linear_rows_f32
    fn.argtypes = [ctypes.c_long] * 3 + [ctypes.c_void_p] * 4
    out: dict[str, float] = {}
    for R, K, M in SHAPES:
        a, w, b, o = torch.randn(R, K), torch.randn(K, M), torch.randn(M), torch.empty(R, M)
        args = (R, K, M, a.data_ptr(), w.data_ptr(), b.data_ptr(), o.data_ptr())
        for _ in range(50):
            fn(*args)
        runs = []
        for _ in range(7):
            t0 = time.perf_counter()
            for _ in range(100):
                fn(*args)
            runs.append((time.perf_counter() - t0) / 100)
        out[f"linear {R}x{K}x{M} GF/s"] = round(2 * R * K * M / min(runs) / 1e9, 1)
    with torch.inference_mode():
        for name in MODELS:
            m = model.load_checkpoint(CHECKPOINTS / f"{name}.safetensors").freeze()
            for B in (1, 32):
                runs = []
                for _ in range(5 if B == 32 else 9):
                    s = m.start(torch.zeros(B, 0, dtype=torch.long), list(range(B)))
                    t0 = time.perf_counter()
                    m.generate(s, 784, resumable=False)
                    runs.append(time.perf_counter() - t0)
                out[f"{name} B{B} ms"] = round(1000 * min(runs), 2)
    return out


if __name__ == "__main__":
    if sys.argv[1] == "build":
        build(Path(sys.argv[2]), sys.argv[3:])
    else:
        print(json.dumps(timings(Path(sys.argv[2]))))
