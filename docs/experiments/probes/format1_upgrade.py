"""Probe (lab material): does a session stored by the release before state format 2 go on after an upgrade?

docs/experiments/rounds-and-serving.md, fortieth session.  Run ``write`` with the old release's code on
PYTHONPATH (a worktree of c15d96f~1: states in format 1, each SSM layer's state held as ``h``) and ``read``
with this one's: ROWS unprompted rows (seeds 1000, ...) draw T0 tokens; the old release stores the state and
draws the rest; this release reads the stored bytes, converts them (``upgrade_state``) and draws the rest.
Printed: the stored format, how many continuations are token for token the old release's and this release's
own (one call from the start), and how far the converted state lies from this release's own at T0::

    PYTHONPATH=/tmp/hx:/tmp/wt python .../format1_upgrade.py write mnist-vssm-prior16 300 8 16 /tmp/f1
    PYTHONPATH=. .venv/bin/python docs/experiments/probes/format1_upgrade.py read mnist-vssm-prior16 300 8 16 /tmp/f1
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from vssm import model

CHECKPOINTS = Path("/work/main/checkpoints")


def main() -> None:
    torch.set_num_threads(1)
    mode, name, t0, rows, block, out = sys.argv[1:7]
    t0, rows, block, out = int(t0), int(rows), int(block) or None, Path(out)
    m = model.load_checkpoint(CHECKPOINTS / f"{name}.safetensors").freeze()
    T = m.max_position or 600  # text: 600 characters
    start = m.start(torch.zeros(rows, 0, dtype=torch.long), list(range(1000, 1000 + rows)))
    with torch.inference_mode():
        if mode == "write":
            _, s = m.generate(start, t0, block_size=block)
            out.with_suffix(".state").write_bytes(s.to_bytes())
            rest, _ = m.generate(s, T - t0, block_size=block)
            out.with_suffix(".json").write_text(json.dumps(rest.tolist()))
            return
        stored = model.GenState.from_bytes(out.with_suffix(".state").read_bytes())
        up = m.upgrade_state(stored)
        rest, _ = m.generate(up, T - t0, block_size=block)
        whole, _ = m.generate(start, T, block_size=block)
        _, own = m.generate(start, t0, block_size=block)
    old = torch.tensor(json.loads(out.with_suffix(".json").read_text()))
    print(f"{name}: stored as {stored.format}, converted to {up.format}")
    print(f"  rows whose {T - t0} tokens equal the old release's: {int((rest == old).all(1).sum())} / {rows}")
    print(
        f"  rows equal to this release's one call from the start: {int((rest == whole[:, t0:]).all(1).sum())} / {rows}"
    )
    for k, v in own.tensors.items():
        d = (up.tensors[k].to(torch.complex128) - v.to(torch.complex128)).abs().max() if v.numel() else 0
        scale = v.double().abs().max() if v.numel() else 0
        print(
            f"  {k:10s} largest difference from this release's state {float(d):.2e} (largest value {float(scale):.2e})"
        )


if __name__ == "__main__":
    main()
