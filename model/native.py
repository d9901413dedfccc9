"""Compiled CPU kernels: short S4D passes (LayerNorm, the recurrence step by step and GELU;
csrc/s4d_block.c), a whole short network pass in one call (every block, the final norm and the
head: :func:`net`), the keyed uniforms of model/sampling.py (csrc/keyed.c), its inverse-CDF
draws (csrc/categorical.c), a block's latents under the latent prior (csrc/latent_prior.c),
the autoregressive SSM's whole generation loop (csrc/ar_loop.c), the autoregressive Transformer's
(csrc/transformer_loop.c) and GRU's (csrc/gru_loop.c), block sampling's blocks of a call
for a token-level partial encoder (csrc/rounds.c) and for one that reads a patch a step
(csrc/patch_rounds.c), and a piece whose latents a latent prior draws (csrc/prior_piece.c).

Glossary of axis letters:
    B  batch      T  steps      H  channels      N  complex modes per channel
    L  layers     O  a network's outputs

Why a kernel: at batch 1 a short pass as matrices (``S4D.short``) is a matrix-vector product per
channel whose matrix is ``(T + 2N) x T``, read from memory for one multiply-add per element; the
recurrence reads only the input, the state and three ``(H, N)`` weight tables, and in eager
PyTorch it would be a few calls per step.  Around it the block's LayerNorm and GELU cost a PyTorch
call each whose fixed cost, at a few steps, is many times their arithmetic.  The C file is
compiled once per machine with the system's C compiler (``cc``; no PyTorch headers, a fraction of
a second) into a cache directory and loaded with ctypes; GELU's erf is vectorised by glibc's
libmvec where it links.  Without a compiler, or with ``VSSM_NATIVE=0``, :func:`block` is None and
callers keep the matrices: the kernel changes speed, never results beyond float rounding
(tests/test_native.py).  The keyed uniforms are integer arithmetic: the compiled ones equal
PyTorch's bit for bit.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "MAX_MODES",
    "PatchWeights",
    "PieceWeights",
    "RoundWeights",
    "ar_loop",
    "available",
    "block",
    "categorical",
    "fused_rounds",
    "gru_loop",
    "host_cpu",
    "kernel_path",
    "keyed",
    "max_tokens",
    "net",
    "pack",
    "pack_gru",
    "pack_prior",
    "pack_transformer",
    "pack_vrnn",
    "patch_rounds",
    "patch_weights",
    "piece_weights",
    "prior_draws",
    "prior_piece",
    "prior_tables",
    "round_weights",
    "transformer_loop",
    "vector_bits",
    "vrnn_loop",
    "weights",
]

log = logging.getLogger(__name__)

SOURCES = [
    Path(__file__).with_name("csrc") / name
    for name in (
        *("s4d_block.c", "keyed.c", "categorical.c", "latent_prior.c"),
        *("ar_loop.c", "transformer_loop.c", "gru_loop.c", "vrnn_loop.c"),
        *("rounds.c", "patch_rounds.c", "prior_piece.c"),
        "scratch.c",
    )
]
# included by the sources: hashed with them
HEADERS = [Path(__file__).with_name("csrc") / name for name in ("kernels.h", "vecmath.h")]
# gnu11, not c11: ISO mode turns off the contraction of a * b + c into one FMA instruction
FLAGS = ["-O3", "-std=gnu11", "-fPIC", "-shared", "-fopenmp-simd", "-fno-math-errno", "-march=native"]
# every a * b + c one FMA: GCC's tuning for some CPUs (Zen 2 and 3, Alder Lake, ...) leaves a loop whose only chain
# of multiply-adds feeds itself unfused, so a row's sums would round one way in a one-vector sweep (one chain) and
# another in a tile of rows (several), and a row's result would depend on the rows beside it (csrc/s4d_block.c,
# LINEAR).  A compiler that refuses the parameter by name builds without it, with a warning (a GCC that old has no
# such tuning; clang takes it, unused, and contracts each `acc += x * w` as one expression anyway)
FMA_PARAM = "avoid-fma-max-bits"
FMA = [f"--param={FMA_PARAM}=0"]
# with glibc's vector math, else scalar erf; -z defs: a library with an unresolved symbol (a libmvec
# without vector erf, before glibc 2.35) fails here, not when it is loaded after being cached
LINKS = (["-Wl,-z,defs", "-lmvec", "-lm"], ["-DVSSM_NO_MVEC", "-Wl,-z,defs", "-lm"])
MAX_MODES = 256  # the kernel keeps a block of channels' state on the stack: 2 x N x 32 doubles

_lib: ctypes.CDLL | None = None
_tried = False
_vector_bytes = 0
_L, _P, _D, _I = ctypes.c_long, ctypes.c_void_p, ctypes.c_double, ctypes.c_int
_ARGTYPES = [_L, _L, _L, _L, _L, _P, _L, _L, _P, _P, _D, _P, _L, _P, _P, _I, _P, _P, _L]
_NET_ARGTYPES = [_L, _L, _L, _L, _L, _L, _L, _P, _P, _D, _P, _L, _P, _P, _P]
_KEYED_ARGTYPES = [_L, _L, _L, _L, _P, _P, _L, _L, _P, _P]
_CATEGORICAL_ARGTYPES = [_L, _L, _P, _P, _D, _P]
_AR_LOOP_ARGTYPES = [_L, _L, _L, _L, _L, _L, _P, _D, _P, _P, _P, _P, _P, _P, _P, _P, _P, _P, _I]
_TR_LOOP_ARGTYPES = [_L] * 8 + [_P, _D] + [_P] * 10 + [_I]
_GRU_LOOP_ARGTYPES = [_L] * 5 + [_P] * 8 + [_I]
_VRNN_LOOP_ARGTYPES = [_L] * 6 + [_P] * 9 + [_I]
# fused_rounds: sizes; tokens, keys, streams; temperatures; states; the weights (RoundWeights.args); outputs
_ROUNDS_ARGTYPES = [_L, _L, _P] + [_L] * 8 + [_I, _P, _P, _P, _L, _L, _L, _P, _P, _P, _P, _P, _P, _P, _P]
_ROUNDS_ARGTYPES += [_P, _D, _P, _P, _D, _P, _P, _P, _L, _L, _D, _L, _P, _P, _P, _I, _P, _P, _P, _P]
# patch_rounds: sizes; tokens, keys, streams; temperatures; states; the weights (PatchWeights.args); outputs
_PATCH_ARGTYPES = [_L] * 14 + [_P, _P, _P, _L, _L, _L, _P, _P, _P, _P, _P, _P, _P, _P]
_PATCH_ARGTYPES += [_P, _D, _P, _P, _P, _P, _D, _P, _P, _P, _L, _L, _D, _L, _P, _P, _P, _P, _P, _P, _P, _P]
# prior_piece: sizes; tokens, keys, streams; temperatures; base, pre; states; the weights (PieceWeights.args)
_PIECE_ARGTYPES = [_L] * 10 + [_P, _P, _P, _L, _L, _P, _P, _P, _P, _P, _P, _P, _P, _P, _D, _P, _D, _P, _P]
_PRIOR_ARGTYPES = [_L, _L, _L, _L, _L, _L, _P, _L, _L, _P, _L, _L, _P, _L, _P, _P, _D, _P, _P, _L, _P]
_COMPLEX = {torch.float32: torch.complex64, torch.float64: torch.complex128}


def _cpu_key() -> str:
    """What ``-march=native`` depends on: the CPU's model and feature flags (a cache directory
    shared between machines must not hand one CPU's code to another)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        info = [ln for ln in lines if ln.startswith(("model name", "flags", "Features"))][:2]
    except OSError:
        info = []
    return "\n".join([platform.machine(), platform.processor(), *info])


def _compiler() -> list[str]:
    """The C compiler's command line: ``$CC`` (which may carry arguments, e.g. ``ccache gcc``), else cc or gcc."""
    if os.environ.get("CC"):
        return shlex.split(os.environ["CC"])
    found = shutil.which("cc") or shutil.which("gcc")
    return [found] if found else []


def kernel_path() -> Path:
    """Where the compiled kernels for these sources, compiler, flags and CPU live."""
    digest = hashlib.sha256()
    for src in [*SOURCES, *HEADERS]:
        digest.update(src.read_bytes())
    for part in (repr((_compiler(), FLAGS, FMA, LINKS)).encode(), _cpu_key().encode()):
        digest.update(part)
    default = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "vssm"
    return Path(os.environ.get("VSSM_KERNEL_CACHE") or default) / f"kernels-{digest.hexdigest()[:16]}.so"


def _build(compiler: list[str], extra: list[str], out: str) -> None:
    """The kernels into ``out``, with glibc's vector math where it links (``LINKS``, in order)."""
    for i, links in enumerate(LINKS):
        cmd = [*compiler, *FLAGS, *extra, *map(str, SOURCES), "-o", out, *links]
        try:
            subprocess.run(cmd, check=True, capture_output=True, timeout=120)
            return
        except subprocess.CalledProcessError:
            if i == len(LINKS) - 1:
                raise


