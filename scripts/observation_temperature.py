"""Choose an MNIST VSSM's served observation temperature on held-out seeds.

Glossary of axis letters:
    N  samples   T  sequence length (784)   r  observation temperature

Tokens are drawn given the latents at the request's temperature times ``r`` (model/base.py,
``generate``), a setting of the served model kept in its checkpoint.  For each ``r`` this draws N
unprompted samples at the model's block size with seeds that ``vssm eval`` never uses (its judged
curve draws seeds 0..N-1; the default here starts at 100,000, as the eighth session's choice did:
docs/experiments/blocks.md), judges them as ``vssm eval`` does (the digit judge's confident share
and class-histogram entropy, the AR judge's NLL), and prints each figure's margin over its target
(the block-sampling issue's sample targets, docs/experiments/blocks.md: confident share at least
0.9x the AR-SSM's samples', class entropy at least 2.1 nats, AR judge at most 1.3x its NLL of the
test images; margins above 1 meet them).  The rule: among the ``r`` whose AR judge meets its target,
serve the one whose smaller margin of the two digit targets is largest, so neither is bought with
the other; ties keep the lower ``r``.  Then ``vssm set-observation-temperature`` and ``vssm eval
--judge-only`` measure it on the eval's own seeds.

    .venv/bin/python scripts/observation_temperature.py checkpoints/mnist-vssm-blocks.safetensors \\
        --temperatures 0.4,0.5,0.6,0.7 --samples 1000
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from vssm.model import load_checkpoint
from vssm.model.judge import ar_judge_nll, image_metrics, load_judge, sample_sequences

ROOT = Path(__file__).resolve().parent.parent
CONFIDENT_VS_AR = 0.9  # the sample targets (docs/results.md)
ENTROPY_MIN = 2.1
AR_JUDGE_VS_TEST = 1.3


def choose(rows: list[dict]) -> float | None:
    """The rule: among the rows whose AR judge meets its target (``ar_judge_margin`` >= 1), the observation
    temperature whose smallest margin over the two digit targets is largest (ties: the lower one);
    None if no row meets the AR judge's target."""
    ok = [row for row in rows if row["ar_judge_margin"] >= 1.0]
    if not ok:
        return None
    best = max(ok, key=lambda row: (row["smallest_margin"], -row["observation_temperature"]))
    return best["observation_temperature"]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint")
    p.add_argument("--temperatures", default="0.4,0.5,0.6,0.7", help="observation temperatures to judge")
    p.add_argument("--block-size", type=int, default=None, help="default: the checkpoint's served block size")
    p.add_argument("--samples", type=int, default=1000)
    p.add_argument("--seed", type=int, default=100_000, help="first seed (held out: vssm eval uses 0..N-1)")
    p.add_argument("--judge", default=str(ROOT / "checkpoints" / "judges" / "mnist-judge.safetensors"))
    p.add_argument("--reference", default=None, help="the judge's JSON (default: beside --judge)")
    p.add_argument("--ar-judge", default=str(ROOT / "checkpoints" / "mnist-ar-ssm.safetensors"), help="the AR judge")
    p.add_argument("--json", default=None, help="also write the table here")
    args = p.parse_args()
    torch.set_num_threads(1)
    model = load_checkpoint(args.checkpoint).eval()
    classifier, ar = load_judge(args.judge), load_checkpoint(args.ar_judge).eval()
    ref = json.loads(Path(args.reference or Path(args.judge).with_suffix(".json")).read_text())["reference"]
    confident_need = CONFIDENT_VS_AR * ref["models"]["mnist-ar-ssm"]["confident_share"]  # the AR-SSM's samples
    ar_need = AR_JUDGE_VS_TEST * ref["test_images"]["ar_judge_nll"]
    c = args.block_size if args.block_size is not None else model.default_block_size
    rows = []
    for r in (float(v) for v in args.temperatures.split(",")):
        x = sample_sequences(
            model, args.samples, seed=args.seed, block_size=c, batch_size=250, observation_temperature=r
        )  # (N, T)
        m = image_metrics(classifier, x)
        m["ar_judge_nats"] = ar_judge_nll(ar, x)
        margins = {
            "confident_margin": m["confident_share"] / confident_need,
            "entropy_margin": m["class_entropy_nats"] / ENTROPY_MIN,
            "ar_judge_margin": ar_need / m["ar_judge_nats"],
        }
        smallest = min(margins["confident_margin"], margins["entropy_margin"])
        rows.append({"observation_temperature": r, **m, **margins, "smallest_margin": smallest})
    print(
        f"{args.samples} unprompted samples at block {c}, seeds {args.seed}..{args.seed + args.samples - 1}; "
        f"targets: confident >= {confident_need:.1%}, class entropy >= {ENTROPY_MIN}, AR judge <= {ar_need:.1f}"
    )
    print()
    print("| observation temperature | confident (margin) | class entropy (margin) | AR judge, nats (margin) | ink |")
    print("| ---: | ---: | ---: | ---: | ---: |")
    for row in rows:
        print(
            f"| {row['observation_temperature']:g} | {row['confident_share']:.1%} ({row['confident_margin']:.3f}) "
            f"| {row['class_entropy_nats']:.3f} ({row['entropy_margin']:.3f}) "
            f"| {row['ar_judge_nats']:.1f} ({row['ar_judge_margin']:.3f}) | {row['ink_fraction']:.3f} |"
        )
    best = choose(rows)
    print("\nthe rule's choice: " + (f"{best:g}" if best is not None else "none (every row misses the AR judge)"))
    if args.json:
        Path(args.json).write_text(json.dumps({"block_size": c, "seed": args.seed, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
