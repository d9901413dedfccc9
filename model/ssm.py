"""Diagonal linear state space layer (S4D, zero-order hold) and its three modes.

Glossary of axis letters:
    B  batch            T  sequence length (time)
    H  channels (model width)
    N  complex state modes per channel

The recurrence, per channel h and mode n, with complex diagonal A and real input u:
    h_t = Lambda * h_{t-1} + B_bar * u_t,      Lambda = exp(dt * A),  B_bar = (Lambda - 1) / A
    y_t = Re(sum_n C_n h_t[n]) + D * u_t
Stability is structural: Re(A) = -exp(A_log) < 0 and dt > 0, so |Lambda| < 1 for any weights.
The state every mode here carries is h scaled by 1 / B_bar (B_bar = 0 only where float rounds Lambda to 1,
and then W = 0 as well), g = h / B_bar:
    g_t = Lambda * g_{t-1} + u_t,      y_t = Re(sum_n W_n g_t[n]) + D * u_t,      W = C B_bar
the same outputs, with the input's complex product gone: a step is a complex multiply, a real add and the
readout, which is what bounds the compiled passes (csrc/s4d_block.c; docs/experiments/rounds-and-serving.md,
thirty-ninth session).  A state in this form is model/state.py's format 2.

Parallel mode, from any initial state g_0 (the state *before* the first input):
    y = causal_conv(u, K) + Re(W * Lambda^(t+1) . g_0) + D u,      K_j = Re(sum_n W_n Lambda_n^j)
    g_T = Lambda^T g_0 + sum_k Lambda^(T-1-k) u_k
Why FFT convolution: on CPU and GPU alike the kernel term is one rfft / irfft pair over (B, H, 2T),
O(T log T) on the best-tuned primitive each backend has (pocketfft / cuFFT), and the two
state terms are batched matmuls against tables of Lambda^k that depend only on the weights and T
(about sqrt T powers each: k = S i + j), so inference caches them.  An associative scan in plain PyTorch needs log T
dependent passes over a (B, H, N, T) complex tensor (N times the memory traffic of the
convolution) and a chunked scan needs a Python loop over chunks; both lose on a 2-core CPU
and neither is faster on GPU without a custom kernel.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from . import native

__all__ = ["S4D", "SHORT", "S4DConfig"]

SHORT = 64  # at most this many steps, inference runs a layer as one or two matmuls (S4D.short), not FFTs


@dataclass
class S4DConfig:
    width: int = 64  # H: channels, each an independent diagonal SSM
    state_size: int = 32  # N: complex modes per channel
    dt_min: float = 1e-3  # smallest initial step size (longest memory)
    dt_max: float = 1e-1  # largest initial step size (shortest memory)


class _KernelCache:
    """Weight-derived tensors per length, valid while the weights are unchanged.

    The weights' key holds each parameter's storage pointer and in-place version counter, so an
    optimiser step, ``load_state_dict`` or ``.to()`` empties the cache without any explicit hook.
    Least recently used lengths are evicted beyond ``max_bytes``.
    """

    def __init__(self, max_bytes: int = 64 << 20) -> None:
        self.max_bytes = max_bytes
        self.weights: tuple = ()
        self.entries: dict[int | tuple, dict[str, Tensor]] = {}  # by length, or (kind, length)

    def get(self, weights: tuple, T: int | tuple) -> dict[str, Tensor] | None:
        if weights != self.weights:
            self.weights, self.entries = weights, {}
            return None
        hit = self.entries.pop(T, None)
        if hit is not None:
            self.entries[T] = hit  # most recently used goes last
        return hit

    def put(self, T: int | tuple, value: dict[str, Tensor]) -> None:
        self.entries[T] = value
        size = sum(_nbytes(v) for e in self.entries.values() for v in e.values())
        while size > self.max_bytes and len(self.entries) > 1:
            oldest = next(iter(self.entries))
            size -= sum(_nbytes(v) for v in self.entries.pop(oldest).values())


# The generation call in progress in this thread or task (a number per call, and its model's guard), or
# None: within one call the weights cannot change, so caches keyed on them are checked once per call, not
# per pass; across calls, while the guard stays the same (model/base.py, SequenceModel._guard).
_FIXED: ContextVar[tuple[int, tuple | None] | None] = ContextVar("vssm_weights_fixed", default=None)
_calls = itertools.count(1)


@contextmanager
def weights_fixed(guard: tuple | None = None) -> Iterator[None]:
    """A region (one generation call) in which no weight changes: a network checks its packed weights
    once in it (:meth:`model.network.SSMNet._packed`); the AR-SSM otherwise checked them at each of an
    image's 784 steps, about a fifth of its step (docs/experiments/rounds-and-serving.md).  ``guard``: the
    calling model's (``SequenceModel._guard``), which a frozen model gives: what was checked under the same
    guard in an earlier call holds in this one, and is not checked again."""
    token = _FIXED.set((next(_calls), guard))
    try:
        yield
    finally:
        _FIXED.reset(token)


def fixed_call() -> int | None:
    """The number of the :func:`weights_fixed` region in progress, or None."""
    region = _FIXED.get()
    return None if region is None else region[0]


def fixed_guard() -> tuple | None:
    """The guard of the :func:`weights_fixed` region in progress (None: none, or not a frozen model's)."""
    region = _FIXED.get()
    return None if region is None else region[1]


def cached_pack(owner: nn.Module, params: Callable[[], list[Tensor | None]], build: Callable[[], Tensor]) -> Tensor:
    """``owner``'s weights packed for a compiled kernel (``build()``), rebuilt when any of
    ``params()`` changes (:func:`weights_key`, and which entries are None), checked once per
    generation call (:func:`weights_fixed`): a weight changed by another thread during a call is
    read by the next.  Kept in ``owner.__dict__``: a cache, not module state (not in the state dict; a deep
    copy keeps it under the original's key, so the copy, whose storages differ, builds its own).  Like every
    weights cache here it cannot see writes that bypass the version counter.  Under a frozen model's guard
    (:func:`fixed_guard`) it is checked once while the guard stays the same: the walk over every parameter
    was about 5% of a text VSSM's one-pass sample that follows other work
    (docs/experiments/rounds-and-serving.md, thirtieth session)."""
    region = _FIXED.get()
    call, guard = (None, None) if region is None else region
    hit = owner.__dict__.get("_pack")
    if call is not None and hit is not None and hit[2] == call:  # checked already in this generation call
        return hit[1]
    if guard is not None and hit is not None and hit[3] == guard:  # checked under this frozen model's guard
        return hit[1]
    key = pack_key(params())
    packed = hit[1] if hit is not None and hit[0] == key else build()
    owner.__dict__["_pack"] = (key, packed, call, guard)
    return packed


def pack_key(params: list[Tensor | None]) -> tuple:
    """:func:`cached_pack`'s key: :func:`weights_key` of the parameters, and which entries are None."""
    return weights_key([p for p in params if p is not None]), tuple(p is None for p in params)


def weights_key(params: Iterable[Tensor]) -> tuple:
    """Identity of the current weights: storage and in-place version of each tensor.

    Inference tensors (made under ``torch.inference_mode``) keep no version counter; they are
    frozen outside that mode, so their storage alone identifies them.  (A list, not a generator:
    this runs for every layer of every short pass.)
    """
    return tuple([(p.data_ptr(), -1 if p.is_inference() else p._version, p.dtype) for p in params])


def _powers(dtA: Tensor, k: Tensor) -> tuple[Tensor, Tensor]:
    """Real and imaginary parts of ``Lambda^k = exp(dtA k)``, each ``(H, N, len(k))``.

    Real arithmetic, exp(a k) (cos(b k) + i sin(b k)): a complex exp costs about 3x more.
    """
    mag = torch.exp(dtA.real[..., None] * k)  # (H, N, K)
    ang = dtA.imag[..., None] * k  # (H, N, K)
    return mag * torch.cos(ang), mag * torch.sin(ang)


def _nbytes(t: Tensor) -> int:
    return t.numel() * t.element_size()


class S4D(nn.Module):
    """One diagonal SSM over H channels. State: complex ``(B, H, N)``, ``g = h / B_bar`` (the module's docstring)."""

    def __init__(self, cfg: S4DConfig) -> None:
        super().__init__()
        H, N = cfg.width, cfg.state_size
        self.cfg = cfg
        log_dt = torch.rand(H) * (math.log(cfg.dt_max) - math.log(cfg.dt_min)) + math.log(cfg.dt_min)
        self.log_dt = nn.Parameter(log_dt)  # (H,)
        # S4D-Lin initialisation: A_n = -1/2 + i pi n.
        self.A_log = nn.Parameter(torch.full((H, N), math.log(0.5)))  # (H, N) log of -Re(A)
        self.A_imag = nn.Parameter(math.pi * torch.arange(N, dtype=torch.get_default_dtype()).repeat(H, 1))  # (H, N)
        self.C = nn.Parameter(torch.randn(H, N, 2) * math.sqrt(0.5))  # (H, N, 2) real view of complex C
        self.D = nn.Parameter(torch.ones(H))  # (H,)
        self._cache = _KernelCache()

    # ----- discretisation -------------------------------------------------------------------
    def _complex_dtype(self) -> torch.dtype:
        return torch.complex128 if self.log_dt.dtype == torch.float64 else torch.complex64

    def _zoh(self) -> tuple[Tensor, Tensor, Tensor]:
        """(dt A, Lambda, B_bar), complex ``(H, N)``: the zero-order hold of the module's docstring."""
        A = torch.complex(-torch.exp(self.A_log), self.A_imag)  # (H, N)
        dtA = A * torch.exp(self.log_dt)[:, None]  # (H, N)
        Lam = torch.exp(dtA)  # (H, N)
        return dtA, Lam, (Lam - 1.0) / A  # B_bar: ZOH with B = 1 (its scale is absorbed in C)

    def discretize(self) -> tuple[Tensor, Tensor, Tensor]:
        """Return (dt A, Lambda, W) as complex ``(H, N)`` tensors: ``W = C B_bar`` reads the state ``g``
        (the module's docstring)."""
        dtA, Lam, B_bar = self._zoh()
        C = torch.view_as_complex(self.C)  # (H, N)
        return dtA, Lam, C * B_bar

    def state_of_h(self, h: Tensor) -> Tensor:
        """The state ``g = h / B_bar`` ``(B, H, N)`` of a state held as ``h`` (model/state.py's format 1).

        Divided in double precision and rounded once to the state's dtype.  A mode whose B_bar rounds to 0
        never moved ``h`` from 0, and its ``g`` starts at 0 (``g`` moves from there, but W = 0 reads none of it)."""
        B_bar = self._zoh()[2].to(torch.complex128)  # (H, N)
        g = torch.where(B_bar == 0, 0, h.to(torch.complex128) / torch.where(B_bar == 0, 1, B_bar))
        return g.to(h.dtype)  # (B, H, N)

    def initial_state(self, batch: int) -> Tensor:
        return torch.zeros(
            batch, self.cfg.width, self.cfg.state_size, dtype=self._complex_dtype(), device=self.D.device
        )

    # ----- length-dependent tensors, cached at inference ----------------------------------------
    def _tensors(self, T: int, full: bool = True) -> dict[str, Tensor]:
        """Tensors for length ``T`` (``T == 0``: the recurrent mode's), cached under ``no_grad``.

        ``full=False`` builds only the convolution kernel: training from the zero state needs no more.
        """
        if torch.is_grad_enabled():
            return self._build(T, full)
        return self._cached(T, lambda: self._build(T, True))

    def _cached(self, key: int | tuple | str, build: Callable[[], dict[str, Tensor]]) -> dict[str, Tensor]:
        """The weight-derived tensors under ``key``, built by ``build`` unless the cache holds them for
        the current weights."""
        p = self._parameters  # a dict: each `self.<param>` would go through Module.__getattr__
        weights = weights_key((p["log_dt"], p["A_log"], p["A_imag"], p["C"], p["D"]))  # type: ignore[arg-type]
        hit = self._cache.get(weights, key)
        if hit is None:
            hit = build()
            self._cache.put(key, hit)
        return hit

    def _short(self, T: int, at: int) -> dict[str, Tensor]:
        """The layer over ``T <= SHORT`` steps from a state as two real matrices, cached.

        ``Y`` ``(H, T + 2N, T)`` maps ``[u_0 .. u_T-1, Re g_1, Im g_1, .., Re g_N, Im g_N]`` to ``y``:
        the Toeplitz kernel plus ``D`` and the state readout ``W Lambda^(t+1)``.  ``S`` ``(H, at, 2N)``
        maps the first ``at`` inputs to the state after them (``Lambda^(at-1-k)``, interleaved
        real and imaginary parts) and ``lam`` ``(H, N)`` is ``Lambda^at``, applied elementwise: the
        state's own update is diagonal, so it is not worth a dense ``2N x 2N`` block per channel.
        A short round is then one or two batched matmuls per layer instead of an FFT pair and two
        readouts; at a few tokens and batch 1 the cost is the bytes of these matrices (a dense
        ``(T + 2N)^2`` matrix moved 2.2x more) and the kernels launched, not arithmetic.  A state
        before the end (``at < T``) serves a pass that continues past a block boundary: the block's
        tokens, then the next block's EMPTYs (docs/design.md, "Blocks").
        """
        return self._cached(("short", T, at), lambda: self._build_short(T, at))

    def _build_short(self, T: int, at: int) -> dict[str, Tensor]:
        H, N = self.cfg.width, self.cfg.state_size
        dtA, _, W = self.discretize()
        re, im = _powers(dtA, torch.arange(T + 1, device=dtA.device, dtype=dtA.real.dtype))  # (H, N, T+1)
        powers = torch.complex(re, im)  # (H, N, T+1)  Lambda^k
        Y = torch.zeros(H, T + 2 * N, T, dtype=self.D.dtype, device=self.D.device)
        K = self._kernel(dtA, W, T)  # (H, T)
        lag = torch.arange(T, device=K.device)
        diff = lag[None, :] - lag[:, None]  # (k, t): t - k
        Y[:, :T] = torch.where(diff >= 0, K[:, diff.clamp_min(0)], 0.0) + torch.diag_embed(self.D[:, None].expand(H, T))
        cp = W[..., None] * powers[..., 1:]  # (H, N, T)  W Lambda^(t+1)
        Y[:, T::2] = cp.real  # Re g contributes Re(W L^(t+1)) Re g
        Y[:, T + 1 :: 2] = -cp.imag  # Im g contributes -Im(W L^(t+1)) Im g
        b = powers[..., :at].flip(-1)  # (H, N, at)  Lambda^(at-1-k)
        S = torch.stack([b.real, b.imag], -1).transpose(1, 2).flatten(-2).contiguous()  # (H, at, 2N)
        return {"Y": Y, "S": S, "lam": powers[..., at].contiguous()}

    # batch x steps at most this, a short network pass runs the recurrence kernel (model/native.py)
    # instead of the matrices; None: the machine's crossover, native.max_tokens() (2,048 over PyTorch's
    # threads where the kernel has 64-byte vectors or runs on one thread, else 1,024 over them)
    scan_max_tokens: int | None = None
    # the same for a layer called alone (a network the one native call cannot reproduce: a hook, a
    # parametrised weight): measured when every layer was its own call, where it lost past about 128
    layer_scan_max_tokens = 96

    def kernel_max_tokens(self) -> int:
        """:attr:`scan_max_tokens`, the machine's (model/native.py, ``max_tokens``) where it is None."""
        return native.max_tokens() if self.scan_max_tokens is None else self.scan_max_tokens

    def runs_scan(self, x: Tensor, T: int, whole_network: bool = False) -> bool:
        """Whether a short pass over ``x`` (``T`` steps) takes the recurrence kernel (:meth:`scan`):
        within a whole network pass in one call (``whole_network``), or this layer alone."""
        limit = self.kernel_max_tokens()
        limit = limit if whole_network else min(limit, self.layer_scan_max_tokens)
        return (
            x.shape[0] * T <= limit
            and x.is_cpu
            and x.dtype in (torch.float32, torch.float64)
            and x.dtype == self._parameters["D"].dtype  # type: ignore[union-attr]
            and self.cfg.state_size <= native.MAX_MODES
            and native.available()
        )

    def scan(
        self,
        x: Tensor,
        state: Tensor | None,
        return_state: bool = True,
        at: int | None = None,
        norm: tuple[Tensor, Tensor, float] | None = None,
        gelu: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        """:meth:`short` by the recurrence kernel, channels last: ``x`` ``(B, T, H)`` (channels
        contiguous) -> ``y`` ``(B, T, H)`` and the state ``(B, H, N)`` after ``at`` steps (default T).
        ``norm`` (weight, bias, eps): the layer reads ``LayerNorm(x)``; ``gelu``: ``GELU(y)`` is returned
        (the block's neighbours, in the same call: :class:`~model.network.SSMBlock`)."""
        T = x.shape[1]
        hit = self._cached("scan", self._build_scan)
        kernel = native.block()
        assert kernel is not None
        return kernel(x, state, hit["w"], hit["D"], T if at is None else at, return_state, norm, gelu)

    def _build_scan(self) -> dict[str, Tensor]:
        _, Lam, W = self.discretize()
        return {"w": native.weights(Lam, W), "D": self.D.detach().contiguous()}  # (4, N, H), (H,)

    def runs_short(self, T: int, lengths: Tensor | int | None) -> bool:
        """Whether :meth:`forward` over ``T`` steps takes the short path (:meth:`short`)."""
        return T <= SHORT and not isinstance(lengths, Tensor) and not torch.is_grad_enabled()

    def short(
        self, x: Tensor, state: Tensor | None, return_state: bool = True, at: int | None = None
    ) -> tuple[Tensor, Tensor | None]:
        """:meth:`forward` over ``T <= SHORT`` steps by :meth:`_short`'s matrices, channels first:
        ``x`` ``(H, B, T)`` -> ``y`` ``(H, B, T)`` and the state ``(B, H, N)`` after ``at`` steps
        (default ``T``).  The same results as the FFT path, in two or three kernels."""
        T = x.shape[-1]
        at = T if at is None else at
        mats = self._short(T, at)
        x = x.contiguous()  # bmm over a strided batch falls back to one small matmul per channel
        if state is None:
            y = torch.bmm(x, mats["Y"][:, :T])  # (H, B, T)
        else:
            h0 = torch.view_as_real(state).flatten(-2).permute(1, 0, 2)  # (H, B, 2N) interleaved re, im
            y = torch.bmm(torch.cat([x, h0], -1), mats["Y"])  # (H, B, T)
        if not return_state:
            return y, None
        s = torch.bmm(x[..., :at], mats["S"])  # (H, B, 2N)
        nxt = torch.view_as_complex(s.permute(1, 0, 2).unflatten(-1, (self.cfg.state_size, 2)))  # (B, H, N)
        return y, nxt if state is None else nxt + state * mats["lam"]

    def _build(self, T: int, full: bool) -> dict[str, Tensor]:
        dtA, Lam, W = self.discretize()
        if T == 0:
            return {"Lam": Lam, "W": W}
        out = {"kernel_f": torch.fft.rfft(self._kernel(dtA, W, T), n=2 * T)}  # (H, T+1) spectrum
        if full:
            # The state terms need Lambda^k for k < T.  With k = S i + j (S ~ sqrt T) they factor into
            # two tables of about sqrt(T) powers: a full (H, 2N, T) table per term was 17 MB per layer
            # at T = 1024, streamed from memory on every state hand-off (at batch 1 that, not the
            # arithmetic, was the cost: a long generation's window hand-offs took 55-61% of its time).
            S = max(1, math.isqrt(T - 1) + 1)  # smallest S with S * S >= T
            steps = -(-T // S)  # I: rows of the k = S i + j grid
            k = torch.arange(max(S, steps), device=Lam.device, dtype=Lam.real.dtype)
            lo_re, lo_im = _powers(dtA, k[:S])  # (H, N, S)  Lambda^j
            hi_re, hi_im = _powers(dtA, k[:steps] * S)  # (H, N, I)  Lambda^(S i)
            # real matmul operands, (real, imaginary) interleaved per mode so that results view as complex
            lo = torch.stack([lo_re, lo_im], -1).transpose(1, 2)  # (H, S, N, 2)
            out["lo_adv"] = lo.flatten(-2).contiguous()  # (H, S, 2N)  [Re, Im] Lambda^j
            out["lo_read"] = (lo * torch.tensor([1.0, -1.0], dtype=lo.dtype, device=lo.device)).flatten(-2)
            out["lo_read"] = out["lo_read"].transpose(1, 2).contiguous()  # (H, 2N, S)  [Re, -Im] Lambda^j
            out["hi"] = torch.complex(hi_re, hi_im).transpose(1, 2).contiguous()  # (H, I, N)  Lambda^(S i)
            out["W_Lam"] = W * Lam  # (H, N)  readout: Re(W Lambda^(t+1) g0) = Re((W Lambda g0) Lambda^t)
            re, im = _powers(dtA, torch.tensor([float(T)], device=Lam.device, dtype=Lam.real.dtype))
            out["Lam_T"] = torch.complex(re, im)[..., 0]  # (H, N)  Lambda^T
        return out

    @staticmethod
    def _readout(state: Tensor, tens: dict[str, Tensor], T: int) -> Tensor:
        """``Re(sum_n W_n Lambda_n^(t+1) g0_n)`` for ``t < T``: the initial state's share of the output,
        ``(B, H, T)``, as one real batched matmul over the two power tables (:meth:`_build`)."""
        hi = tens["hi"]  # (H, I, N)
        Bsz, steps = state.shape[0], hi.shape[1]
        v = (state * tens["W_Lam"]).transpose(0, 1)  # (H, B, N)  W Lambda g0
        p = torch.view_as_real(v[:, :, None, :] * hi[:, None])  # (H, B, I, N, 2)  v Lambda^(S i)
        y = torch.bmm(p.reshape(hi.shape[0], Bsz * steps, -1), tens["lo_read"])  # (H, B*I, S): step S i + j
        return y.reshape(hi.shape[0], Bsz, -1)[..., :T].transpose(0, 1)  # (B, H, T)

    @staticmethod
    def _advance(u: Tensor, state: Tensor | None, tens: dict[str, Tensor]) -> Tensor:
        """State after all of ``u`` ``(B, H, T)``, from ``state`` (None: zeros), ``(B, H, N)``:
        ``Lambda^T g0 + sum_r Lambda^r u_(T-1-r)``, the sum over r = S i + j as a real
        batched matmul against ``Lambda^j``, then a weighted sum over i with ``Lambda^(S i)``."""
        Bsz, H, T = u.shape
        lo, hi = tens["lo_adv"], tens["hi"]  # (H, S, 2N), (H, I, N)
        S, steps = lo.shape[1], hi.shape[1]
        v = torch.nn.functional.pad(u.flip(-1), (0, steps * S - T)).transpose(0, 1).contiguous()  # (H, B, I*S)
        q = torch.bmm(v.view(H, Bsz * steps, S), lo)  # (H, B*I, 2N)  sum_j v_(S i + j) Lambda^j
        inner = torch.view_as_complex(q.view(H, Bsz, steps, -1, 2))  # (H, B, I, N)
        nxt = (inner * hi[:, None]).sum(2).transpose(0, 1)  # (B, H, N)
        return nxt if state is None else nxt + state * tens["Lam_T"]

    @staticmethod
    def _kernel(dtA: Tensor, w: Tensor, T: int) -> Tensor:
        """Convolution kernel ``K_k = Re(sum_n w_n Lambda_n^k)`` for k < T, as ``(H, T)``.

        With k = S i + j (S ~ sqrt(T)), ``K_(S i + j) = Re(sum_n (w_n Lambda_n^(S i)) Lambda_n^j)``: one
        real batched matmul over the modes between two (H, N, ~sqrt T) power tables.  The plain
        Vandermonde table (H, N, T) needs exp, cos, sin and products over every k; training rebuilds
        the kernel every step and its elementwise work was half of a VSSM training step.
        """
        S = max(1, math.isqrt(T - 1) + 1)  # smallest S with S * S >= T
        k = torch.arange(S, device=dtA.device, dtype=dtA.real.dtype)  # (S,)
        lo_re, lo_im = _powers(dtA, k)  # (H, N, S)  Lambda^j
        hi_re, hi_im = _powers(dtA, k * S)  # (H, N, S)  Lambda^(S i)
        p_re = w.real[..., None] * hi_re - w.imag[..., None] * hi_im  # (H, N, S)  Re(w Lambda^(S i))
        p_im = w.real[..., None] * hi_im + w.imag[..., None] * hi_re  # (H, N, S)  Im(w Lambda^(S i))
        left = torch.cat([p_re, -p_im], dim=1).transpose(1, 2)  # (H, S_i, 2N)
        right = torch.cat([lo_re, lo_im], dim=1)  # (H, 2N, S_j)
        return torch.bmm(left, right).flatten(1)[:, :T]  # (H, T)

    # ----- the three modes ----------------------------------------------------------------------
    def forward(
        self,
        u: Tensor,
        state: Tensor | None = None,
        lengths: Tensor | int | None = None,
        return_state: bool = True,
    ) -> tuple[Tensor, Tensor | None]:
        """Parallel mode. ``u``: ``(B, H, T)`` real; ``state``: ``(B, H, N)`` complex or None (zeros).

        ``lengths`` (``(B,)``, each in 1..T, or one int for every row) asks for row b's state after
        its first ``lengths[b]`` inputs; the outputs are those of all ``T`` steps either way.
        """
        _Bsz, _H, T = u.shape
        if self.runs_short(T, lengths):
            y, nxt = self.short(u.permute(1, 0, 2), state, return_state, lengths)  # type: ignore[arg-type]
            return y.permute(1, 0, 2), nxt  # (B, H, T)
        tens = self._tensors(T, full=state is not None or return_state)
        y = torch.fft.irfft(torch.fft.rfft(u, n=2 * T) * tens["kernel_f"], n=2 * T)[..., :T]  # (B, H, T)
        y = y + u * self.D[:, None]
        if state is not None:
            y = y + self._readout(state, tens, T)  # (B, H, T)
        if not return_state:
            return y, None
        if isinstance(lengths, Tensor):
            return y, self._state_at(u, state, lengths)
        if lengths is None or lengths == T:
            return y, self._advance(u, state, tens)
        return y, self._advance(u[..., :lengths], state, self._tensors(lengths))  # every row after the same step

    def forward_blocks(self, u_a: Tensor, u_m: Tensor, block: int) -> tuple[Tensor, Tensor]:
        """Two streams from the zero state, for training and bounds of block sampling.

        ``u_a`` ``(B, H, T)`` is the absorbed stream; ``u_m`` ``(B, H, T)`` the blocks' own inputs.
        Returns ``y_a`` (the layer over ``u_a``) and ``y_m``, whose step t in block
        ``[s, s + block)`` is the layer's output at t over ``u_a[:s] ++ u_m[s:t+1]``: every block
        continued from the absorbed prefix, all blocks in one pass.  Since the layer is linear in
        its input, ``y_m = K * u_a + K *_blk (u_m - u_a) + D u_m`` with ``*_blk`` the convolution
        restricted to within a block: no per-block states are ever materialised.
        """
        _Bsz, _H, T = u_a.shape
        dtA, _, W = self.discretize()
        K = self._kernel(dtA, W, T)  # (H, T)
        conv_a = torch.fft.irfft(torch.fft.rfft(u_a, n=2 * T) * torch.fft.rfft(K, n=2 * T), n=2 * T)[..., :T]
        y_a = conv_a + u_a * self.D[:, None]  # (B, H, T)
        y_m = conv_a + _block_conv(u_m - u_a, K, min(block, T)) + u_m * self.D[:, None]  # (B, H, T)
        return y_a, y_m

    def _state_at(self, u: Tensor, state: Tensor | None, lengths: Tensor) -> Tensor:
        """State after ``lengths[b]`` inputs for each row, grouped by distinct length (usually one)."""
        dtype = self._complex_dtype()
        out = torch.empty(u.shape[0], self.cfg.width, self.cfg.state_size, dtype=dtype, device=u.device)
        for n in torch.unique(lengths).tolist():
            rows = (lengths == n).nonzero(as_tuple=True)[0]
            out[rows] = self._advance(u[rows, :, :n], None if state is None else state[rows], self._tensors(int(n)))
        return out

    def step(self, u_t: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        """Recurrent mode. ``u_t``: ``(B, H)`` real; ``state``: ``(B, H, N)`` complex."""
        d = self._tensors(0)
        Lam, W = d["Lam"], d["W"]
        nxt = Lam * state + u_t[..., None].to(Lam.dtype)  # (B, H, N)
        y = (nxt * W).sum(-1).real + self.D * u_t  # (B, H)
        return y, nxt


def _block_conv(u: Tensor, K: Tensor, c: int) -> Tensor:
    """Causal convolution of ``u`` ``(B, H, T)`` with ``K`` ``(H, >= c)`` inside each block of ``c``
    steps aligned to step 0 (a block never reads an earlier block), ``(B, H, T)``.

    Short blocks are a dense Toeplitz product (``B H T c`` multiply-adds, no FFT); long ones an
    FFT convolution of length ``2c`` over the blocks stacked as a batch.
    """
    T = u.shape[-1]
    nb = -(-T // c)  # blocks, the last one padded with zeros (causal: padding never leaks back)
    blocks = torch.nn.functional.pad(u, (0, nb * c - T)).unflatten(-1, (nb, c))  # (B, H, nb, c)
    Kc = K[:, :c]  # (H, c)
    if c <= 64:
        lag = torch.arange(c, device=u.device)
        diff = lag[:, None] - lag[None, :]  # (c_t, c_k) t - k
        toep = torch.where(diff >= 0, Kc[:, diff.clamp_min(0)], 0.0)  # (H, c_t, c_k)
        y = torch.einsum("bhnk,htk->bhnt", blocks, toep)  # (B, H, nb, c)
    else:
        y = torch.fft.irfft(torch.fft.rfft(blocks, n=2 * c) * torch.fft.rfft(Kc, n=2 * c)[:, None], n=2 * c)[..., :c]
    return y.flatten(-2)[..., :T]