def _compile(target: Path) -> None:
    compiler = _compiler()
    if not compiler:
        raise OSError("no C compiler (cc or gcc) on PATH")
    target.parent.mkdir(parents=True, exist_ok=True)
    # compile to a private name, then rename: concurrent processes never load a half-written file
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        try:
            _build(compiler, FMA, tmp)
        except subprocess.CalledProcessError as exc:
            if FMA_PARAM.encode() not in (exc.stderr or b""):  # failed for another reason
                raise
            log.warning("the C compiler refuses %s: kernels built without it", FMA[0])
            _build(compiler, [], tmp)
        os.chmod(tmp, 0o755)  # mkstemp made it private: a shared cache directory serves every user
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _load() -> ctypes.CDLL | None:
    global _lib, _tried
    if _tried:
        return _lib
    _tried = True
    if os.environ.get("VSSM_NATIVE", "1") == "0":
        return None
    try:
        path = kernel_path()
        if not path.exists():
            _compile(path)
        lib = ctypes.CDLL(str(path))
        signatures = (  # each entry point, in float32 and float64
            ("s4d_block", _ARGTYPES, None),
            ("ssm_net", _NET_ARGTYPES, None),
            ("keyed_uniforms", _KEYED_ARGTYPES, None),
            ("categorical", _CATEGORICAL_ARGTYPES, None),
            ("latent_prior", _PRIOR_ARGTYPES, None),
            ("fused_rounds", _ROUNDS_ARGTYPES, _L),
            ("patch_rounds", _PATCH_ARGTYPES, _L),
            ("prior_piece", _PIECE_ARGTYPES, _L),
            ("ssm_ar_loop", _AR_LOOP_ARGTYPES, None),
            ("transformer_loop", _TR_LOOP_ARGTYPES, _I),
            ("gru_loop", _GRU_LOOP_ARGTYPES, _I),
            ("vrnn_loop", _VRNN_LOOP_ARGTYPES, _I),
        )
        for stem, argtypes, restype in signatures:
            for suffix in ("_f32", "_f64"):
                fn = getattr(lib, stem + suffix)
                fn.argtypes, fn.restype = argtypes, restype
        lib.s4d_vector_bytes.argtypes, lib.s4d_vector_bytes.restype = [], _L
        global _vector_bytes
        _vector_bytes = lib.s4d_vector_bytes()  # the build's vector width, for max_tokens
        _lib = lib
    except (OSError, RuntimeError, subprocess.SubprocessError) as err:  # RuntimeError: no home directory
        detail = (getattr(err, "stderr", b"") or b"").decode(errors="replace")[-500:]
        log.warning(
            "native kernels unavailable (short passes use matrices, the keyed hash PyTorch): %s %s", err, detail
        )
    return _lib


def max_tokens() -> int:
    """Batch x steps up to which a whole network pass runs faster on the kernel than as matrices, on
    this machine and at PyTorch's thread count (0 without the kernel).  Measured by bench/rounds.py
    (``kernel_crossover``; docs/experiments/rounds-and-serving.md, fifteenth session) on an Intel
    Xeon with the kernel built with 64-byte vectors (AVX-512): on one thread the kernel was 1.4-2.0x
    the matrices' speed at 1,024-2,048 tokens (32 x 64: 1.55x); on two, whose matrices use both
    cores, 1.2-1.4x at 1,024 and 0.93-1.02x at 1,792-2,048.  So 2,048 over the threads (more than
    two threads: assumed, not measured).  With 32-byte vectors (AVX2, an AMD EPYC, twenty-third
    session): on one thread 1.22-3.13x at every shape up to 32 x 56 (1,792), so 2,048 there too; on
    two 1.04-3.02x up to 512 tokens, 1.03x and 0.78x at 896, so 512 (1,024 over the threads; more than
    two: assumed)."""
    if _load() is None:
        return 0
    threads = max(1, torch.get_num_threads())
    if _vector_bytes < 64 and threads > 1:
        return 1024 // threads
    return 2048 // threads


def available() -> bool:
    """Whether the compiled kernel is loaded (compiling it on first use)."""
    return _load() is not None


