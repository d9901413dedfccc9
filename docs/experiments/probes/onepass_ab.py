"""Probe (lab material): a one-pass call that keeps no state, through the compiled rounds' block 0 (new) or
through ``VSSM._piece`` (old), both in one process, interleaved with the AR-SSM as the benchmark times them.

docs/experiments/rounds-and-serving.md, forty-fifth session.  ``KIND`` is ``image`` (the benchmark's random-weight
mnist shapes, 784 tokens) or a text recipe (``shakespeare-vssm``: its shapes beside the text AR-SSM's, 256 bytes);
the old path is the same code with the compiled block 0 refused for a call that keeps no state.  Medians of ``N``
rounds of the three calls, one thread, unprompted::

    PYTHONPATH=. .venv/bin/python docs/experiments/probes/onepass_ab.py KIND N [BATCH]
"""

from __future__ import annotations

import gc
import statistics
import sys
import time
from collections.abc import Callable

import torch

from bench.common import build_models, matched_configs, text_models
from vssm.model.vssm import VSSM


def main(kind: str, rounds: int, batch: int) -> None:
    torch.set_num_threads(1)
    models = build_models(matched_configs(), 784) if kind == "image" else text_models(vssm=kind)
    T = 784 if kind == "image" else 256
    m, ar = models["vssm"], models["ar-ssm"]
    start = m.start(torch.zeros(batch, 0, dtype=torch.long), list(range(batch)))
    ar_start = ar.start(torch.zeros(batch, 0, dtype=torch.long), list(range(batch)))
    compiled = VSSM._compiled_open_block

    def refused(self: VSSM, *args: object, keep: bool = True, **kwargs: object) -> object:
        return compiled(self, *args, keep=keep, **kwargs) if keep else None  # type: ignore[arg-type]

    def one_pass(old: bool) -> Callable[[], object]:
        def call() -> object:
            VSSM._compiled_open_block = refused if old else compiled  # type: ignore[method-assign]
            try:
                return m.generate(start, T, resumable=False)
            finally:
                VSSM._compiled_open_block = compiled  # type: ignore[method-assign]

        return call

    calls = {"new": one_pass(False), "old": one_pass(True), "ar-ssm": lambda: ar.generate(ar_start, T, resumable=False)}
    with torch.inference_mode():
        assert torch.equal(calls["new"]()[0], calls["old"]()[0])  # type: ignore[index]
        for call in calls.values():
            for _ in range(3):
                call()
        gc.disable()
        times: dict[str, list[float]] = {k: [] for k in calls}
        for _ in range(rounds):
            for k, call in calls.items():
                t = time.perf_counter()
                call()
                times[k].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(
        f"{kind} B {batch}: " + ", ".join(f"{k} {1e3 * v:.3f} ms" for k, v in med.items()),
        f"| ar-ssm / new {med['ar-ssm'] / med['new']:.2f}x, ar-ssm / old {med['ar-ssm'] / med['old']:.2f}x,"
        f" old / new {med['old'] / med['new']:.3f}",
    )


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else 1)
