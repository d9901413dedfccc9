"""Why the S4D layer's parallel mode is an FFT convolution: the alternatives, timed side by side.

One layer (H=64, N=32, the small preset's), T=784, forward only, from a non-zero state:
- ``fft``: the layer's own forward (FFT convolution + Vandermonde state terms), kernels cached;
- ``fft_uncached``: the same with the kernels rebuilt (what a training step pays);
- ``chunked``: the layer's forward over 64-token chunks, carrying the state between them;
- ``assoc_scan``: a Hillis-Steele associative scan of g_t = Lambda g_t-1 + u_t (model/ssm.py) in plain PyTorch
  (log2 T dependent passes over a (B, H, N, T) complex tensor);
- ``loop``: the recurrent step, T times.
All five give the same outputs (checked); the report is their times and ratios to ``fft``.
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch

from vssm.model.ssm import S4D, S4DConfig


def _assoc_scan(layer: S4D, u: torch.Tensor, h0: torch.Tensor) -> torch.Tensor:
    _, Lam, W = layer.discretize()  # the state g = h / B_bar (model/ssm.py)
    T = u.shape[-1]
    b = u[:, :, None, :].to(Lam.dtype).expand(-1, -1, Lam.shape[-1], -1).clone()  # (B, H, N, T)
    b[..., 0] = b[..., 0] + Lam * h0  # fold the initial state into the first element
    a = Lam[..., None].expand_as(b).clone()  # (B, H, N, T)
    d = 1
    while d < T:  # (a_i, b_i) o (a_j, b_j) = (a_j a_i, a_j b_i + b_j), shifted by d
        b = torch.cat([b[..., :d], b[..., d:] + a[..., d:] * b[..., :-d]], -1)
        a = torch.cat([a[..., :d], a[..., d:] * a[..., :-d]], -1)
        d *= 2
    return (b * W[..., None]).sum(2).real + u * layer.D[:, None]  # (B, H, T)


def _chunked(layer: S4D, u: torch.Tensor, h0: torch.Tensor, chunk: int = 64) -> torch.Tensor:
    ys, h = [], h0
    for s in range(0, u.shape[-1], chunk):
        y, h = layer(u[..., s : s + chunk], h)
        ys.append(y)
    return torch.cat(ys, -1)


def _loop(layer: S4D, u: torch.Tensor, h0: torch.Tensor) -> torch.Tensor:
    ys, h = [], h0
    for t in range(u.shape[-1]):
        y, h = layer.step(u[..., t], h)
        ys.append(y)
    return torch.stack(ys, -1)


def _best(fn, repeats: int) -> float:
    fn()
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


@torch.inference_mode()
def run_scan(quick: bool = False) -> dict[str, Any]:
    torch.manual_seed(0)
    T = 256 if quick else 784
    layer = S4D(S4DConfig(width=64, state_size=32)).eval()
    repeats = 2 if quick else 5
    rows = []
    for batch in (1, 4) if quick else (1, 32):
        u = torch.randn(batch, 64, T)
        h0 = torch.randn(batch, 64, 32, dtype=torch.complex64) * 0.1
        ref = layer(u, h0, return_state=False)[0]
        methods = {
            "fft": lambda u=u, h0=h0: layer(u, h0, return_state=False),
            "fft_uncached": lambda u=u, h0=h0: layer._build(T, True) and layer(u, h0, return_state=False),
            "chunked": lambda u=u, h0=h0: _chunked(layer, u, h0),
            "assoc_scan": lambda u=u, h0=h0: _assoc_scan(layer, u, h0),
            "loop": lambda u=u, h0=h0: _loop(layer, u, h0),
        }
        for name, fn in methods.items():
            out = fn()
            y = out[0] if isinstance(out, tuple) else out
            err = float((y - ref).abs().max() / ref.abs().max())
            rows.append({"method": name, "batch": batch, "T": T, "best_s": _best(fn, repeats), "max_rel_err": err})
    base = {(r["batch"]): r["best_s"] for r in rows if r["method"] == "fft"}
    for r in rows:
        r["vs_fft"] = r["best_s"] / base[r["batch"]]
    return {"layer": "S4D H=64 N=32", "results": rows}
