"""Probe (lab material): a scored call through the compiled calls against the same call with them off (the PyTorch
path: a second copy of the model, since a frozen model keeps its compiled calls), for the bundled VSSMs at their
served block sizes; three rows (seeds 1-3) after a 10-token prompt, kept or not.  Prints whether the tokens agree
and the largest difference of the log-probabilities.

docs/experiments/rounds-and-serving.md, forty-fifth session::

    PYTHONPATH=. .venv/bin/python docs/experiments/probes/scored_exact.py
"""

from __future__ import annotations

from pathlib import Path

import torch

from vssm import model
from vssm.model import native

CHECKPOINTS = Path(__file__).resolve().parents[3] / "checkpoints"
SERVED = [
    ("mnist-vssm", None),
    ("mnist-vssm-prior16", 16),
    ("mnist-vssm-prior", 28),
    ("mnist-vssm-blocks", 28),
    ("shakespeare-vssm", None),
    ("shakespeare-vssm-prior", None),
]
COMPILED = ("fused_rounds", "patch_rounds", "prior_piece")


def main() -> None:
    torch.set_num_threads(1)
    for name, block in SERVED:
        path = CHECKPOINTS / f"{name}.safetensors"
        m, ref = model.load_checkpoint(path).freeze(), model.load_checkpoint(path).freeze()
        T = 300 if name.startswith("mnist") else 200
        prompt = torch.randint(0, m.vocab_size, (3, 10), generator=torch.Generator().manual_seed(1))
        for resumable in (False, True):
            with torch.inference_mode():
                kw = dict(resumable=resumable, block_size=block)
                tokens, _, scores = m.generate_scored(m.start(prompt, [1, 2, 3]), T, **kw)
                saved = {e: getattr(native, e) for e in COMPILED}
                try:
                    for e in COMPILED:
                        setattr(native, e, lambda: None)
                    ref_tokens, _, ref_scores = ref.generate_scored(ref.start(prompt, [1, 2, 3]), T, **kw)
                finally:
                    for e, f in saved.items():
                        setattr(native, e, f)
            diff = (scores - ref_scores).abs().max().item()
            print(
                f"{name:22s} block {block} resumable {resumable}: tokens equal {torch.equal(tokens, ref_tokens)}, "
                f"log-probabilities' largest difference {diff:.2e}"
            )


if __name__ == "__main__":
    main()
