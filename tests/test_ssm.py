"""The S4D layer and the stacked network: parallel mode == recurrence, from any initial state."""

from __future__ import annotations

import pytest
import torch

from vssm.model.network import SSMNet, SSMNetConfig
from vssm.model.ssm import S4D, S4DConfig

F64 = torch.float64


def recurrent(layer, u, h):
    ys = []
    for t in range(u.shape[-1]):
        y, h = layer.step(u[..., t], h)
        ys.append(y)
    return torch.stack(ys, -1), h


def written_out_zoh(layer: S4D) -> tuple[torch.Tensor, torch.Tensor]:
    """``Lambda`` and ``B_bar`` ``(H, N)`` written out from a layer's parameters (zero-order hold, model/ssm.py's
    docstring), not from its own ``discretize``."""
    A = torch.complex(-torch.exp(layer.A_log), layer.A_imag).detach()  # (H, N)
    Lam = torch.exp(A * torch.exp(layer.log_dt.detach())[:, None])
    return Lam, (Lam - 1) / A


def test_the_state_is_the_zoh_recurrences_over_b_bar():
    """Against the zero-order-hold recurrence written out from the parameters (``h_t = Lambda h_t-1 + B_bar u_t``,
    ``y_t = Re(C h_t) + D u_t``, model/ssm.py's docstring), not from the layer's own ``discretize``: the layer's
    outputs, on every path, and its state ``g`` is ``h / B_bar`` (a consistent slip in ``W``, say ``C / B_bar``,
    would pass every test that compares the layer's paths with each other)."""
    torch.manual_seed(4)
    layer = S4D(S4DConfig(width=6, state_size=5)).double()
    Lam, B_bar = written_out_zoh(layer)
    C = torch.view_as_complex(layer.C.detach())
    u = torch.randn(2, 6, 40, dtype=F64)  # (B, H, T)
    h = torch.randn(2, 6, 5, dtype=torch.complex128)
    g0 = h / B_bar
    ys = []
    for t in range(u.shape[-1]):
        h = Lam * h + B_bar * u[..., t, None]
        ys.append((C * h).sum(-1).real + layer.D.detach() * u[..., t])
    y_ref = torch.stack(ys, -1)  # (B, H, T)
    with torch.no_grad():
        for y, g in (layer(u, g0), recurrent(layer, u, g0), layer.scan(u.transpose(1, 2), g0)):
            y = y if y.shape == y_ref.shape else y.transpose(1, 2)
            torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
            torch.testing.assert_close(g * B_bar, h, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("T", [1, 7, 64])
def test_parallel_from_random_state_equals_recurrence(T):
    torch.manual_seed(T)
    layer = S4D(S4DConfig(width=6, state_size=5)).double()
    u = torch.randn(3, 6, T, dtype=F64)
    h0 = torch.randn(3, 6, 5, dtype=torch.complex128)
    y, hT = layer(u, h0)
    y_ref, h_ref = recurrent(layer, u, h0)
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(hT, h_ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("T", [1, 2, 17, 30, 784])
def test_training_mode_kernel_equals_recurrence(T):
    """Training builds the kernel from two sqrt(T) power tables; any T, square or not."""
    torch.manual_seed(T)
    layer = S4D(S4DConfig(width=5, state_size=4)).double()
    u = torch.randn(2, 5, T, dtype=F64, requires_grad=True)
    y, state = layer(u, None, return_state=False)
    assert state is None
    y_ref, _ = recurrent(layer, u, layer.initial_state(2))
    torch.testing.assert_close(y, y_ref, rtol=1e-9, atol=1e-10)
    if T == 30:  # and the gradients through the factorised kernel
        g = torch.autograd.grad(y.square().sum(), [u, *layer.parameters()])
        g_ref = torch.autograd.grad(y_ref.square().sum(), [u, *layer.parameters()])
        for a, b in zip(g, g_ref, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)


def test_gradients_of_parallel_mode_match_recurrence():
    torch.manual_seed(0)
    layer = S4D(S4DConfig(width=4, state_size=3)).double()
    u = torch.randn(2, 4, 9, dtype=F64)
    h0 = torch.randn(2, 4, 3, dtype=torch.complex128)
    grads = []
    for run in (lambda: layer(u, h0), lambda: recurrent(layer, u, h0)):
        layer.zero_grad()
        y, h = run()
        (y.square().sum() + h.abs().sum()).backward()
        grads.append([p.grad.clone() for p in layer.parameters()])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)


def test_per_row_lengths_give_each_rows_own_final_state():
    torch.manual_seed(1)
    layer = S4D(S4DConfig(width=4, state_size=3)).double()
    u = torch.randn(3, 4, 10, dtype=F64)
    h0 = torch.randn(3, 4, 3, dtype=torch.complex128)
    lengths = torch.tensor([10, 4, 1])
    _, h = layer(u, h0, lengths=lengths)
    for b, n in enumerate(lengths.tolist()):
        _, ref = recurrent(layer, u[b : b + 1, :, :n], h0[b : b + 1])
        torch.testing.assert_close(h[b : b + 1], ref, rtol=1e-10, atol=1e-10)


def test_layer_is_stable_for_any_weights():
    layer = S4D(S4DConfig(width=8, state_size=4)).double()
    with torch.no_grad():
        for p in layer.parameters():
            p.normal_(0, 5)
        _, Lam, _ = layer.discretize()
    assert bool((Lam.abs() < 1).all())


def test_inference_cache_follows_weight_updates():
    torch.manual_seed(2)
    layer = S4D(S4DConfig(width=4, state_size=3)).double()
    u = torch.randn(1, 4, 8, dtype=F64)
    with torch.no_grad():
        y1, _ = layer(u)
        assert layer(u)[0] is not y1 and torch.equal(layer(u)[0], y1)  # served from the cache
        layer.log_dt.add_(0.3)  # an optimiser step modifies weights in place
        y2, _ = layer(u)
    with torch.enable_grad():
        y_fresh, _ = layer(u)
    torch.testing.assert_close(y2, y_fresh.detach())
    assert not torch.allclose(y1, y2)


@pytest.mark.parametrize("tokens", [True, False])
def test_network_parallel_equals_step_and_chunks(tokens):
    torch.manual_seed(3)
    cfg = SSMNetConfig(n_in=6, n_out=5, tokens=tokens, width=8, state_size=4, layers=3)
    net = SSMNet(cfg).double().eval()
    x = torch.randint(0, 6, (2, 12)) if tokens else torch.randn(2, 12, 6, dtype=F64)
    state0 = net.initial_state(2)
    s0 = torch.randn_like(state0)  # a random (non-zero) initial state
    y, s = net(x, s0)
    ys, h = [], s0
    for t in range(12):
        yt, h = net.step(x[:, t], h)
        ys.append(yt)
    torch.testing.assert_close(y, torch.stack(ys, 1), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(s, h, rtol=1e-9, atol=1e-9)
    ya, sa = net(x[:, :5], s0)
    yb, sb = net(x[:, 5:], sa)
    torch.testing.assert_close(torch.cat([ya, yb], 1), y, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(sb, s, rtol=1e-9, atol=1e-9)
    assert state0.shape == (2, 3, 8, 4) and not state0.abs().any()


def test_inference_cache_is_bounded_and_drops_stale_weights():
    layer = S4D(S4DConfig(width=4, state_size=3)).double()
    layer._cache.max_bytes = 20_000
    with torch.no_grad():
        for T in (8, 16, 80, 100, 128, 200):  # short lengths cache their matrix, longer ones FFT tensors
            layer(torch.randn(1, 4, T, dtype=F64))
        sizes = [sum(v.numel() * v.element_size() for v in e.values()) for e in layer._cache.entries.values()]
        assert sum(sizes) <= 20_000 or len(sizes) == 1
        assert 200 in layer._cache.entries  # the most recent length is kept
        layer.D.add_(1.0)
        layer(torch.randn(1, 4, 8, dtype=F64))
        assert list(layer._cache.entries) == [("short", 8, 8)]  # entries of the old weights are gone


@pytest.mark.parametrize("T", [1, 2, 3, 5, 8, 16, 31, 64])
@pytest.mark.parametrize("fresh", [True, False])
def test_short_inference_path_equals_the_fft_path_and_the_recurrence(T, fresh):
    """Inference over at most SHORT steps runs the layer as one matmul; it must never drift from the
    reference paths, from the zero state or any other, for outputs and the next state."""
    from vssm.model.ssm import SHORT

    assert T <= SHORT
    torch.manual_seed(T)
    layer = S4D(S4DConfig(width=6, state_size=5)).double()
    u = torch.randn(3, 6, T, dtype=F64)
    h0 = None if fresh else torch.randn(3, 6, 5, dtype=torch.complex128)
    with torch.no_grad():
        y, hT = layer(u, h0)
        y_ns, none = layer(u, h0, return_state=False)
    y_fft, h_fft = layer(u, h0)  # grad enabled: the FFT path
    y_rec, h_rec = recurrent(layer, u, layer.initial_state(3) if fresh else h0)
    for a, b in ((y, y_fft), (y, y_rec), (hT, h_fft), (hT, h_rec), (y_ns, y)):
        torch.testing.assert_close(a, b.detach(), rtol=1e-10, atol=1e-10)
    assert none is None


def test_state_of_h_is_h_over_b_bar_and_zero_where_b_bar_rounds_to_zero():
    """A state held as ``h`` (model/state.py's format 1) converts to ``g = h / B_bar``; where a step so short
    that float rounds Lambda to 1 makes B_bar 0, ``h`` never left 0 and ``g`` is 0, not NaN."""
    layer = S4D(S4DConfig(width=3, state_size=4))
    with torch.no_grad():
        layer.log_dt[0] = -60.0
        B_bar = written_out_zoh(layer)[1]  # (H, N)
        assert (B_bar == 0).any() and (B_bar != 0).any()
        h = torch.randn(2, 3, 4, dtype=torch.complex64, generator=torch.Generator().manual_seed(0))
        h = torch.where(B_bar == 0, 0, h)
        g = layer.state_of_h(h)
    assert g.dtype == h.dtype and torch.isfinite(torch.view_as_real(g)).all()
    assert (g[:, B_bar == 0] == 0).all()
    torch.testing.assert_close(g * B_bar, h)
