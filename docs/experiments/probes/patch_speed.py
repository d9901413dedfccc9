"""Probe (lab material): an image from pixel-latent VSSM checkpoints at their served block, beside the AR-SSM's.

docs/experiments/blocks.md, twenty-second and twenty-sixth sessions.  A partial encoder that reads a row a step
(``par_patch``) runs its rounds compiled (csrc/patch_rounds.c) and skips the decoder's pass over
absorbed latents where they equal the drawn ones, which depends on the weights: so trained
checkpoints are timed, each against the bundled AR-SSM, one thread, unprompted, served settings
(each checkpoint's default block size, else 28; observation temperature 0), best of 9, each right after
the AR-SSM; batch 1 and 32.
Also counts the rounds that skipped the pass (logged by model/vssm.py at DEBUG)::

    .venv/bin/python docs/experiments/probes/patch_speed.py CKPT [CKPT ...]
"""

from __future__ import annotations

import logging
import sys

import torch
from pixel_prior_speed import best_ms  # the twentieth session's probe, beside this one (best of n, ms)

from vssm import model


class Skips(logging.Handler):
    """Counts the rounds that skipped the pass over absorbed latents, from model/vssm.py's log."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.skipped = self.rounds = 0

    def emit(self, record: logging.LogRecord) -> None:
        skipped, rounds = record.args  # type: ignore[misc]
        self.skipped += int(skipped)
        self.rounds += int(rounds)


@torch.no_grad()
def main(paths: list[str]) -> None:
    torch.set_num_threads(1)
    ar = model.load_checkpoint("checkpoints/mnist-ar-ssm.safetensors")
    for batch in (1, 32):
        ar_start = ar.start(torch.zeros(batch, 0, dtype=torch.long), list(range(batch)))
        for path in paths:
            m = model.load_checkpoint(path)
            start = m.start(torch.zeros(batch, 0, dtype=torch.long), list(range(batch)))
            skips = Skips()
            log = logging.getLogger("vssm.model.vssm")
            log.setLevel(logging.DEBUG)
            log.addHandler(skips)
            c = m.default_block_size or 28
            m.generate(start, 784, block_size=c, resumable=False)  # warm-up
            a = best_ms(lambda s=ar_start: ar.generate(s, 784, resumable=False), 9)
            b = best_ms(lambda m=m, start=start, c=c: m.generate(start, 784, block_size=c, resumable=False), 9)
            log.removeHandler(skips)
            share = (
                f"{skips.skipped}/{skips.rounds} rounds skipped the pass over z'" if skips.rounds else "no patch rounds"
            )
            times = f"AR-SSM {a:.2f} ms, VSSM {b:.2f} ms: {a / b:.2f}x"
            print(f"batch {batch}, {path} at block {c}: {times} ({share})", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
