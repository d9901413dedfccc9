"""Probe (lab material): what glibc's dynamic mmap threshold costs a call's new tensors.

docs/experiments/rounds-and-serving.md, thirty-eighth session.  Medians of calls as the server makes them (models
frozen, one thread): a 64-token session chunk of the serving benchmark's model alone and 16 batched (state bytes
included, ``bench.serving.model_time``), 8 ``mnist-vssm-prior`` sessions at 7 places of block 28 batched, and the
bench's 16-token round.  Run it by turns with and without fixed thresholds, which glibc reads at start::

    PYTHONPATH=. .venv/bin/python docs/experiments/probes/malloc_ab.py
    MALLOC_MMAP_THRESHOLD_=8388608 MALLOC_TRIM_THRESHOLD_=134217728 PYTHONPATH=. .venv/bin/python ...
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from block_paths import median_ms  # this directory: the script's own

from bench.serving import model_time, random_checkpoint
from vssm import model

CHECKPOINTS = Path(__file__).resolve().parents[3] / "checkpoints"


def main() -> None:
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp, torch.inference_mode():
        random_checkpoint(Path(tmp))
        m = model.load_checkpoint(Path(tmp) / "mnist-vssm.safetensors").freeze()
        alone = 1000 * model_time(m, 1, 30)[1]
        batch = 1000 * model_time(m, 16, 30)[1]
        state = m.start(torch.randint(0, m.vocab_size, (1, 64), generator=torch.Generator().manual_seed(0)), [0])
        m.generate(state, 16, block_size=16)
        rnd = median_ms(lambda: m.generate(state, 16, block_size=16), 500)
        p = model.load_checkpoint(CHECKPOINTS / "mnist-vssm-prior.safetensors").freeze()
        empty = [p.start(torch.zeros(1, 0, dtype=torch.long), [k]) for k in range(8)]
        states = [p.generate(e, k * 64, block_size=28)[1] if k else e for k, e in enumerate(empty)]
        mixed = model.GenState.cat(states)
        p.generate(mixed, 64, block_size=28)
        mix = median_ms(lambda: p.generate(mixed, 64, block_size=28), 50)
    print(
        f"chunk alone {alone:.2f} ms, 16 batched {batch:.2f} ms ({16 * alone / batch:.2f}x), "
        f"round {1000 * rnd:.0f} us, 8 mixed sessions {mix:.2f} ms",
        flush=True,
    )


if __name__ == "__main__":
    main()
