"""Part 8: what one block round costs, against what this CPU can do (the round's cost model).

A round of n tokens from a non-empty state (batch 1, the blocks part's round: one call of
``generate(state, n, block_size=n)``) is four passes of n steps through small networks
(docs/design.md, "Blocks"): f_par over EMPTYs, f_dec over the latents, f_par over the drawn
tokens, f_dec over their re-drawn latents.  For each n this part

- counts the round's floating-point operations and the bytes it must move, pass by pass, from the
  shapes of the implementation (:func:`round_cost`; ``tests/test_bench.py`` checks the matmul
  FLOPs against PyTorch's own FLOP counter, so the model cannot drift from the code);
- measures this CPU's peaks in the same process: a large float32 matmul (FLOP/s), the read
  bandwidth of a buffer the size of the round's working set (the round's matrices stay in cache
  from one round to the next) and of a buffer far larger than the caches, and the time of one
  eager PyTorch call on a tiny tensor (the dispatch floor);
- counts the PyTorch calls the round makes (the profiler's top-level operators);
- reports the roofline limit ``max(FLOPs / peak, bytes / bandwidth)``, the dispatch floor
  ``calls x call time``, and the measured round against both;
- times a network pass on the recurrence kernel against the matrices over a grid of batch sizes
  and steps (:func:`kernel_crossover`), the figures ``S4D.scan_max_tokens`` is chosen from.

Glossary of axis letters:
    B  batch      T  steps of one pass      H  width      N  SSM modes per channel
    L  layers     O  network outputs        ZK latent one-hot features (Z latents x K classes)
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from vssm.model import VSSM, native
from vssm.model.network import SSMNet
from vssm.model.ssm import S4D, SHORT

from .common import Settings, measure, measure_interleaved

log = logging.getLogger(__name__)

__all__ = [
    "PassCost",
    "image_flops",
    "kernel_crossover",
    "matrices_only",
    "measure_peaks",
    "network_pass_cost",
    "one_pass_flops",
    "round_cost",
    "run_rounds",
    "scan_limit",
]

F32 = 4  # bytes per float32


@dataclass
class PassCost:
    flops: float  # floating-point operations (a multiply-add is 2)
    matmul_flops: float  # of which in matrix products (what PyTorch's FLOP counter sees)
    bytes: float  # weights and cached matrices read, plus activations read and written

    def __add__(self, other: PassCost) -> PassCost:
        return PassCost(self.flops + other.flops, self.matmul_flops + other.matmul_flops, self.bytes + other.bytes)


def network_pass_cost(
    net: SSMNet, B: int, T: int, from_state: bool, return_state: bool, kernel: bool | None = None
) -> PassCost:
    """One :class:`SSMNet` pass of ``T`` steps on the short path, batch ``B``.

    Per layer: LayerNorm, the SSM, then GELU, the ``H -> 2H`` linear, GLU and the residual add.  The
    SSM as matrices (``S4D.short``): the output matrix ``Y`` ``(H, T [+ 2N], T)`` (the rows of the
    state only from a state), the input-to-state matrix ``S`` ``(H, T, 2N)`` and ``Lambda^T`` when
    the state is kept; as the recurrence kernel (``S4D.scan``, model/native.py, its state ``h / B_bar``):
    a complex multiply, the input's add and the readout per step, mode and channel (11 FLOPs, a
    multiply-add 2) over the weight planes ``(4, N, H)``, no matrix; and then the whole pass after the
    input layer is one native call (``SSMNet._native``), whose linears and head are C loops, counted as
    FLOPs but not as matrix products.  ``kernel`` None: the path the layer itself takes at this size.
    Elementwise work is counted at one FLOP per element and op (GELU's erf as 20); activations are
    read and written once per elementwise op.
    """
    cfg = net.cfg
    if kernel is None:
        kernel = net.blocks[0].ssm.runs_scan(torch.empty(B, 1, 1, dtype=net.head.weight.dtype), T)
    H, N, n_out = cfg.width, cfg.state_size, cfg.n_out  # n_out: O
    act = B * T * H  # elements of one activation (B, T, H)
    mm = 0.0
    flops = 0.0
    nbytes = 0.0
    if cfg.tokens:  # embedding: a gather
        nbytes += F32 * act + 8 * B * T
    else:  # linear from I features
        mm += 2 * B * T * cfg.n_in * H
        nbytes += F32 * (cfg.n_in * H + H + B * T * cfg.n_in + act)
    rows = T + (2 * N if from_state else 0)
    for _ in range(cfg.layers):
        flops += 8 * act  # LayerNorm
        if kernel:
            flops += 11 * B * T * H * N + 2 * act  # the recurrence and its readout, D u
            nbytes += F32 * (4 * N * H + H + 2 * act + 2 * B * H * N * (int(from_state) + int(return_state)))
        else:
            mm += 2 * B * H * rows * T  # [u; h0] @ Y
            nbytes += F32 * (H * rows * T + 2 * H)
        if return_state and not kernel:
            mm += 2 * B * H * T * 2 * N  # u @ S
            nbytes += F32 * (H * T * 2 * N + 2 * H * N + 2 * 2 * B * H * N)  # S, Lambda^T, state in and out
            flops += 8 * B * H * N  # Lambda^T h0 + new part (complex multiply-add)
        if kernel:  # the whole pass is one native call (SSMNet._native): the linear is a loop in C
            flops += 2 * B * T * H * 2 * H
        else:
            mm += 2 * B * T * H * 2 * H  # linear H -> 2H
        nbytes += F32 * (2 * H * H + 2 * H)
        flops += 20 * act + 3 * act + act  # GELU, GLU, residual add
        nbytes += F32 * act * 2 * 7  # about seven elementwise reads and writes of (B, T, H)-sized activations
    flops += 8 * act  # final LayerNorm
    if kernel:
        flops += 2 * B * T * H * n_out  # head, in the same native call
    else:
        mm += 2 * B * T * H * n_out  # head
    nbytes += F32 * (H * n_out + n_out + B * T * n_out)
    return PassCost(flops + mm, mm, nbytes)


def round_cost(m: VSSM, n: int, batch: int = 1) -> dict[str, PassCost]:
    """The four passes of one lone round of ``n`` tokens from a non-empty state (the blocks part's round)."""
    par, dec = m.partial_encoder, m.decoder
    return {
        "f_par over EMPTYs": network_pass_cost(par, batch, n, from_state=True, return_state=False),
        "f_dec over latents": network_pass_cost(dec, batch, n, from_state=True, return_state=False),
        "f_par over tokens": network_pass_cost(par, batch, n, from_state=True, return_state=True),
        "f_dec over re-drawn latents": network_pass_cost(dec, batch, n, from_state=True, return_state=True),
    }


def image_flops(vssm: VSSM, ar_net: SSMNet, T: int, block: int) -> dict[str, float]:
    """FLOPs of a whole ``T``-token sequence at batch 1: the AR-SSM's ``T`` recurrent steps (a pass of
    one step each, from a state, keeping it) against block sampling's ``T / block`` rounds (four
    passes of ``block`` steps each; the fused path's two passes of ``2 block`` steps do the same work
    on the recurrence kernel, which takes them at batch 1 up to ``SHORT`` steps; on the matrices a
    pass costs the square of its length, and the fused passes somewhat more).

    Their ratio is what the block-``block`` speed-up over the AR-SSM would be if both ran at the same
    FLOP rate: beyond it, a speed-up comes from the AR-SSM's per-step overhead, not from the
    parallel passes (per generated token, block sampling runs each token through both networks twice).
    """
    ar = T * network_pass_cost(ar_net, 1, 1, from_state=True, return_state=True).flops
    rounds = -(-T // block)
    vs = rounds * sum(c.flops for c in round_cost(vssm, block).values())
    return {"ar_ssm": ar, "vssm": vs, "ratio": ar / vs}


def one_pass_flops(vssm: VSSM, ar_net: SSMNet, T: int) -> dict[str, float]:
    """FLOPs of a whole ``T``-token sequence at batch 1 in one parallel pass: the AR-SSM's ``T`` recurrent steps
    against one decoder pass of ``T`` steps from the empty state, keeping no state (part 1's unprompted call,
    ``resumable=False``; its latents' draws and input lookup are left out, as the AR-SSM's draws are).  Both are
    counted as the recurrence computes them (the kernel's 11 FLOPs a step, mode and channel, and the linears):
    the O(T) algorithm the two share.  Within ``native.max_tokens()`` rows x steps (T = 784 at batch 1 on the CPU)
    the pass runs these very FLOPs in the recurrence kernel; past it each layer is an FFT convolution
    (model/ssm.py), whose FLOPs this does not count, and its rate in recurrence FLOPs is then an effective one.  The
    ratio is what the one-pass speed-up over the AR-SSM would be at the same rate: the rest of a measured
    speed-up is the one pass's rate over the AR-SSM loop's (bench/targets.py reports both)."""
    ar = T * network_pass_cost(ar_net, 1, 1, from_state=True, return_state=True, kernel=True).flops
    vs = network_pass_cost(vssm.decoder, 1, T, from_state=False, return_state=False, kernel=True).flops
    return {"ar_ssm": ar, "vssm": vs, "ratio": ar / vs}


def measure_peaks(working_set_bytes: float, quick: bool) -> dict[str, float]:
    """This CPU's float32 matmul rate, read bandwidth (cache-sized and DRAM-sized), and call time."""
    size = 256 if quick else 1024
    a, b = torch.randn(size, size), torch.randn(size, size)
    mm = measure(lambda: torch.mm(a, b), repeats=5 if quick else 10).best_s
    cached = torch.randn(max(1024, int(working_set_bytes) // F32))
    cache_bw = measure(lambda: cached.sum(), repeats=20, warmup=3).best_s
    big = torch.randn((16 if quick else 64) << 20)  # 64 or 256 MB, past this machine's 2 MB L2 (and most L3s)
    dram_bw = measure(lambda: big.sum(), repeats=3 if quick else 5).best_s
    tiny = torch.zeros(1)
    calls = 200 if quick else 2000
    call = measure(lambda: [tiny.add_(1.0) for _ in range(calls)], repeats=3).best_s / calls
    return {
        "matmul_gflops": 2 * size**3 / mm / 1e9,
        "matmul_size": size,
        "cache_gbytes_per_s": cached.numel() * F32 / cache_bw / 1e9,
        "cache_buffer_bytes": cached.numel() * F32,
        "dram_gbytes_per_s": big.numel() * F32 / dram_bw / 1e9,
        "dram_buffer_bytes": big.numel() * F32,
        "call_us": call * 1e6,
    }


def _count_calls(fn: Any) -> int:
    """PyTorch operators ``fn`` calls from Python (the profiler's top-level events): each one costs
    at least one eager dispatch, whatever it computes."""
    from torch.profiler import profile

    with profile() as prof:
        fn()
    return sum(1 for e in prof.events() if e.cpu_parent is None and e.name.startswith("aten::"))


@contextmanager
def scan_limit(m: torch.nn.Module, limit: int) -> Iterator[None]:
    """Every S4D layer of ``m`` on the recurrence kernel wherever batch x steps is at most ``limit``
    (in a whole native network pass), instead of the class's threshold; 0: always on the matrices."""
    layers = [mod for mod in m.modules() if isinstance(mod, S4D)]
    for layer in layers:
        layer.scan_max_tokens = limit  # an instance attribute: the class default is untouched
    try:
        yield
    finally:
        for layer in layers:
            del layer.scan_max_tokens


def matrices_only(m: torch.nn.Module) -> AbstractContextManager[None]:
    """Every S4D layer of ``m`` on the matrices (``S4D.short``), not the recurrence kernel."""
    return scan_limit(m, 0)


def _on_matrices(m: torch.nn.Module, fn: Callable[[], object]) -> Callable[[], object]:
    def run() -> object:
        with matrices_only(m):
            return fn()

    return run


def _passes(vssm: VSSM, inputs: list[tuple[SSMNet, torch.Tensor, torch.Tensor]], limit: int) -> None:
    """One pass of each ``(network, input, state)`` with the kernel's threshold at ``limit``."""
    with scan_limit(vssm, limit):
        for net, x, state in inputs:
            net(x, state, return_state=True)


@torch.no_grad()
def kernel_crossover(vssm: VSSM, shapes: list[tuple[int, int]], repeats: int) -> list[dict[str, Any]]:
    """Where the recurrence kernel stops paying: for each ``(B, T)`` (``T <= SHORT``), a pass of ``T``
    steps from a non-zero state (state kept) through the partial encoder and then the decoder, the
    pair timed on the kernel (the whole network in one native call) and on the matrices alternately.
    Alternating favours the matrices a little (their megabytes evict the kernel's kilobytes from the
    caches between calls, which :func:`run_rounds` avoids by timing each path alone), so the kernel's
    gains here are if anything low.  ``S4D.scan_max_tokens`` (model/ssm.py) is chosen from these
    figures; ``on_kernel`` says which path a pass of this shape takes by default."""
    gen = torch.Generator().manual_seed(0)
    rows = []
    for B, T in shapes:
        inputs: list[tuple[SSMNet, torch.Tensor, torch.Tensor]] = []
        for net in (vssm.partial_encoder, vssm.decoder):
            n_in = net.cfg.n_in
            x = (
                torch.randint(0, n_in, (B, T), generator=gen)
                if net.cfg.tokens
                else torch.nn.functional.one_hot(torch.randint(0, n_in, (B, T), generator=gen), n_in).float()
            )
            h = net.initial_state(B)  # (B, L, H, N)
            state = torch.complex(torch.randn(h.shape, generator=gen), torch.randn(h.shape, generator=gen)) * 0.1
            inputs.append((net, x, state))
        with scan_limit(vssm, 1 << 30):  # the kernel side must be the one native call, not a fallback
            for net, x, state in inputs:
                if T > SHORT or not net._native_ok(net.inp(x), T, state):
                    raise RuntimeError(f"a pass of {B} x {T} cannot run as one native call")
        timed = measure_interleaved(
            {
                "kernel": functools.partial(_passes, vssm, inputs, 1 << 30),
                "matrices": functools.partial(_passes, vssm, inputs, 0),
            },
            repeats,
        )
        layer = vssm.decoder.blocks[0].ssm
        rows.append(
            {
                "batch": B,
                "steps": T,
                "kernel": timed["kernel"].as_dict(),
                "matrices": timed["matrices"].as_dict(),
                "kernel_speedup": timed["matrices"].median_s / timed["kernel"].median_s,
                # the layer's own rule, for an input of this shape and the network's dtype
                "on_kernel": layer.runs_scan(torch.empty(B, T, 1, dtype=layer.D.dtype), T, whole_network=True),
            }
        )
        log.info("crossover B=%d T=%d: kernel %.2fx the matrices' speed", B, T, rows[-1]["kernel_speedup"])
    return rows


@torch.no_grad()
def run_rounds(vssm: VSSM, s: Settings, quick: bool, ar_net: SSMNet | None = None, T: int = 784) -> dict[str, Any]:
    """Part 8; ``ar_net``: the AR-SSM's network, for the whole-sequence FLOPs of :func:`image_flops`."""
    prompt = torch.randint(0, vssm.vocab_size, (1, 64), generator=torch.Generator().manual_seed(0))
    state = vssm.start(prompt, [0])
    costs = {n: round_cost(vssm, n) for n in s.round_ns}
    totals = {n: sum(c.values(), PassCost(0.0, 0.0, 0.0)) for n, c in costs.items()}
    peaks = measure_peaks(max(t.bytes for t in totals.values()), quick)
    fns = {n: (lambda n=n: vssm.generate(state, n, block_size=n, resumable=True)) for n in s.round_ns}
    kernel = native.available()
    timed: dict[Any, Any] = measure_interleaved(fns, max(3, s.repeats * 2))  # type: ignore[arg-type]
    if kernel:
        # the kernel's gain: each round size alone, on the kernel then on the matrices, so that each path
        # runs with its own working set in cache (round-robin, the matrices' megabytes would evict the
        # kernel's few kilobytes before every call, and the other sizes' matrices each other's)
        for n, fn in fns.items():
            timed["kernel", n] = measure_interleaved({n: fn}, max(3, s.repeats * 2))[n]
            timed["matrices", n] = measure_interleaved({n: _on_matrices(vssm, fn)}, max(3, s.repeats * 2))[n]
    rows = []
    for n in s.round_ns:
        tot = totals[n]
        compute_s = tot.flops / (peaks["matmul_gflops"] * 1e9)
        memory_s = tot.bytes / (peaks["cache_gbytes_per_s"] * 1e9)
        calls = _count_calls(fns[n])
        roofline_s = max(compute_s, memory_s)
        dispatch_s = calls * peaks["call_us"] / 1e6
        measured = timed[n].median_s
        rows.append(
            {
                "n": n,
                "flops": tot.flops,
                "matmul_flops": tot.matmul_flops,
                "bytes": tot.bytes,
                "passes": {k: vars(v) for k, v in costs[n].items()},
                "compute_s": compute_s,
                "memory_s": memory_s,
                "roofline_s": roofline_s,
                "calls": calls,
                "dispatch_s": dispatch_s,
                "measured": timed[n].as_dict(),
                "vs_roofline": measured / roofline_s,
                "vs_roofline_plus_dispatch": measured / (roofline_s + dispatch_s),
            }
        )
        if kernel:
            rows[-1]["alone"] = timed["kernel", n].as_dict()
            rows[-1]["matrices"] = timed["matrices", n].as_dict()
            rows[-1]["kernel_speedup"] = timed["matrices", n].median_s / timed["kernel", n].median_s
        log.info(
            "round n=%d: %.2f ms measured; roofline %.3f ms (%.1f MFLOP, %.2f MB), %d calls = %.3f ms dispatch",
            n,
            measured * 1e3,
            roofline_s * 1e3,
            tot.flops / 1e6,
            tot.bytes / 1e6,
            calls,
            dispatch_s * 1e3,
        )
    out = {"peaks": peaks, "rounds": rows, "position": 64, "batch": 1, "kernel": kernel}
    if kernel:
        shapes = [(2, 28), (8, 32), (16, 56)] if quick else [(b, t) for b in (2, 4, 8, 16, 32) for t in (16, 28, 56)]
        out["crossover"] = kernel_crossover(vssm, shapes, max(3, s.repeats * 2))
        out["scan_max_tokens"] = vssm.decoder.blocks[0].ssm.kernel_max_tokens()  # the default, on this machine
    if ar_net is not None:
        out["image_flops"] = {str(c): image_flops(vssm, ar_net, T, c) for c in (16, 28)}
        out["image_length"] = T
    return out