def host_cpu() -> dict[str, Any]:
    """What a timing needs said of the CPU it ran on: its name, its family and model numbers (x86 Linux: one name,
    "AMD EPYC", covers hosts that run this code up to 2x apart) and the vector width the kernels were built for."""
    name, fields = platform.processor() or "unknown", {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if not key and fields:  # the first processor's block only
                break
            if key in ("model name", "cpu family", "model") and key not in fields:
                fields[key] = value.strip()
    except OSError:
        pass
    family = (
        f"family {fields['cpu family']} model {fields['model']}" if {"cpu family", "model"} <= fields.keys() else ""
    )
    return {"cpu": fields.get("model name", name), "cpu_id": family, "kernel_vector_bits": vector_bits()}


def vector_bits() -> int:
    """The width of the vectors the kernels were built for (-march=native): 512 with AVX-512, 256 with AVX2, which
    decides their tiles (csrc/s4d_block.c); 0 without the kernel."""
    return 8 * _vector_bytes if _load() is not None else 0


def weights(lam: Tensor, w: Tensor) -> Tensor:
    """The kernel's weight planes ``(4, N, H)``: Re and Im of ``Lambda`` and ``W``, each complex ``(H, N)``
    (model/ssm.py, S4D.discretize; a layer caches this: it depends on the weights only)."""
    planes = [p for t in (lam, w) for p in (t.real, t.imag)]  # (H, N) each
    return torch.stack(planes).transpose(1, 2).contiguous()  # (4, N, H)


def _block(
    x: Tensor,
    state: Tensor | None,
    w: Tensor,
    d: Tensor,
    at: int,
    return_state: bool,
    norm: tuple[Tensor, Tensor, float] | None = None,
    gelu: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """One S4D layer over ``x`` ``(B, T, H)`` (channels contiguous) from ``state`` ``(B, H, N)``
    complex (None: zeros): ``y`` ``(B, T, H)`` and the state after ``at`` steps (None unless
    ``return_state``).  ``w``: :func:`weights`; ``d``: real ``(H,)``.  ``norm`` (weight, bias, eps):
    the layer reads ``LayerNorm(x)`` instead of ``x``; ``gelu``: returns ``GELU(y)``."""
    lib = _lib
    assert lib is not None
    Bsz, T, H = x.shape
    N = w.shape[1]
    dt = x.dtype
    if not 1 <= N <= MAX_MODES:
        raise ValueError(f"the native S4D kernel takes 1 to {MAX_MODES} modes, got {N}")
    if x.stride(2) != 1:
        x = x.contiguous()
    # the C code trusts every shape, stride and type: a mismatch here would read past a buffer (plain
    # comparisons, no generators: this runs for every layer of every short pass and recurrent step)
    ok = w.shape == (4, N, H) and d.shape == (H,) and x.is_cpu and 0 <= at <= T
    ok = ok and w.dtype == dt and d.dtype == dt and w.is_contiguous() and d.is_contiguous() and w.is_cpu and d.is_cpu
    ln_w = ln_b = None
    eps = 0.0
    if norm is not None:
        ln_w, ln_b, eps = norm
        ok = ok and ln_w.shape == (H,) and ln_b.shape == (H,) and ln_w.dtype == dt and ln_b.dtype == dt
        ok = ok and ln_w.is_contiguous() and ln_b.is_contiguous() and ln_w.is_cpu and ln_b.is_cpu
    if not ok:
        raise ValueError(f"bad inputs for the native S4D kernel: x {tuple(x.shape)}, weights {tuple(w.shape)}, at {at}")
    cdt = _COMPLEX[dt]
    h0_sb = 0
    if state is not None:
        if state.shape != (Bsz, H, N) or state.dtype != cdt:
            raise ValueError(f"the state must be {(Bsz, H, N)} {cdt}, got {tuple(state.shape)} {state.dtype}")
        # (B, H, N) interleaved pairs, rows by stride; a lazy conjugate or negation is not in the memory
        if state.stride()[1:] != (N, 1) or not state.is_cpu or state.is_conj() or state.is_neg():
            state = state.resolve_conj().resolve_neg().contiguous().cpu()
        h0_sb = 2 * state.stride(0)  # in real numbers
    fn = lib.s4d_block_f64 if dt == torch.float64 else lib.s4d_block_f32
    out = torch.empty(Bsz, T, H, dtype=dt)  # (B, T, H)
    nxt = torch.empty(Bsz, H, N, dtype=cdt) if return_state else None  # (B, H, N), contiguous
    fn(
        Bsz, H, N, T, at, x.data_ptr(), x.stride(0), x.stride(1),
        None if ln_w is None else ln_w.data_ptr(), None if ln_b is None else ln_b.data_ptr(), eps,
        None if state is None else state.data_ptr(), h0_sb, w.data_ptr(), d.data_ptr(), int(gelu), out.data_ptr(),
        None if nxt is None else nxt.data_ptr(), H * N * 2,
    )  # fmt: skip
    return out, nxt


def _net_pack_size(L: int, H: int, N: int, n_out: int) -> int:
    """Reals in :func:`pack`'s buffer: per layer LayerNorm, the four planes, D, the output linear and
    its bias; then the final LayerNorm and the head."""
    return L * (2 * H + 4 * N * H + H + 2 * H * H + 2 * H) + 2 * H + H * n_out + n_out


def _prior_pack_size(R: int, M: int, zk: int) -> int:
    """Reals in :func:`pack_prior`'s buffer (``zk`` = Z * K, ``M`` the MLP's hidden width)."""
    return R + zk * R + 2 * R + R * M + M + M * zk + zk


def _written(t: Tensor, shape: tuple[int, ...], dtype: torch.dtype) -> bool:
    """Whether C may write ``t`` as a plain ``shape`` array of ``dtype``: contiguous, on the CPU, no lazy view."""
    ok = t.shape == shape and t.dtype == dtype and t.is_cpu and t.is_contiguous()
    return ok and not t.is_conj() and not t.is_neg()


def _plain(t: Tensor) -> Tensor:
    """``t`` contiguous with any lazy conjugate or negation resolved: what C reads as plain memory."""
    return t.detach().resolve_conj().resolve_neg().contiguous()


def _as_plain(tensors: tuple[Tensor | None, ...]) -> list[Tensor | None]:
    """:func:`_plain` of each tensor that needs it (None kept): the inputs a compiled call reads."""
    return [t if t is None or (t.is_contiguous() and not (t.is_conj() or t.is_neg())) else _plain(t) for t in tensors]


def _draws_ok(seed: Tensor, pos0: Tensor, temp: Tensor, temp_tok: Tensor) -> bool:
    """Whether a block-sampling call's keys and temperatures fit it: the rows' seeds and first positions
    ``(B,)`` int64, the latents' and tokens' temperatures ``(B,)`` float64."""
    B = seed.shape[0]
    ok = seed.dtype == pos0.dtype == torch.int64 and pos0.shape == (B,)
    return ok and temp.shape == temp_tok.shape == (B,) and temp.dtype == temp_tok.dtype == torch.float64


def _writable(state: Tensor) -> Tensor:
    """A contiguous copy of a state that C may overwrite (a complex one's lazy conjugate or negation resolved)."""
    return state.detach().resolve_conj().resolve_neg().clone(memory_format=torch.contiguous_format)


def _flat(parts: list[Tensor]) -> Tensor:
    """Weights laid end to end, as one flat buffer a compiled call reads (every ``pack_*``)."""
    return torch.cat([p.detach().reshape(-1) for p in parts])


def _loop_outputs(logits: Tensor, n: int, scores: bool) -> tuple[Tensor, Tensor, Tensor | None]:
    """An autoregressive loop's outputs: a copy of ``logits`` ``(B, V)`` that C overwrites, the tokens ``(B, n)``
    and, for a scored call, the logits each draw was made from ``(B, n, V)``."""
    Bsz, V = logits.shape
    seen = torch.empty(Bsz, n, V, dtype=logits.dtype) if scores else None
    return logits.detach().clone(memory_format=torch.contiguous_format), torch.empty(Bsz, n, dtype=torch.int64), seen


def _allocated(status: int, what: str) -> None:
    """A compiled loop's return: 0, or -1 where its scratch could not be allocated (nothing written)."""
    if status != 0:
        raise MemoryError(f"the native {what} loop could not allocate its scratch")


def pack(layers: list[tuple[Tensor, ...]], norm: tuple[Tensor, Tensor], head: tuple[Tensor, Tensor]) -> Tensor:
    """One network's weights for :func:`_net`, in csrc/s4d_block.c's order: per layer ``(ln_w, ln_b,
    planes, D, W_out, b_out)`` (``planes`` from :func:`weights`, ``W_out`` ``(2H, H)`` as nn.Linear
    holds it), then the final LayerNorm's ``(weight, bias)`` and the head's ``(weight (O, H), bias)``.
    The linear weights are stored transposed, so that C's inner loop runs over outputs."""
    parts = []
    for ln_w, ln_b, planes, d, w_out, b_out in layers:
        parts += [ln_w, ln_b, planes, d, w_out.t(), b_out]
    parts += [norm[0], norm[1], head[0].t(), head[1]]
    return _flat(parts)


def _net(
    x: Tensor,
    state: Tensor | None,
    packed: Tensor,
    L: int,
    N: int,
    n_out: int,
    eps: float,
    at: int,
    return_state: bool,
    out: Tensor | None = None,
    residual: list[Tensor] | None = None,
) -> tuple[Tensor, Tensor | None]:
    """A whole :class:`~model.network.SSMNet` pass after its input layer: ``x`` ``(B, T, H)`` (the
    input layer's output) from ``state`` ``(B, L, H, N)`` complex (None: zeros) -> logits ``(B, T, O)``
    and the state after ``at`` steps (None unless ``return_state``).  ``packed``: :func:`pack`.
    ``out``: a dead state's tensor to write the next state into (a generation loop's spare: a fresh
    state every step is a large allocation, which glibc can hand back to the OS and fault in again);
    used when it has the state's shape, dtype and layout and shares no memory with ``state``.
    ``residual``: a list that receives the residual stream after the blocks ``(B, T, H)``, before the final
    norm (model/patch.py reads its slots' streams)."""
    lib = _lib
    assert lib is not None
    Bsz, T, H = x.shape
    dt = x.dtype
    size = _net_pack_size(L, H, N, n_out)
    ok = x.is_cpu and packed.is_cpu and packed.dtype == dt and packed.is_contiguous() and packed.numel() == size
    if not (ok and 1 <= N <= MAX_MODES and 0 <= at <= T and dt in _COMPLEX):
        raise ValueError(f"bad inputs for the native network pass: x {tuple(x.shape)} {dt}, pack {packed.numel()}")
    x = x.detach().clone(memory_format=torch.contiguous_format)  # the residual stream, overwritten in C
    cdt = _COMPLEX[dt]
    h0_sb = 0
    given = state  # the caller's, before any copy below: ``out`` must not share its memory
    if state is not None:
        if state.shape != (Bsz, L, H, N) or state.dtype != cdt:
            raise ValueError(f"the state must be {(Bsz, L, H, N)} {cdt}, got {tuple(state.shape)} {state.dtype}")
        if state.stride()[1:] != (H * N, N, 1) or not state.is_cpu or state.is_conj() or state.is_neg():
            state = state.resolve_conj().resolve_neg().contiguous().cpu()
        h0_sb = 2 * state.stride(0)  # in real numbers
    fn = lib.ssm_net_f64 if dt == torch.float64 else lib.ssm_net_f32
    scratch = torch.empty(Bsz, T, H, dtype=dt)  # (B, T, H): each layer's GELU(S4D(LayerNorm(x)))
    logits = torch.empty(Bsz, T, n_out, dtype=dt)  # (B, T, O)
    nxt = None
    if return_state:
        reusable = (
            out is not None
            and out.shape == (Bsz, L, H, N)
            and out.dtype == cdt
            and out.is_cpu
            and out.is_contiguous()
            and not (out.is_conj() or out.is_neg() or out.requires_grad)
            # not the caller's state, nor any view of its memory (a partial overlap would be read
            # after it was written)
            and (given is None or out.untyped_storage().data_ptr() != given.untyped_storage().data_ptr())
        )
        nxt = out if reusable else torch.empty(Bsz, L, H, N, dtype=cdt)  # (B, L, H, N)
    fn(
        Bsz, H, N, T, L, n_out, at, x.data_ptr(), packed.data_ptr(), eps,
        None if state is None else state.data_ptr(), h0_sb, None if nxt is None else nxt.data_ptr(),
        scratch.data_ptr(), logits.data_ptr(),
    )  # fmt: skip
    if residual is not None:
        residual.append(x)  # (B, T, H): overwritten in place by the blocks
    return logits, nxt


def net() -> Callable[..., tuple[Tensor, Tensor | None]] | None:
    """The whole-network pass (see :func:`_net`), or None where the kernels cannot be built."""
    return _net if _load() is not None else None


def block() -> Callable[..., tuple[Tensor, Tensor | None]] | None:
    """The kernel's entry point (see :func:`_block`), or None where it cannot run."""
    return _block if _load() is not None else None


def _keyed(seed: Tensor, position: Tensor, streams: tuple[int, ...], width: int, dtype: torch.dtype) -> Tensor:
    """:func:`model.sampling.keyed_uniforms` compiled: ``seed`` ``(B,)`` and ``position`` ``(B, T)``
    int64 on the CPU -> ``(B, S, T, W)`` uniforms of ``dtype`` (float32 or float64), the same bits."""
    lib = _lib
    assert lib is not None
    if (
        seed.dtype != torch.int64
        or position.dtype != torch.int64
        or seed.device.type != "cpu"
        or position.device.type != "cpu"
        or seed.ndim != 1
        or position.ndim != 2
        or position.shape[0] != seed.shape[0]
        or width < 0
        or dtype not in (torch.float32, torch.float64)
    ):
        shapes = f"seed {tuple(seed.shape)} {seed.dtype}, positions {tuple(position.shape)} {position.dtype}"
        raise ValueError(f"bad inputs for the native keyed uniforms: {shapes}, {dtype}")
    seed = seed.contiguous()
    Bsz, T = position.shape
    out = torch.empty(Bsz, len(streams), T, width, dtype=dtype)  # (B, S, T, W)
    fn = lib.keyed_uniforms_f64 if dtype == torch.float64 else lib.keyed_uniforms_f32
    keys = (ctypes.c_int64 * len(streams))(*streams)
    pos_sb, pos_st = position.stride()
    fn(Bsz, len(streams), T, width, seed.data_ptr(), position.data_ptr(), pos_sb, pos_st, keys, out.data_ptr())
    return out


def keyed() -> Callable[..., Tensor] | None:
    """The compiled keyed uniforms (see :func:`_keyed`), or None where the kernels cannot be built."""
    return _keyed if _load() is not None else None


def _categorical(logits: Tensor, u: Tensor, temperature: float) -> Tensor:
    """:func:`model.sampling.sample_categorical` at a float temperature, compiled: ``logits``
    ``(..., V)`` and ``u`` ``(...)`` of one dtype (float32 or float64) on the CPU -> ``(...)`` int64."""
    lib = _lib
    assert lib is not None
    dt = logits.dtype
    if (
        dt not in _COMPLEX
        or u.dtype != dt
        or not logits.is_cpu
        or not u.is_cpu
        or logits.ndim < 1
        or u.shape != logits.shape[:-1]
    ):
        shapes = f"logits {tuple(logits.shape)} {dt}, u {tuple(u.shape)} {u.dtype}"
        raise ValueError(f"bad inputs for the native draw: {shapes}")
    logits, u = logits.detach().contiguous(), u.contiguous()  # a draw has no gradient
    out = torch.empty(u.shape, dtype=torch.int64)
    fn = lib.categorical_f64 if dt == torch.float64 else lib.categorical_f32
    fn(u.numel(), logits.shape[-1], logits.data_ptr(), u.data_ptr(), float(temperature), out.data_ptr())
    return out


def categorical() -> Callable[..., Tensor] | None:
    """The compiled inverse-CDF draw (see :func:`_categorical`), or None where the kernels cannot be built."""
    return _categorical if _load() is not None else None


def pack_prior(
    decay: Tensor, embed: Tensor, norm: tuple[Tensor, Tensor], w1: tuple[Tensor, Tensor], w2: tuple[Tensor, Tensor]
) -> Tensor:
    """The latent prior's weights for :func:`_prior_draws`, in csrc/latent_prior.c's order:
    ``sigmoid(decay)`` ``(R,)``, ``E`` ``(R, Z*K)`` transposed, the LayerNorm's ``(weight, bias)``,
    then each linear's weight (as nn.Linear holds it) transposed and its bias."""
    parts = [torch.sigmoid(decay), embed.t(), norm[0], norm[1], w1[0].t(), w1[1], w2[0].t(), w2[1]]
    return _flat(parts)


def _prior_draws(
    base: Tensor | None,
    r: Tensor,
    u: Tensor,
    temperature: Tensor,
    packed: Tensor,
    n_classes: int,
    hidden: int,
    eps: float,
    pre: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """:meth:`model.latent_prior.LatentPrior.draw` compiled: latents ``(B, n, Z)`` int64 from uniforms
    ``u`` ``(B, n, Z)``, the base logits ``base`` ``(B, n, Z*K)`` (None: zeros), the state ``r``
    ``(B, R)``, per-row ``temperature`` ``(B,)`` float64 and the MLP's hidden width; returns them and
    the state after them.  ``pre`` ``(B, n, M)``: the context's ``G g_t``, added to the MLP's hidden
    layer before its GELU (None: no context)."""
    lib = _lib
    assert lib is not None
    Bsz, n, Z = u.shape
    R = r.shape[-1]
    ZK = Z * n_classes
    dt = r.dtype
    size = _prior_pack_size(R, hidden, ZK)
    ok = hidden >= 1 and dt in _COMPLEX and u.dtype == dt and r.shape == (Bsz, R)
    ok = ok and packed.dtype == dt and packed.numel() == size
    ok = ok and temperature.shape == (Bsz,) and temperature.dtype == torch.float64
    ok = ok and r.is_cpu and u.is_cpu and packed.is_cpu and temperature.is_cpu and packed.is_contiguous()
    if base is not None:
        ok = ok and base.shape == (Bsz, n, ZK) and base.dtype == dt and base.is_cpu
        if base.stride(2) != 1:
            base = base.contiguous()
    if pre is not None:
        ok = ok and pre.shape == (Bsz, n, hidden) and pre.dtype == dt and pre.is_cpu
        pre = pre.contiguous()
    if not ok:
        raise ValueError(f"bad inputs for the native latent prior: u {tuple(u.shape)} {u.dtype}, r {tuple(r.shape)}")
    u, temperature = u.contiguous(), temperature.contiguous()
    r = r.detach().clone(memory_format=torch.contiguous_format)  # overwritten in C
    z = torch.empty(Bsz, n, Z, dtype=torch.int64)
    scratch = torch.empty(R + hidden + ZK, dtype=dt)
    fn = lib.latent_prior_f64 if dt == torch.float64 else lib.latent_prior_f32
    fn(
        Bsz, n, Z, n_classes, R, hidden, None if base is None else base.data_ptr(),
        0 if base is None else base.stride(0), 0 if base is None else base.stride(1),
        None if pre is None else pre.data_ptr(), n * hidden, hidden,
        u.data_ptr(), n * Z, temperature.data_ptr(), packed.data_ptr(), eps, r.data_ptr(), z.data_ptr(), n * Z,
        scratch.data_ptr(),
    )  # fmt: skip
    return z, r


def prior_draws() -> Callable[..., tuple[Tensor, Tensor]] | None:
    """The compiled latent-prior draws (see :func:`_prior_draws`), or None where the kernels cannot be built."""
    return _prior_draws if _load() is not None else None


def _ar_loop(
    logits: Tensor,
    state: Tensor,
    u: Tensor,
    temperature: Tensor,
    packed: Tensor,
    emb: Tensor,
    L: int,
    N: int,
    eps: float,
    last_step: bool,
    scores: bool = False,
) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """The autoregressive SSM's loop compiled (csrc/ar_loop.c): from the logits ``(B, V)`` of the next
    draw and the network's state ``(B, L, H, N)`` complex, ``n`` tokens ``(B, n)`` drawn with the
    uniforms ``u`` ``(B, n)`` at per-row ``temperature`` ``(B,)`` float64, each read by the network
    (``packed``: :func:`pack`; ``emb`` ``(n_in, H)``, its input embedding); returns the tokens, and the
    logits and state after the network read the last of them (without ``last_step`` it does not read
    the last: those after the one before it, for a caller that keeps no state) and, with ``scores``, the logits
    ``(B, n, V)`` each draw was made from."""
    lib = _lib
    assert lib is not None
    Bsz, V = logits.shape
    n = u.shape[1]
    H = emb.shape[1]
    dt = logits.dtype
    cdt = _COMPLEX.get(dt)
    size = _net_pack_size(L, H, N, V)
    ok = cdt is not None and u.dtype == dt and emb.dtype == dt and packed.dtype == dt and packed.numel() == size
    ok = ok and state.shape == (Bsz, L, H, N) and state.dtype == cdt and u.shape == (Bsz, n) and n >= 1
    ok = ok and temperature.shape == (Bsz,) and temperature.dtype == torch.float64 and 1 <= N <= MAX_MODES
    ok = ok and all(t.is_cpu for t in (logits, state, u, temperature, packed, emb)) and packed.is_contiguous()
    ok = ok and emb.ndim == 2 and emb.shape[0] >= V  # every token drawn is read back through the embedding
    if not ok:
        raise ValueError(f"bad inputs for the native AR loop: logits {tuple(logits.shape)}, state {tuple(state.shape)}")
    logits, out, seen = _loop_outputs(logits, n, scores)
    h = _writable(state)
    spare = torch.empty_like(h)
    x = torch.empty(Bsz, H, dtype=dt)
    g = torch.empty(Bsz, H, dtype=dt)
    emb, u, temperature = emb.detach().contiguous(), u.contiguous(), temperature.contiguous()
    fn = lib.ssm_ar_loop_f64 if dt == torch.float64 else lib.ssm_ar_loop_f32
    fn(
        Bsz, H, N, L, V, n, packed.data_ptr(), eps, emb.data_ptr(), u.data_ptr(), temperature.data_ptr(),
        logits.data_ptr(), h.data_ptr(), spare.data_ptr(), x.data_ptr(), g.data_ptr(),
        None if seen is None else seen.data_ptr(), out.data_ptr(), int(last_step),
    )  # fmt: skip
    return out, logits, h, seen


def ar_loop() -> Callable[..., tuple[Tensor, Tensor, Tensor, Tensor | None]] | None:
    """The compiled autoregressive SSM loop (see :func:`_ar_loop`), or None where the kernels cannot be built."""
    return _ar_loop if _load() is not None else None


def _transformer_pack_size(L: int, H: int, F: int, V: int) -> int:
    """Reals in :func:`pack_transformer`'s buffer: per layer two LayerNorms, the qkv, output and MLP linears
    with their biases; then the final LayerNorm and the head."""
    return L * (2 * H + 3 * H * H + 3 * H + H * H + H + 2 * H + H * F + F + F * H + H) + 2 * H + H * V + V


def pack_transformer(
    layers: list[tuple[Tensor, ...]], norm: tuple[Tensor, Tensor], head: tuple[Tensor, Tensor]
) -> Tensor:
    """One Transformer's weights for :func:`transformer_loop`, in csrc/transformer_loop.c's order: per layer
    ``(ln1_w, ln1_b, W_qkv, b_qkv, W_proj, b_proj, ln2_w, ln2_b, W_1, b_1, W_2, b_2)`` (each ``W`` ``(out, in)``
    as nn.Linear holds it), then the final LayerNorm's ``(weight, bias)`` and the head's ``(weight, bias)``.
    The linear weights are stored transposed, so that C's inner loop runs over outputs."""
    parts = []
    for ln1_w, ln1_b, w_qkv, b_qkv, w_proj, b_proj, ln2_w, ln2_b, w1, b1, w2, b2 in layers:
        parts += [ln1_w, ln1_b, w_qkv.t(), b_qkv, w_proj.t(), b_proj, ln2_w, ln2_b, w1.t(), b1, w2.t(), b2]
    parts += [norm[0], norm[1], head[0].t(), head[1]]
    return _flat(parts)


def _transformer_loop(
    logits: Tensor,
    k: Tensor,
    v: Tensor,
    length: Tensor,
    u: Tensor,
    temperature: Tensor,
    packed: Tensor,
    emb: Tensor,
    pos: Tensor,
    F: int,
    eps: float,
    last_step: bool,
    scores: bool,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """The autoregressive Transformer's loop compiled (csrc/transformer_loop.c): from the logits ``(B, V)`` of
    the next draw and the cache ``k, v`` ``(B, L, nh, S, d)`` with ``length`` ``(B,)`` slots used per row,
    ``n`` tokens ``(B, n)`` drawn with the uniforms ``u`` ``(B, n)`` at per-row ``temperature`` ``(B,)``
    float64, each read by the network (``packed``: :func:`pack_transformer`; ``emb`` ``(V + 1, H)`` and
    ``pos`` ``(P, H)`` its embeddings, ``F`` its MLP's width).  ``k``, ``v`` and ``length`` are written in
    place: the caller's private buffer, with room for ``n`` more slots a row.  Returns the tokens, the logits
    after the network read the last of them (without ``last_step`` it does not read the last: those after
    the one before it, for a caller that keeps no state) and, with ``scores``, the logits ``(B, n, V)``
    each draw was made from."""
    lib = _lib
    assert lib is not None
    Bsz, V = logits.shape
    n = u.shape[1]
    _, L, nh, S, d = k.shape
    H = nh * d
    dt = logits.dtype
    ok = dt in _COMPLEX and all(t.dtype == dt for t in (u, packed, emb, pos, k, v)) and n >= 1
    ok = ok and packed.numel() == _transformer_pack_size(L, H, F, V) and packed.is_contiguous()
    ok = ok and v.shape == k.shape and k.is_contiguous() and v.is_contiguous() and length.is_contiguous()
    ok = ok and length.shape == (Bsz,) and length.dtype == torch.int64 and u.shape == (Bsz, n)
    ok = ok and temperature.shape == (Bsz,) and temperature.dtype == torch.float64
    ok = ok and emb.shape == (V + 1, H) and pos.ndim == 2 and pos.shape[1] == H
    ok = ok and all(t.is_cpu for t in (logits, k, v, length, u, temperature, packed, emb, pos))
    if ok:  # every slot a step writes is in the cache, every position it reads in the table
        top = int(length.max()) + n - (0 if last_step else 1)
        ok = top <= S and top <= pos.shape[0] and int(length.min()) >= 0
    if not ok:
        shapes = f"logits {tuple(logits.shape)}, k {tuple(k.shape)}, u {tuple(u.shape)}"
        raise ValueError(f"bad inputs for the native Transformer loop: {shapes}")
    logits, out, seen = _loop_outputs(logits, n, scores)
    emb, pos = emb.detach().contiguous(), pos.detach().contiguous()
    u, temperature = u.contiguous(), temperature.contiguous()
    fn = lib.transformer_loop_f64 if dt == torch.float64 else lib.transformer_loop_f32
    status = fn(
        Bsz, H, nh, L, F, V, n, S, packed.data_ptr(), eps, emb.data_ptr(), pos.data_ptr(), u.data_ptr(),
        temperature.data_ptr(), logits.data_ptr(), k.data_ptr(), v.data_ptr(), length.data_ptr(),
        None if seen is None else seen.data_ptr(), out.data_ptr(), int(last_step),
    )  # fmt: skip
    _allocated(status, "Transformer")
    return out, logits, seen


def transformer_loop() -> Callable[..., tuple[Tensor, Tensor, Tensor | None]] | None:
    """The compiled autoregressive Transformer loop (see :func:`_transformer_loop`), or None where the kernels
    cannot be built."""
    return _transformer_loop if _load() is not None else None


def pack_gru(layers: list[tuple[Tensor, Tensor, Tensor, Tensor]], head: tuple[Tensor, Tensor]) -> Tensor:
    """One GRU stack's weights for :func:`gru_loop`, in csrc/gru_loop.c's order: per layer ``(W_ih, b_ih, W_hh,
    b_hh)`` as torch.nn.GRU holds them (``(3H, H)``, gates r, z, c), then the head's ``(weight (V, H), bias)``.
    The weights are stored transposed, so that C's inner loop runs over outputs."""
    parts = []
    for w_ih, b_ih, w_hh, b_hh in layers:
        parts += [w_ih.t(), b_ih, w_hh.t(), b_hh]
    parts += [head[0].t(), head[1]]
    return _flat(parts)


def _gru_loop(
    logits: Tensor,
    h: Tensor,
    u: Tensor,
    temperature: Tensor,
    packed: Tensor,
    emb: Tensor,
    last_step: bool,
    scores: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """The autoregressive GRU's loop compiled (csrc/gru_loop.c): from the logits ``(B, V)`` of the next draw and
    the stack's state ``h`` ``(B, L, H)``, ``n`` tokens ``(B, n)`` drawn with the uniforms ``u`` ``(B, n)`` at
    per-row ``temperature`` ``(B,)`` float64, each read by the stack (``packed``: :func:`pack_gru`; ``emb``
    ``(V + 1, H)``, its input embedding); returns the tokens, and the logits and state after the stack read the
    last of them (without ``last_step`` it does not read the last: those after the one before it) and, with
    ``scores``, the logits ``(B, n, V)`` each draw was made from."""
    lib = _lib
    assert lib is not None
    Bsz, V = logits.shape
    n = u.shape[1]
    _, L, H = h.shape
    dt = logits.dtype
    ok = dt in _COMPLEX and all(t.dtype == dt for t in (h, u, packed, emb)) and n >= 1 and u.shape == (Bsz, n)
    ok = ok and h.shape[0] == Bsz and emb.shape == (V + 1, H) and packed.is_contiguous()
    ok = ok and packed.numel() == L * 2 * (3 * H * H + 3 * H) + H * V + V
    ok = ok and temperature.shape == (Bsz,) and temperature.dtype == torch.float64
    ok = ok and all(t.is_cpu for t in (logits, h, u, temperature, packed, emb))
    if not ok:
        shapes = f"logits {tuple(logits.shape)}, h {tuple(h.shape)}, u {tuple(u.shape)}"
        raise ValueError(f"bad inputs for the native GRU loop: {shapes}")
    logits, out, seen = _loop_outputs(logits, n, scores)
    h = _writable(h)
    emb, u, temperature = emb.detach().contiguous(), u.contiguous(), temperature.contiguous()
    fn = lib.gru_loop_f64 if dt == torch.float64 else lib.gru_loop_f32
    status = fn(
        Bsz, H, L, V, n, packed.data_ptr(), emb.data_ptr(), u.data_ptr(), temperature.data_ptr(), logits.data_ptr(),
        h.data_ptr(), None if seen is None else seen.data_ptr(), out.data_ptr(), int(last_step),
    )  # fmt: skip
    _allocated(status, "GRU")
    return out, logits, h, seen


def gru_loop() -> Callable[..., tuple[Tensor, Tensor, Tensor, Tensor | None]] | None:
    """The compiled autoregressive GRU loop (see :func:`_gru_loop`), or None where the kernels cannot be built."""
    return _gru_loop if _load() is not None else None


def _vrnn_pack_size(H: int, V: int, Z: int, K: int) -> int:
    """Reals in :func:`pack_vrnn`'s buffer (csrc/vrnn_loop.c's layout)."""
    zk = Z * K
    gen = H * 5 * H + 5 * H + H * zk + zk + zk * H + H + H * H + H + H * H + H + H * 3 * H + 3 * H + H * V + V
    return gen + V * 3 * H + H * 4 * H + 4 * H + V * H + H * zk + zk


def pack_vrnn(
    steps: list[tuple[Tensor, Tensor]], tables: tuple[Tensor, Tensor], filters: list[tuple[Tensor, Tensor]]
) -> Tensor:
    """A VRNN's weights for :func:`vrnn_loop`, in csrc/vrnn_loop.c's order: ``steps``, the seven products of a
    generation step as ``(weight (out, in), bias)`` (gen, p2, z1, z2, dz, gz, do); ``tables``, G ``(V, 3H)`` and A
    ``(V, H)``; ``filters``, the filter's two products (fil, eo).  The weights are stored transposed, so that C's
    inner loop runs over outputs."""
    (w_gen, b_gen), *rest = [(w.t(), b) for w, b in steps]
    (w_fil, b_fil), (w_eo, b_eo) = [(w.t(), b) for w, b in filters]
    parts = [w_gen, b_gen, *(t for pair in rest for t in pair), tables[0], w_fil, b_fil, tables[1], w_eo, b_eo]
    return _flat(parts)


def _vrnn_loop(
    h: Tensor,
    u_lat: Tensor,
    packed: Tensor,
    dims: tuple[int, int, int],
    *,
    observed: Tensor | None = None,
    u_tok: Tensor | None = None,
    temp_z: Tensor | None = None,
    temp_x: Tensor | None = None,
    last_step: bool = True,
    scores: bool = False,
) -> tuple[Tensor | None, Tensor, Tensor | None]:
    """The VRNN's loop compiled (csrc/vrnn_loop.c), from the GRU state ``h`` ``(B, H)``, ``n`` steps with the
    latents' uniforms ``u_lat`` ``(B, n, Z)`` (``packed``: :func:`pack_vrnn`; ``dims``: ``(V, Z, K)``).

    Generation (``observed`` None): tokens drawn with ``u_tok`` ``(B, n)``, latents at per-row ``temp_z`` and
    tokens at ``temp_x`` ``(B,)`` float64; returns the tokens ``(B, n)``, the state after the GRU read the last
    (without ``last_step``: after the one before it) and, with ``scores``, the logits ``(B, n, V)`` each token was
    drawn from.  Filtering (``observed`` ``(B, n)`` int64): the latents drawn from the posterior at temperature 1;
    returns None, the state after the last token, None."""
    lib = _lib
    assert lib is not None
    V, Z, K = dims
    Bsz, H = h.shape
    n = u_lat.shape[1]
    dt = h.dtype
    ok = dt in _COMPLEX and u_lat.dtype == packed.dtype == dt and u_lat.shape == (Bsz, n, Z) and n >= 1
    ok = ok and packed.is_contiguous() and packed.numel() == _vrnn_pack_size(H, V, Z, K)
    ok = ok and all(t.is_cpu for t in (h, u_lat, packed))
    if observed is None:
        ok = ok and u_tok is not None and u_tok.dtype == dt and u_tok.shape == (Bsz, n) and u_tok.is_cpu
        ok = ok and all(t is not None and t.shape == (Bsz,) and t.dtype == torch.float64 for t in (temp_z, temp_x))
    else:
        ok = ok and observed.shape == (Bsz, n) and observed.dtype == torch.int64 and observed.is_cpu
        ok = ok and bool(((observed >= 0) & (observed < V)).all())  # a row of the tables each
    if not ok:
        raise ValueError(f"bad inputs for the native VRNN loop: h {tuple(h.shape)}, u_lat {tuple(u_lat.shape)}")
    h = _writable(h)
    u_lat = u_lat.contiguous()
    fn = lib.vrnn_loop_f64 if dt == torch.float64 else lib.vrnn_loop_f32
    if observed is not None:
        observed = observed.contiguous()
        status = fn(
            Bsz, H, V, Z, K, n, packed.data_ptr(), u_lat.data_ptr(), None, None, None, h.data_ptr(),
            observed.data_ptr(), None, None, 1,
        )  # fmt: skip
        _allocated(status, "VRNN")
        return None, h, None
    assert u_tok is not None and temp_z is not None and temp_x is not None
    out = torch.empty(Bsz, n, dtype=torch.int64)
    seen = torch.empty(Bsz, n, V, dtype=dt) if scores else None
    u_tok, temp_z, temp_x = u_tok.contiguous(), temp_z.contiguous(), temp_x.contiguous()
    status = fn(
        Bsz, H, V, Z, K, n, packed.data_ptr(), u_lat.data_ptr(), u_tok.data_ptr(), temp_z.data_ptr(),
        temp_x.data_ptr(), h.data_ptr(), None, None if seen is None else seen.data_ptr(), out.data_ptr(),
        int(last_step),
    )  # fmt: skip
    _allocated(status, "VRNN")
    return out, h, seen


def vrnn_loop() -> Callable[..., tuple[Tensor | None, Tensor, Tensor | None]] | None:
    """The compiled VRNN loop (see :func:`_vrnn_loop`), or None where the kernels cannot be built."""
    return _vrnn_loop if _load() is not None else None


@dataclass(frozen=True)
class RoundWeights:
    """What the compiled fused rounds read of a model (:func:`round_weights`), laid out once per weights."""

    pack_p: Tensor  # the partial encoder's pack, its head of Z K + F outputs
    emb: Tensor  # (V+1, H): its embedding
    pack_d: Tensor  # the decoder's pack
    w_t: Tensor  # (I, H): the decoder's input layer transposed
    b_in: Tensor  # (H,)
    pack_r: Tensor | None  # the latent prior's pack, None without one
    g_t: Tensor | None  # (F, M): the prior's context weight transposed, None without context
    R: int  # the latent prior's width (0 without one)
    dims: tuple[int, ...]  # the call's sizes (H, N, Lp, Ld, V, Z, K, dec_tokens)
    args: tuple[int | float | None, ...]  # the call's weight arguments: the tensors' addresses, eps, sizes


def round_weights(
    par: tuple[Tensor, float, Tensor, int],
    dec: tuple[Tensor, float, Tensor, Tensor, int, bool],
    prior: tuple[Tensor, int, int, float, Tensor | None] | None,
    shape: tuple[int, int, int, int],
) -> RoundWeights:
    """:class:`RoundWeights` of ``par``: the partial encoder's pack, eps, embedding ``(V+1, H)``, layers; ``dec``:
    the decoder's pack, eps, input weight ``(H, I)`` as nn.Linear holds it, bias, layers, whether it reads
    tokens; ``prior``: the latent prior's pack, width, hidden width, eps and context weight ``G`` ``(M, F)`` as
    nn.Linear holds it (None: no context; the partial encoder's head then has ``Z*K + F`` outputs), or None: no
    latent prior; ``shape``: ``(N, V, Z, K)``.  ValueError where they do not fit."""
    N, V, Z, K = shape
    pack_p, eps_p, emb, Lp = par
    pack_d, eps_d, w_in, b_in, Ld, dec_tokens = dec
    H, dt = emb.shape[1], pack_p.dtype
    n_in = Z * K + (V + 1 if dec_tokens else 0)
    ok = dt in _COMPLEX and 1 <= N <= MAX_MODES and emb.shape == (V + 1, H) and w_in.shape == (H, n_in)
    ok = ok and b_in.shape == (H,) and pack_d.numel() == _net_pack_size(Ld, H, N, V)
    R = M = F = 0
    pack_r = g_t = None
    eps_r = 0.0
    if prior is not None:
        pack_r, R, M, eps_r, G = prior
        ok = ok and M >= 1 and R >= 1 and pack_r.numel() == _prior_pack_size(R, M, Z * K)
        if G is not None:
            F = G.shape[1]
            ok = ok and G.shape == (M, F)
            g_t = G.detach().t().contiguous()
    n_par = Z * K + F  # the partial encoder's outputs: the latents' logits, then the context features
    ok = ok and pack_p.numel() == _net_pack_size(Lp, H, N, n_par)
    tensors = [t for t in (pack_p, emb, pack_d, w_in, b_in, pack_r, g_t) if t is not None]
    ok = ok and all(t.is_cpu and t.dtype == dt for t in tensors)
    ok = ok and all(t.is_contiguous() for t in (pack_p, pack_d, *(() if pack_r is None else (pack_r,))))
    if not ok:
        raise ValueError(f"weights that do not fit the native rounds: embedding {tuple(emb.shape)}, shape {shape}")
    emb_c, w_t, b_c = emb.detach().contiguous(), w_in.detach().t().contiguous(), b_in.detach().contiguous()
    # the addresses stay valid while the RoundWeights holds the tensors; a call passes them as they are
    args = (
        pack_p.data_ptr(), eps_p, emb_c.data_ptr(), pack_d.data_ptr(), eps_d, w_t.data_ptr(), b_c.data_ptr(),
        None if pack_r is None else pack_r.data_ptr(), R, M, eps_r, n_par, None if g_t is None else g_t.data_ptr(),
    )  # fmt: skip
    dims = (H, N, Lp, Ld, V, Z, K, int(dec_tokens))
    return RoundWeights(pack_p, emb_c, pack_d, w_t, b_c, pack_r, g_t, R, dims, args)


def _fused_rounds(
    ms: list[int],
    keys: tuple[Tensor, Tensor, tuple[int, int, int]],
    temps: tuple[Tensor, Tensor],
    states: tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor | None],
    w: RoundWeights,
    keep: bool,
    open_end: bool = False,
    seen: Tensor | None = None,
) -> tuple[Tensor, Tensor | None, Tensor | None, tuple[Tensor, Tensor, Tensor | None] | None]:
    """Block sampling's blocks of a call, compiled (csrc/rounds.c; model/vssm.py, ``VSSM._fused_rows``): block 0
    from the states generation continues from, the rounds after it, and a last piece of 0 absorbs the last
    block.  ``ms``: the pieces' lengths; ``keys``: the rows' seeds and the span's first positions ``(B,)`` int64
    and the streams of the latents, the absorbed latents and the tokens (the uniforms are drawn in C, the same
    numbers as model/sampling.py's); ``temps``: the latent and token temperatures ``(B,)`` float64; ``states``:
    the partial encoder's absorbed state and generation's ``(B, Lp, H, N)``, the decoder's absorbed state and
    generation's ``(B, Ld, H, N)`` complex, which rows have observed a token ``(B,)`` bool and the latent
    prior's state ``(B, R)`` (None without a prior); ``w``: the model's :func:`round_weights`; ``open_end``
    (with ``keep``): the call stops inside its last block, ``ms``' last nonzero piece (then a 0 absorbs it; with
    ``ms`` ``[m, 0]`` block 0 itself is left open, as a one-pass call leaves its state); ``seen`` ``(B, span, V)``
    contiguous (None: not wanted) receives the logits each token was drawn from (a scored call's).
    Returns every token ``(B, span)``; with ``keep`` the two absorbed states after the last round (else None
    twice); with ``open_end`` generation's states after the last block, the partial encoder's and the
    decoder's, and the latent prior's (None without one) as a tuple (else None)."""
    lib = _lib
    assert lib is not None
    H, N, Lp, Ld = w.dims[:4]
    seed, pos0, (s_lat, s_abs, s_tok) = keys
    temp, temp_tok = temps
    par, gen, dec, dec_gen, observed, r0 = states
    Bsz, dt, span = seed.shape[0], w.pack_p.dtype, sum(ms)
    cdt = _COMPLEX[dt]
    ok = len(ms) >= 1 and ms[0] >= 1 and min(ms[1:-1], default=1) >= 1 and ms[-1] >= 0
    ok = ok and (not open_end or (keep and len(ms) >= 2 and ms[-1] == 0))  # [the blocks before,] the open one, 0
    ok = ok and _draws_ok(seed, pos0, temp, temp_tok)
    ok = ok and par.shape == gen.shape == (Bsz, Lp, H, N) and dec.shape == dec_gen.shape == (Bsz, Ld, H, N)
    ok = ok and par.dtype == gen.dtype == dec.dtype == dec_gen.dtype == cdt
    ok = ok and observed.shape == (Bsz,) and observed.dtype == torch.bool
    ok = ok and (r0 is None) == (w.pack_r is None) and (r0 is None or (r0.shape == (Bsz, w.R) and r0.dtype == dt))
    ok = ok and (seen is None or _written(seen, (Bsz, span, w.dims[4]), dt))
    inputs = (seed, pos0, temp, temp_tok, par, gen, dec, dec_gen, observed, r0)
    if not (ok and all(t is None or t.is_cpu for t in inputs)):
        raise ValueError(f"bad inputs for the native rounds: batch {Bsz}, pieces {ms}")
    seed, pos0, temp, temp_tok, par, gen, dec, dec_gen, observed, r0 = _as_plain(inputs)
    tokens = torch.empty(Bsz, span, dtype=torch.int64)
    par_out = torch.empty_like(par) if keep else None
    dec_out = torch.empty_like(dec) if keep else None
    opened = None
    if open_end:
        opened = (torch.empty_like(gen), torch.empty_like(dec_gen), None if r0 is None else torch.empty_like(r0))
    outs = [None if t is None else t.data_ptr() for t in (opened or (None, None, None))]
    pieces = (ctypes.c_int64 * len(ms))(*ms)
    fn = lib.fused_rounds_f64 if dt == torch.float64 else lib.fused_rounds_f32
    status = fn(
        Bsz, len(ms), pieces, span, H, N, Lp, Ld, *w.dims[4:], tokens.data_ptr(), seed.data_ptr(), pos0.data_ptr(),
        s_lat, s_abs, s_tok, temp.data_ptr(), temp_tok.data_ptr(), par.data_ptr(), gen.data_ptr(), dec.data_ptr(),
        dec_gen.data_ptr(), observed.data_ptr(), None if r0 is None else r0.data_ptr(), *w.args,
        None if par_out is None else par_out.data_ptr(), None if dec_out is None else dec_out.data_ptr(),
        int(open_end), *outs, None if seen is None else seen.data_ptr(),
    )  # fmt: skip
    if status < 0:
        raise MemoryError("the native rounds could not allocate their scratch")
    return tokens, par_out, dec_out, opened


def fused_rounds() -> Callable[..., tuple[Tensor, Tensor | None, Tensor | None, tuple | None]] | None:
    """The compiled fused rounds (see :func:`_fused_rounds`), or None where the kernels cannot be built."""
    return _fused_rounds if _load() is not None else None


@dataclass(frozen=True)
class PatchWeights:
    """What the compiled patch rounds read of a model (:func:`patch_weights`), checked and laid out
    once per weights, not per call: packs, transposed input tables and sizes."""

    pack_p: Tensor  # the patch network's pack, its head of Q O outputs (Q: the tables' period, P or more)
    eps_p: float
    w_t: Tensor  # (Q (V+1), H): a patch's input table D, a row per (column, token); EMPTY's rows zero (PatchNet.table)
    b_in: Tensor  # (H,): START's input u_0, to which a patch's input adds its tokens' rows
    A: Tensor  # (Q, V+1, O): the token term
    Lp: int
    pack_d: Tensor  # the decoder's pack
    eps_d: float
    wd_t: Tensor  # (Z K, H): the decoder's input layer transposed
    b_dec: Tensor  # (H,)
    Ld: int
    pack_r: Tensor  # the latent prior's pack
    R: int
    M: int
    eps_r: float
    g_t: Tensor | None  # (F, M): the prior's context weight transposed, None without context
    tables: Tensor  # the prior's tables for draws from a block start (prior_tables), blocks of up to P
    shape: tuple[int, int, int, int]  # (N, V, Z, K)
    dims: tuple[int, ...]  # the call's sizes (P, Q, H, N, Lp, Ld, V, Z, K)
    args: tuple[int | float | None, ...]  # the call's weight arguments: the tensors' addresses, eps, sizes
    # tables for blocks of several patches, by block size (a call holds the one it passes: a clear cannot free it)
    wider: dict[int, Tensor] = field(default_factory=dict, compare=False, repr=False)

    def tables_for(self, block: int) -> Tensor:
        """The prior's tables for blocks of ``block`` draws (P: :attr:`tables`; another: made once per block
        size and kept while these weights are, a few at a time)."""
        if block == self.dims[0]:
            return self.tables
        got = self.wider.get(block)
        if got is None:
            R, M, (_, _, Z, K) = self.R, self.M, self.shape
            got = prior_tables(self.pack_r, R, M, Z, K, block)
            if len(self.wider) >= 8:  # block sizes vary by call: bounded
                self.wider.clear()
            self.wider[block] = got
        return got


def prior_tables(packed: Tensor, R: int, M: int, Z: int, K: int, P: int) -> Tensor:
    """csrc/latent_prior.c's tables (LATENT_PRIOR_TABLE) for blocks of up to ``P`` draws from a block
    start, from the latent prior's pack (:func:`pack_prior`): ``q0`` ``(P, M)``, ``Td`` ``(P, Z K, M)``,
    ``c1`` and ``c2`` ``(M,)``, flat, in the pack's dtype; computed in float64."""
    ZK = Z * K
    w = packed.detach().double()
    sizes = [R, ZK * R, R, R, R * M, M, M * ZK, ZK]
    a, ET, ln_w, ln_b, W1T, b1, _, _ = torch.split(w, sizes)
    ET, W1T = ET.view(ZK, R), W1T.view(R, M)
    powers = a[None] ** torch.arange(P, dtype=w.dtype)[:, None]  # (P, R): a^d
    T = torch.einsum("dr,cr,rm->dcm", powers, ET, ln_w[:, None] * W1T)  # (P, ZK, M): Q (a^d E[:, c])
    zero = T.view(P, Z, K, M)[:, :, :1]  # (P, Z, 1, M): each latent's class 0
    q0 = torch.cat([T.new_zeros(1, M), zero.sum(1)[:, 0].cumsum(0)[:-1]])  # (P, M): sum over d < t
    Td = (T.view(P, Z, K, M) - zero).view(P, ZK, M)
    c1, c2 = ln_w @ W1T, ln_b @ W1T + b1  # (M,) each
    return torch.cat([q0.reshape(-1), Td.reshape(-1), c1, c2]).to(packed.dtype)


def patch_weights(
    par: tuple[Tensor, float, Tensor, Tensor, Tensor, int, int],
    dec: tuple[Tensor, float, Tensor, Tensor, int],
    prior: tuple[Tensor, int, int, float, Tensor | None],
    shape: tuple[int, int, int, int],
) -> PatchWeights:
    """:class:`PatchWeights` of ``par``: the patch network's pack (its head of Q O outputs), eps, its
    input table ``D`` ``(Q, V+1, H)`` and START's input ``u_0`` (model/patch.py, ``PatchNet.table``), the token
    term ``A`` ``(Q, V+1, O)``, its layers and its patch P (Q, the tables' period, is P or more); ``dec``: the
    decoder's pack, eps, input weight ``(H, Z K)``, bias, layers;
    ``prior``: as :func:`_fused_rounds`; ``shape``: ``(N, V, Z, K)``.  ValueError where they do not fit."""
    N, V, Z, K = shape
    pack_p, eps_p, w_in, b_in, A, Lp, P = par
    pack_d, eps_d, w_dec, b_dec, Ld = dec
    pack_r, R, M, eps_r, G = prior
    Q, V1, n_out = A.shape
    H, dt = b_in.shape[0], pack_p.dtype
    F = n_out - Z * K
    ok = dt in _COMPLEX and V1 == V + 1 and 1 <= N <= MAX_MODES and F >= 0 and M >= 1 and 1 <= P <= Q
    ok = ok and w_in.shape == (Q, V1, H) and w_dec.shape == (H, Z * K) and b_dec.shape == (H,)
    ok = ok and pack_p.numel() == _net_pack_size(Lp, H, N, Q * n_out) and pack_d.numel() == _net_pack_size(Ld, H, N, V)
    ok = ok and pack_r.numel() == _prior_pack_size(R, M, Z * K) and (G is None) == (F == 0)
    ok = ok and (G is None or G.shape == (M, F))
    tensors = (pack_p, w_in, b_in, A, pack_d, w_dec, b_dec, pack_r, *(() if G is None else (G,)))
    ok = ok and all(t.is_cpu and t.dtype == dt for t in tensors)
    ok = ok and all(p.is_contiguous() for p in (pack_p, pack_d, pack_r))
    if not ok:
        raise ValueError(f"weights that do not fit the native patch rounds: A {tuple(A.shape)}, shape {shape}")
    w_t, b_t, A_t = w_in.detach().flatten(0, 1).contiguous(), b_in.detach().contiguous(), A.detach().contiguous()
    wd_t, bd_t = w_dec.detach().t().contiguous(), b_dec.detach().contiguous()
    g_t = None if G is None else G.detach().t().contiguous()
    tables = prior_tables(pack_r, R, M, Z, K, P)
    # the addresses stay valid while the PatchWeights holds the tensors; a call passes them as they are
    args = (
        pack_p.data_ptr(), eps_p, w_t.data_ptr(), b_t.data_ptr(), A_t.data_ptr(),
        pack_d.data_ptr(), eps_d, wd_t.data_ptr(), bd_t.data_ptr(),
        pack_r.data_ptr(), R, M, eps_r, n_out, None if g_t is None else g_t.data_ptr(),
    )  # fmt: skip
    return PatchWeights(
        pack_p, eps_p, w_t, b_t, A_t, Lp, pack_d, eps_d, wd_t, bd_t, Ld, pack_r, R, M, eps_r, g_t, tables, shape,
        (P, Q, H, N, Lp, Ld, V, Z, K), args,
    )  # fmt: skip


def _patch_rounds(
    phase: int,
    span: int,
    keys: tuple[Tensor, Tensor, tuple[int, int, int]],
    temps: tuple[Tensor, Tensor],
    states: tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor],
    w: PatchWeights,
    keep: bool,
    open_end: bool = False,
    block: int = 0,
    seen: Tensor | None = None,
) -> tuple[Tensor, Tensor | None, Tensor | None, tuple[Tensor, Tensor, Tensor] | None, int] | None:
    """Block sampling's rounds for a partial encoder that reads a patch a step, compiled (csrc/patch_rounds.c;
    model/vssm.py, ``VSSM._compiled_patch_rounds``); blocks of ``block`` tokens (0: P, the patch; any size: blocks
    and patches need not align).  ``span`` tokens from ``phase`` positions into a block: block 0 the rest of that
    block, then whole blocks, the last maybe cut where the span ends.  ``keys``: the rows' seeds and the span's first
    positions ``(B,)`` int64 and the streams of the latents, the absorbed latents and the tokens (model/sampling.py: the
    uniforms are drawn in C, the same numbers); ``temps``: the latents' and the tokens' temperatures ``(B,)``
    float64; ``states``: the packed absorbed partial-encoder state ``(B, Lp + 1, H, N)`` (model/patch.py) and
    generation's, the absorbed decoder state ``(B, Ld, H, N)`` and generation's, which rows have observed a token
    ``(B,)`` bool (the rest draw block 0 from the uniform prior) and the latent prior's state ``(B, R)``; ``w``: the
    model's :func:`patch_weights`; ``seen`` ``(B, span, V)`` contiguous (None: not wanted) receives the logits each
    token was drawn from (a scored call's).  Returns every token ``(B, span)``; with ``keep`` the packed partial-encoder
    state and the absorbed decoder state after the last block, as an append of its tokens leaves them (the span
    must then end at a block boundary, or stop inside a block with ``open_end``; else None twice); with
    ``open_end`` (a span that stops inside a block, block 0 too: its tokens read as pending ones of their patch)
    generation's states after it, ``(gen (B, Lp + 1, H, N), dec (B, Ld, H, N), r (B, R))`` (else None); and how
    many rounds (the absorbing one too) skipped the decoder's pass over the absorbed latents.  None where a row's
    pending patch does not hold as many tokens as its position mod P, or rows' positions mod P differ (nothing was
    drawn: the caller's own loop runs instead)."""
    lib = _lib
    assert lib is not None
    P, _, H, N, Lp, Ld = w.dims[:6]
    block = block or P
    seed, pos0, (s_lat, s_abs, s_tok) = keys
    temp, temp_tok = temps
    par, gen, dec, dec_gen, observed, r0 = states
    Bsz, dt = seed.shape[0], w.pack_p.dtype
    cdt = _COMPLEX[dt]
    ok = 0 <= phase < block and span >= 1
    ok = ok and _draws_ok(seed, pos0, temp, temp_tok)
    ok = ok and (not keep or ((phase + span) % block != 0) == open_end) and (keep or not open_end)
    ok = ok and par.shape == gen.shape == (Bsz, Lp + 1, H, N) and dec.shape == dec_gen.shape == (Bsz, Ld, H, N)
    ok = ok and par.dtype == gen.dtype == dec.dtype == dec_gen.dtype == cdt and r0.dtype == dt
    ok = ok and observed.shape == (Bsz,) and observed.dtype == torch.bool and r0.shape == (Bsz, w.R)
    ok = ok and (seen is None or _written(seen, (Bsz, span, w.dims[6]), dt))
    inputs = (seed, pos0, temp, temp_tok, par, gen, dec, dec_gen, observed, r0)
    ok = ok and all(t.is_cpu for t in inputs)
    if not ok:
        raise ValueError(f"bad inputs for the native patch rounds: span {span} from phase {phase}, batch {Bsz}")
    seed, pos0, temp, temp_tok, par, gen, dec, dec_gen, observed, r0 = _as_plain(inputs)
    tokens = torch.empty(Bsz, span, dtype=torch.int64)
    par_out = torch.empty_like(par) if keep else None
    dec_out = torch.empty_like(dec) if keep else None
    opened = (torch.empty_like(gen), torch.empty_like(dec_gen), torch.empty_like(r0)) if open_end else None
    fn = lib.patch_rounds_f64 if dt == torch.float64 else lib.patch_rounds_f32
    absorb = (2 if open_end else 1) if keep else 0  # csrc/patch_rounds.c: a kept call absorbs its last block
    tables = w.tables_for(block)  # held while C reads it
    skipped = fn(
        Bsz, phase, span, absorb, block, *w.dims, tokens.data_ptr(), seed.data_ptr(), pos0.data_ptr(),
        s_lat, s_abs, s_tok, temp.data_ptr(), temp_tok.data_ptr(), par.data_ptr(), gen.data_ptr(), dec.data_ptr(),
        dec_gen.data_ptr(), observed.data_ptr(), r0.data_ptr(), *w.args, tables.data_ptr(),
        None if par_out is None else par_out.data_ptr(), None if dec_out is None else dec_out.data_ptr(),
        *(None,) * 3 if opened is None else (t.data_ptr() for t in opened), None if seen is None else seen.data_ptr(),
    )  # fmt: skip
    if skipped == -2:
        return None
    if skipped == -3:  # the checks above keep a caller from it
        raise ValueError(f"the native patch rounds cannot absorb the last block of span {span} from phase {phase}")
    if skipped < 0:
        raise MemoryError("the native patch rounds could not allocate their scratch")
    return tokens, par_out, dec_out, opened, skipped


def patch_rounds() -> (
    Callable[..., tuple[Tensor, Tensor | None, Tensor | None, tuple[Tensor, Tensor, Tensor] | None, int] | None] | None
):
    """The compiled patch rounds (see :func:`_patch_rounds`), or None where the kernels cannot be built."""
    return _patch_rounds if _load() is not None else None


@dataclass(frozen=True)
class PieceWeights:
    """What the compiled prior piece reads of a model (:func:`piece_weights`), laid out once per weights:
    the latent prior's and the decoder's packs and the decoder's input layer as a table."""

    pack_r: Tensor  # the latent prior's pack (pack_prior)
    pack_d: Tensor  # the decoder's pack (pack), its head of V outputs
    wd_t: Tensor  # (Z K, H): the decoder's input layer transposed
    b_dec: Tensor  # (H,)
    dims: tuple[int, ...]  # the call's sizes (H, N, Ld, V, Z, K, R, M)
    args: tuple[int | float, ...]  # the call's weight arguments: the tensors' addresses and the eps


def piece_weights(
    prior: tuple[Tensor, int, int, float],
    dec: tuple[Tensor, float, Tensor, Tensor, int],
    shape: tuple[int, int, int, int],
) -> PieceWeights:
    """:class:`PieceWeights` of ``prior``: the latent prior's pack, width R, hidden width M and eps; ``dec``:
    the decoder's pack, eps, input weight ``(H, Z K)`` as nn.Linear holds it, its bias and layers; ``shape``:
    ``(N, V, Z, K)``.  ValueError where they do not fit."""
    N, V, Z, K = shape
    pack_r, R, M, eps_r = prior
    pack_d, eps_d, w_dec, b_dec, Ld = dec
    H, dt = b_dec.shape[0], pack_d.dtype
    ok = dt in _COMPLEX and 1 <= N <= MAX_MODES and M >= 1 and R >= 1 and w_dec.shape == (H, Z * K)
    ok = ok and pack_d.numel() == _net_pack_size(Ld, H, N, V) and pack_r.numel() == _prior_pack_size(R, M, Z * K)
    ok = ok and all(t.is_cpu and t.dtype == dt for t in (pack_r, pack_d, w_dec, b_dec))
    ok = ok and pack_r.is_contiguous() and pack_d.is_contiguous()
    if not ok:
        raise ValueError(f"weights that do not fit the native prior piece: decoder input {tuple(w_dec.shape)}")
    wd_t, bd = w_dec.detach().t().contiguous(), b_dec.detach().contiguous()
    args = (pack_r.data_ptr(), eps_r, pack_d.data_ptr(), eps_d, wd_t.data_ptr(), bd.data_ptr())
    return PieceWeights(pack_r, pack_d, wd_t, bd, (H, N, Ld, V, Z, K, R, M), args)


def _prior_piece(
    n: int,
    keys: tuple[Tensor, Tensor, tuple[int, int]],
    temps: tuple[Tensor, Tensor],
    block_prior: tuple[Tensor | None, Tensor | None],
    states: tuple[Tensor, Tensor],
    w: PieceWeights,
    keep: bool,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """A piece of ``n`` steps through the latent prior and the decoder, compiled (csrc/prior_piece.c;
    model/vssm.py, ``VSSM._compiled_piece``).  ``keys``: the rows' seeds and the piece's first positions
    ``(B,)`` int64 and the streams of the latents and the tokens (the uniforms are drawn in C, the same
    numbers as model/sampling.py's); ``temps``: the latents' and the tokens' temperatures ``(B,)`` float64;
    ``block_prior``: the block prior's logits ``(B, n, Z K)`` and the context's product ``G g_t`` ``(B, n, M)``
    (None: zeros); ``states``: the latent prior's ``(B, R)`` and the decoder's ``(B, Ld, H, N)`` complex.
    Returns the tokens ``(B, n)``, the prior's state after them and, with ``keep``, the decoder's (else None)."""
    lib = _lib
    assert lib is not None
    H, N, Ld, _, Z, K, R, M = w.dims
    seed, pos0, (s_lat, s_tok) = keys
    temp, temp_tok = temps
    base, pre = block_prior
    r0, dec = states
    Bsz, dt = seed.shape[0], w.pack_d.dtype
    ok = n >= 1 and _draws_ok(seed, pos0, temp, temp_tok)
    ok = ok and r0.shape == (Bsz, R) and r0.dtype == dt and dec.shape == (Bsz, Ld, H, N) and dec.dtype == _COMPLEX[dt]
    ok = ok and (base is None or (base.shape == (Bsz, n, Z * K) and base.dtype == dt))
    ok = ok and (pre is None or (pre.shape == (Bsz, n, M) and pre.dtype == dt))
    inputs = (seed, pos0, temp, temp_tok, base, pre, r0, dec)
    ok = ok and all(t is None or t.is_cpu for t in inputs)
    if not ok:
        raise ValueError(f"bad inputs for the native prior piece: {n} steps, batch {Bsz}")
    seed, pos0, temp, temp_tok, base, pre, r0, dec = _as_plain(inputs)
    tokens = torch.empty(Bsz, n, dtype=torch.int64)
    r_out = torch.empty_like(r0)
    dec_out = torch.empty_like(dec) if keep else None
    fn = lib.prior_piece_f64 if dt == torch.float64 else lib.prior_piece_f32
    status = fn(
        Bsz, n, *w.dims, tokens.data_ptr(), seed.data_ptr(), pos0.data_ptr(), s_lat, s_tok, temp.data_ptr(),
        temp_tok.data_ptr(), None if base is None else base.data_ptr(), None if pre is None else pre.data_ptr(),
        r0.data_ptr(), r_out.data_ptr(), dec.data_ptr(), None if dec_out is None else dec_out.data_ptr(), *w.args,
    )  # fmt: skip
    if status < 0:
        raise MemoryError("the native prior piece could not allocate its scratch")
    return tokens, r_out, dec_out


def prior_piece() -> Callable[..., tuple[Tensor, Tensor, Tensor | None]] | None:
    """The compiled prior piece (see :func:`_prior_piece`), or None where the kernels cannot be built."""
    return _prior_piece if _load() is not None else None
