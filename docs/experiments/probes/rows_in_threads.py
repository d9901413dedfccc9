"""Probe (lab material): one network pass over 16 rows on one thread, and as two chunks of 8 rows on two.

docs/experiments/rounds-and-serving.md, twenty-fourth session.  Rows are independent in the compiled pass
(csrc/s4d_block.c, NET), so chunks of rows may run on several threads (ctypes releases the GIL during
the call).  The shape is the served batch's: 16 rows, 64 steps, the 6-layer decoder of mnist-vssm's small
preset (width 64, 32 modes), random weights::

    .venv/bin/python docs/experiments/probes/rows_in_threads.py
"""

from __future__ import annotations

import timeit
from concurrent.futures import ThreadPoolExecutor

import torch

from vssm.model import native

H, N, L, T, OUT, B = 64, 32, 6, 64, 64, 16


def main() -> None:
    lib = native._load()
    assert lib is not None
    torch.manual_seed(0)
    pack = torch.randn(native._net_pack_size(L, H, N, OUT)) * 0.1
    x = torch.randn(B, T, H)
    h0 = torch.randn(B, L, H, N, dtype=torch.complex64) * 0.1
    out = torch.empty(B, L, H, N, dtype=torch.complex64)
    g, logits = torch.empty(B, T, H), torch.empty(B, T, OUT)
    es = x.element_size()

    def rows(lo: int, hi: int) -> None:  # rows lo..hi-1; x is overwritten, which the timing ignores
        lib.ssm_net_f32(
            hi - lo, H, N, T, L, OUT, T, x.data_ptr() + lo * T * H * es, pack.data_ptr(), 1e-5,
            h0.data_ptr() + lo * L * H * N * 2 * es, 2 * L * H * N, out.data_ptr() + lo * L * H * N * 2 * es,
            g.data_ptr() + lo * T * H * es, logits.data_ptr() + lo * T * OUT * es,
        )  # fmt: skip

    pool = ThreadPoolExecutor(1)

    def two() -> None:
        other = pool.submit(rows, 0, B // 2)
        rows(B // 2, B)
        other.result()

    for name, fn in [("one thread", lambda: rows(0, B)), ("two threads", two)] * 2:
        fn()
        best = min(timeit.repeat(fn, number=20, repeat=5)) / 20
        print(f"{name}: {best * 1e3:.2f} ms")


if __name__ == "__main__":
    main()
