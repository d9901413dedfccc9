"""Probe (lab material): a block-16 image right after another, and after other work, split into the compiled call
and the Python around it.

docs/experiments/rounds-and-serving.md, twenty-ninth session.  The benchmark times a VSSM image right after an
AR-SSM image (interleaved runs), where the probes of earlier sessions timed images back to back.  This times one
image of ``mnist-vssm-prior16`` at its block (one thread, unprompted, served settings) after each of: nothing (the
image before it), an AR-SSM image, a 20 ms spin in Python, a 20 ms sleep, a pass over 32 MB; round-robin, 40 times
each, medians, and how much of each time was spent inside ``native._patch_rounds`` (the compiled call).  With
``--unfrozen`` the model is not frozen (``SequenceModel.freeze``), as before the twenty-ninth session::

    .venv/bin/python docs/experiments/probes/cold_call.py [--unfrozen]
"""

from __future__ import annotations

import gc
import statistics
import sys
import time

import torch

from vssm import model
from vssm.model import native


def main(frozen: bool) -> None:
    torch.set_num_threads(1)
    m = model.load_checkpoint("checkpoints/mnist-vssm-prior16.safetensors")
    ar = model.load_checkpoint("checkpoints/mnist-ar-ssm.safetensors")
    if frozen:
        m.freeze()
        ar.freeze()
    start = m.start(torch.zeros(1, 0, dtype=torch.long), [0])
    ar_start = ar.start(torch.zeros(1, 0, dtype=torch.long), [0])
    inside = [0.0]
    compiled = native._patch_rounds

    def timed_call(*args: object, **kwargs: object) -> object:  # the compiled call's own time
        t = time.perf_counter()
        out = compiled(*args, **kwargs)
        inside[0] += time.perf_counter() - t
        return out

    native._patch_rounds = timed_call
    junk = torch.zeros(8 << 20)  # 32 MB

    def spin() -> None:
        end = time.perf_counter() + 0.02
        while time.perf_counter() < end:
            pass

    before = {
        "nothing": lambda: None,
        "AR-SSM image": lambda: ar.generate(ar_start, 784, resumable=False),
        "20 ms spin": spin,
        "20 ms sleep": lambda: time.sleep(0.02),
        "32 MB pass": lambda: junk.add_(1.0),
    }
    image = lambda: m.generate(start, 784, block_size=16, resumable=False)  # noqa: E731
    for _ in range(5):
        image(), before["AR-SSM image"]()
    runs: dict[str, list[tuple[float, float]]] = {k: [] for k in before}
    gc.disable()
    for _ in range(40):
        for name, fn in before.items():
            fn()
            inside[0] = 0.0
            t = time.perf_counter()
            image()
            total = time.perf_counter() - t
            runs[name].append((total, inside[0]))
    print(f"mnist-vssm-prior16 at block 16, batch 1, {'frozen' if frozen else 'not frozen'}; ms, medians of 40")
    for name, xs in runs.items():
        total = statistics.median(t for t, _ in xs) * 1e3
        outside = statistics.median(t - c for t, c in xs) * 1e3
        print(f"  after {name:13s} image {total:.3f}, outside the compiled call {outside:.3f}")


if __name__ == "__main__":
    main(frozen="--unfrozen" not in sys.argv[1:])
