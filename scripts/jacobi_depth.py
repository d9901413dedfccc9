"""How many parallel passes an autoregressive model needs to generate exactly: fixed-point decoding.

Glossary of axis letters:
    N  sequences   T  sequence length   V  vocabulary size   k  passes

An autoregressive model that draws x_t by inverse CDF from one uniform u_t is a deterministic
function of u_1:T, so it is a latent-variable model of the VSSM's kind: u is the latent, uniform
and independent over steps, and x_t depends on u_1:t only.  Its "decoder" can run in parallel by
fixed-point (Jacobi) iteration: start from any x^(0), and pass k computes every x^(k)_t at once
from the teacher-forced conditionals given x^(k-1)_<t.  Pass k is exact for t <= k and the
iteration reaches the model's own sample after at most T passes.  How many it needs in practice
measures how deep the chain of dependencies is that a one-pass decoder would have to unroll.

Three measurements, on the first ``--images`` test sequences:
  - posterior latents: u_t drawn uniformly from the interval that gives the real token x_t (the
    exact posterior of u given x); wrong tokens per sequence after k passes, against the real x;
  - prior latents: u_t from the same keyed stream as ``model.generate``; passes until the
    iteration stops changing, and whether its fixed point equals the sequential sample;
  - ``--blocks``: the same iteration block by block from the model's state (a block of c tokens
    iterated until it stops changing, then the next from the state after it), the sampler a block
    model whose tokens read each other needs (the removed VSSM option ``decoder_ar``:
    docs/experiments/blocks.md, twelfth session): passes per sequence and the time of a whole
    sequence against token-by-token generation, both exact.

    .venv/bin/python scripts/jacobi_depth.py checkpoints/mnist-ar-ssm.safetensors --images 100
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import statistics
import sys
import time

import torch
from torch import Tensor

from vssm.model import load_checkpoint
from vssm.model.autoregressive import ARModel
from vssm.model.checkpoint import read_metadata
from vssm.model.data import eval_sequences, load_dataset
from vssm.model.evaluate import generation_seconds
from vssm.model.sampling import STREAM_TOKEN, as_seed_tensor, keyed_uniform, sample_categorical

log = logging.getLogger("jacobi_depth")


def jacobi_pass(model: ARModel, x: Tensor, u: Tensor) -> Tensor:
    """One parallel pass: every x_t drawn with ``u_t`` from ``p(x_t | x_<t)`` given the current ``x`` ``(N, T)``."""
    return sample_categorical(model.logits(x), u, 1.0)  # (N, T)


def posterior_uniforms(model: ARModel, x: Tensor, generator: torch.Generator) -> Tensor:
    """``u`` ``(N, T)`` uniform within the CDF interval of the real token: ``x`` is what they decode to."""
    probs = torch.softmax(model.logits(x), -1)  # (N, T, V)
    p_x = probs.gather(-1, x[..., None])[..., 0]  # (N, T)
    below = probs.cumsum(-1).gather(-1, x[..., None])[..., 0] - p_x  # (N, T) mass of the tokens before x_t
    r = torch.rand(x.shape, dtype=torch.float64, generator=generator).clamp(1e-6, 1 - 1e-6)  # (N, T)
    return below + r * p_x


def passes_to_fixed_point(model: ARModel, u: Tensor, max_passes: int) -> tuple[Tensor, Tensor]:
    """Iterate from all-zero tokens with latents ``u`` ``(N, T)``: the last iterate ``(N, T)`` and, per
    row, the first pass whose result the next pass left unchanged ``(N,)`` (-1: not reached)."""
    xk = torch.zeros(u.shape, dtype=torch.long, device=u.device)
    passes = torch.full(u.shape[:1], -1, dtype=torch.long)
    for k in range(1, max_passes + 1):
        nxt = jacobi_pass(model, xk, u)
        still = (nxt != xk).any(1).cpu()  # (N,)
        passes[(passes < 0) & ~still] = k - 1  # pass k changed nothing: the fixed point came at pass k - 1
        xk = nxt
        if not still.any():
            break
    return xk, passes


@torch.no_grad()
def measure(model: ARModel, x: Tensor, max_passes: int, report: list[int], seed: int) -> dict:
    N, T = x.shape
    u = posterior_uniforms(model, x, torch.Generator().manual_seed(seed))  # (N, T)
    xk = torch.zeros_like(x)
    posterior = {}
    for k in range(1, max(report) + 1):
        xk = jacobi_pass(model, xk, u)
        if k in report:
            wrong = (xk != x).sum(1).double()  # (N,)
            posterior[k] = {
                "wrong_per_sequence": float(wrong.mean()),
                "exact_fraction": float((wrong == 0).double().mean()),
            }
            log.info("posterior latents, pass %d: %.2f wrong tokens per sequence", k, wrong.mean())

    seeds = as_seed_tensor(list(range(seed, seed + N)), N)
    u = keyed_uniform(seeds, torch.arange(T)[None].expand(N, T), STREAM_TOKEN, 1, model.dtype)[..., 0]  # (N, T)
    fixed, done = passes_to_fixed_point(model, u, max_passes)
    sequential, _ = model.generate(model.start(torch.zeros(N, 0, dtype=torch.long), seeds), T, resumable=False)
    converged = done >= 0
    passes = done[converged].double()
    prior = {
        "converged_fraction": float(converged.double().mean()),
        "passes_median": float(passes.median()) if len(passes) else None,
        "passes_p90": float(passes.quantile(0.9)) if len(passes) else None,
        "passes_max": float(passes.max()) if len(passes) else None,
        "equals_sequential_sample": float((fixed == sequential).all(1).double().mean()),
    }
    log.info("prior latents: %s", prior)
    return {"sequences": N, "tokens_per_sequence": T, "posterior_latents": posterior, "prior_latents": prior}


@torch.no_grad()
def block_fixed_point(model: ARModel, T: int, c: int, seed: int | list[int]) -> tuple[Tensor, int]:
    """Sequences ``(N, T)`` of ``model.generate`` for the seeds ``seed`` (same keyed uniforms), drawn
    in blocks of ``c``: each block iterated from all-zero tokens by passes of the network from the
    state before it, until a pass changes no row; returns the tokens and the passes it took."""
    N = 1 if isinstance(seed, int) else len(seed)
    state = model.start(torch.zeros(N, 0, dtype=torch.long, device=model.device), seed)
    u = keyed_uniform(state.seed, model.positions(state, T), STREAM_TOKEN, 1, model.dtype)[..., 0]  # (N, T)
    logits, net = state["logits"], model._net_state(state)  # (N, V): p(x_s | x_<s)
    blocks, passes = [], 0
    for s in range(0, T, c):
        m = min(c, T - s)
        x = torch.zeros(N, m, dtype=torch.long, device=model.device)
        for _ in range(m + 1):  # pass k is exact up to step k: at most m + 1 passes
            out, after = model._net_forward(x, net)  # (N, m, V): p(x_t+1 | x_<=t) for the block's steps
            passes += 1
            nxt = sample_categorical(torch.cat([logits[:, None], out[:, :-1]], 1), u[:, s : s + m], 1.0)
            if torch.equal(nxt, x):
                break
            x = nxt
        else:  # exact arithmetic settles by pass m; rounding at a CDF boundary could cycle
            raise RuntimeError(f"block at {s} did not settle in {m + 1} passes")
        logits, net = out[:, -1], after
        blocks.append(x)
    return torch.cat(blocks, 1), passes


@torch.no_grad()
def blocks_measure(model: ARModel, T: int, blocks: list[int], seeds: int, batch: int = 0) -> dict:
    """Passes and batch-1 seconds per sequence of block fixed-point sampling, per block size, against
    token-by-token generation: ``seeds`` sequences each (the passes differ by sequence), medians;
    every sequence is checked equal to the sequential sample.  ``batch``: also both samplers' seconds
    for that many sequences in one call (a batch's block iterates until its slowest row settles)."""

    def both(c: int, ids: int | list[int]) -> tuple[float, float, int]:
        """Token by token, then by block fixed points (each timed with its start), checked equal:
        the two samplers' seconds and the passes of the second."""
        n = 1 if isinstance(ids, int) else len(ids)
        t0 = time.perf_counter()
        start = model.start(torch.zeros(n, 0, dtype=torch.long, device=model.device), ids)
        ref = model.generate(start, T, resumable=False)[0]
        t1 = time.perf_counter()
        x, k = block_fixed_point(model, T, c, ids)
        t2 = time.perf_counter()
        if not torch.equal(x, ref):
            raise AssertionError(f"block {c}, seeds {ids}: the fixed point is not the sequential sample")
        return t1 - t0, t2 - t1, k

    out: dict = {"blocks": {}}
    for c in blocks:
        runs = [both(c, seed) for seed in range(seeds)]  # the two samplers alternate
        seq_seconds, seconds, passes = (list(v) for v in zip(*runs, strict=True))
        out["blocks"][c] = {
            "passes_median": statistics.median(passes),
            "passes_mean": statistics.mean(passes),
            "seconds_median": statistics.median(seconds),
            "sequential_seconds_median": statistics.median(seq_seconds),
            "sequential_over_blocks": statistics.median(seq_seconds) / statistics.median(seconds),
        }
        if batch:
            seq_b, fp_b, k = both(c, list(range(batch)))
            out["blocks"][c][f"batch_{batch}"] = {
                "passes": k,
                "seconds": fp_b,
                "sequential_seconds": seq_b,
                "sequential_over_blocks": seq_b / fp_b,
            }
        log.info("block %d: %s", c, out["blocks"][c])
    return out


@torch.no_grad()
def batch1_seconds(model: ARModel, T: int, repeats: int = 5) -> dict[str, float]:
    """Best-of wall clock at batch 1: one parallel pass over ``T`` tokens, and ``T`` sequential steps."""
    x = torch.zeros(1, T, dtype=torch.long)
    one = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        model.logits(x)
        one = min(one, time.perf_counter() - t0)
    sequential = generation_seconds(model, T, 1)  # the same best-of-3 timing as `vssm eval`
    return {"one_pass": one, "sequential": sequential, "ratio": sequential / one}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", help="an autoregressive checkpoint (ar-ssm, ar-gru, ar-transformer)")
    p.add_argument("--images", type=int, default=100, help="test sequences to measure on")
    p.add_argument("--max-passes", type=int, default=200, help="stop the prior-latent iteration after this many")
    p.add_argument("--report", default="1,2,4,8,16,24,32,40,50,60", help="passes to report for posterior latents")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--blocks", default="", help="block sizes for block fixed-point sampling, e.g. 8,28,56")
    p.add_argument("--block-seeds", type=int, default=20, help="sequences per block size")
    p.add_argument("--block-batch", type=int, default=32, help="also time a batch of this many (0: no)")
    p.add_argument("--data-dir", default=None)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(1)
    model = load_checkpoint(args.checkpoint).eval()
    if not isinstance(model, ARModel):
        raise SystemExit(f"{args.checkpoint} is a {model.family} model, not an autoregressive one")
    ds = load_dataset(read_metadata(args.checkpoint)["dataset"], args.data_dir)
    x = eval_sequences(ds.test, ds.max_position or 256)[: args.images]  # text: the eval's 256-byte windows
    timing = batch1_seconds(model, x.shape[1])  # in the served dtype
    blocks = [int(c) for c in args.blocks.split(",") if c]
    # in the served dtype and one thread, as `vssm eval` times generation
    by_block = blocks_measure(model, x.shape[1], blocks, args.block_seeds, args.block_batch) if blocks else None
    # then float64 throughout, so that a decision at a CDF boundary does not depend on a pass's rounding
    model = model.double()
    report = sorted({int(k) for k in args.report.split(",")})
    out = {
        "checkpoint": args.checkpoint,
        **measure(model, x, args.max_passes, report, args.seed),
        "batch1_seconds": timing,
        **({"block_fixed_point": by_block} if by_block else {}),
    }
    sys.stdout.write(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
