"""The compiled kernels (model/native.py): equal to the reference paths, never required."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from vssm.model import native, sampling
from vssm.model.network import SSMNet, SSMNetConfig
from vssm.model.ssm import S4D, S4DConfig
from vssm.model.state import GenState
from vssm.model.vssm import VSSM, VSSMConfig

F64 = torch.float64

# keyed_uniform(seed 3, positions 5 and 6, the token stream): sessions stored anywhere rely on these bits
_UNIFORMS_3_5_6 = torch.tensor([0.41250893473625183, 0.8107076585292816], dtype=F64)

pytestmark = pytest.mark.skipif(not native.available(), reason="no C compiler: the kernel cannot be built here")


def _scan_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(S4D, "scan_max_tokens", 0)


@pytest.mark.parametrize("T", [1, 2, 5, 16, 33, 64])
@pytest.mark.parametrize("fresh", [True, False])
@pytest.mark.parametrize("shape", [(37, 5), (64, 8), (40, 6)])
def test_kernel_equals_the_matrices_and_the_fft_path_from_any_state(T, fresh, shape):
    """Outputs and the state after any step ``at`` of the pass: a width that is not a multiple of the lanes; whole
    vectors of channels in groups of four modes, where the states are read and written as vectors (csrc/s4d_block.c,
    MODES_OUTER); whole vectors (with 64-byte vectors) and a part group of modes."""
    torch.manual_seed(T)
    width, modes = shape
    layer = S4D(S4DConfig(width=width, state_size=modes)).double()
    u = torch.randn(3, T, width, dtype=F64)  # (B, T, H)
    h0 = None if fresh else torch.randn(3, width, modes, dtype=torch.complex128)
    for at in sorted({1, max(1, T // 2), T}):
        with torch.no_grad():
            y, h_at = layer.scan(u, h0, at=at)
            y_mat, h_mat = layer.short(u.permute(2, 0, 1), h0, at=at)  # (H, B, T)
            y_none, none = layer.scan(u, h0, return_state=False)
        y_fft, h_fft = layer(u.transpose(1, 2), h0, lengths=at)  # grad enabled: the FFT path
        for a, b in ((y, y_mat.permute(1, 2, 0)), (y, y_fft.detach().transpose(1, 2)), (h_at, h_mat), (h_at, h_fft)):
            torch.testing.assert_close(a, b.detach(), rtol=1e-10, atol=1e-10)
        assert none is None and torch.equal(y_none, y)
    with torch.no_grad():  # the state before the first step is the one given (the references take at >= 1)
        y0, h_0 = layer.scan(u, h0, at=0)
    assert torch.equal(y0, y) and torch.equal(h_0, layer.initial_state(3) if fresh else h0)


def test_kernel_reads_strided_inputs_and_states():
    """An input whose rows and steps are strided (channels contiguous) and a state sliced out of a
    network's (B, L, H, N) state are read in place, with no copy."""
    torch.manual_seed(0)
    layer = S4D(S4DConfig(width=8, state_size=3)).double()
    u = torch.randn(2, 4, 11, dtype=F64)[..., 1:9]  # (B, T, H): step stride 11, row stride 44, channels 1
    assert u.stride() == (44, 11, 1) and not u.is_contiguous()
    stacked = torch.randn(2, 3, 8, 3, dtype=torch.complex128)  # (B, L, H, N)
    with torch.no_grad():
        y, h = layer.scan(u, stacked[:, 1])
        y_ref, h_ref = layer.scan(u.contiguous(), stacked[:, 1].contiguous())
    torch.testing.assert_close(y, y_ref, rtol=0, atol=0)
    torch.testing.assert_close(h, h_ref, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_kernel_layer_norm_and_gelu_equal_pytorchs(dtype):
    """The block's LayerNorm before the recurrence and its exact GELU after, in the same call."""
    torch.manual_seed(2)
    layer = S4D(S4DConfig(width=40, state_size=6)).to(dtype)
    ln = torch.nn.LayerNorm(40).to(dtype)
    with torch.no_grad():
        ln.weight.uniform_(0.5, 1.5)
        ln.bias.normal_()
        x = 3 * torch.randn(2, 9, 40, dtype=dtype) + 1
        h0 = torch.randn(2, 40, 6, dtype=torch.complex128 if dtype == F64 else torch.complex64)
        g, h = layer.scan(x, h0, at=4, norm=(ln.weight, ln.bias, ln.eps), gelu=True)
        y_ref, h_ref = layer.scan(ln(x), h0, at=4)
    tol = 1e-10 if dtype == F64 else 1e-5
    torch.testing.assert_close(g, torch.nn.functional.gelu(y_ref), rtol=tol, atol=tol)
    torch.testing.assert_close(h, h_ref, rtol=tol, atol=tol)


def test_kernel_refuses_what_it_cannot_read_safely():
    """The C code trusts its shapes: a wrong state, weight table or step is refused before the call,
    and a state broadcast over the batch takes the reference path."""
    layer = S4D(S4DConfig(width=8, state_size=3)).double()
    u = torch.randn(3, 5, 8, dtype=F64)
    ok = torch.randn(3, 8, 3, dtype=torch.complex128)
    with torch.no_grad():
        for state, at in ((ok[:1], 5), (ok[..., :2], 5), (ok.to(torch.complex64), 5), (ok, 6), (ok, -1)):
            with pytest.raises(ValueError):
                layer.scan(u, state, at=at)
        with pytest.raises(ValueError):
            layer.scan(u, ok, norm=(torch.ones(7, dtype=F64), torch.zeros(8, dtype=F64), 1e-5))
        y, _ = layer.step(u[:, 0], ok[:1])  # (1, H, N) broadcast over 3 rows: the eager step, as before
    y_ref, _ = layer.step(u[:, 0], ok[:1].expand(3, -1, -1))  # grad enabled: the eager step
    torch.testing.assert_close(y, y_ref.detach())
    assert not layer.runs_scan(u.float(), 5)  # a float32 input to a float64 layer: the reference path


def test_float32_kernel_stays_within_rounding_of_the_matrices():
    torch.manual_seed(1)
    layer = S4D(S4DConfig(width=64, state_size=32))
    u = torch.randn(1, 56, 64)
    h0 = torch.randn(1, 64, 32, dtype=torch.complex64)
    with torch.no_grad():
        y, h = layer.scan(u, h0, at=28)
        y_mat, h_mat = layer.short(u.permute(2, 0, 1), h0, at=28)
    torch.testing.assert_close(y, y_mat.permute(1, 2, 0), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(h, h_mat, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(("B", "T", "at", "fresh"), [(1, 56, 28, False), (3, 7, 7, True), (2, 9, 4, False)])
def test_float32_network_pass_stays_within_rounding_of_the_blocks(B, T, at, fresh, monkeypatch):
    """A float32 network wide enough for the output linear's vector tiles (2H = 80: two tiles of 32
    outputs and a tail of 16) and a head of 40 outputs, against its blocks one by one."""
    torch.manual_seed(B + T)
    net = SSMNet(SSMNetConfig(n_in=5, n_out=40, width=40, state_size=6, layers=2)).eval()
    x = torch.randint(0, 5, (B, T))
    s0 = None if fresh else torch.randn_like(net.initial_state(B)) * 0.5
    with torch.no_grad():
        assert net._native_ok(net.inp(x), T, s0)
        y, s = net(x, s0, lengths=at)
        _per_block(monkeypatch)
        y_ref, s_ref = net(x, s0, lengths=at)
    torch.testing.assert_close(y, y_ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(s, s_ref, rtol=1e-4, atol=1e-4)


def test_network_and_its_step_are_unchanged_by_the_kernel(monkeypatch):
    """The network's short passes and recurrent steps, with the kernel and without, in float64."""
    torch.manual_seed(3)
    net = SSMNet(SSMNetConfig(n_in=6, n_out=5, width=8, state_size=4, layers=3)).double().eval()
    x = torch.randint(0, 6, (2, 12))
    s0 = torch.randn_like(net.initial_state(2))

    def run() -> tuple[torch.Tensor, ...]:
        with torch.no_grad():
            y, s = net(x, s0, lengths=5)
            y1, s1 = net.step(x[:, 0], s0)
        return y, s, y1, s1

    with torch.no_grad():
        assert net.blocks[0]._fused(torch.zeros(2, 12, 8, dtype=F64), 12, s0[:, 0])
    with_kernel = run()
    _scan_off(monkeypatch)
    with torch.no_grad():
        assert not net.blocks[0]._fused(torch.zeros(2, 12, 8, dtype=F64), 12, s0[:, 0])
    for a, b in zip(with_kernel, run(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_the_network_pass_writes_into_a_spare_only_if_it_shares_no_memory_with_the_state():
    """``out`` is used when it is a separate plain tensor; a view of the state's memory (the state itself,
    an overlapping slice, its conjugate view) or a conjugate-bit ``out`` is refused, and the result is
    the same whichever way."""
    torch.manual_seed(5)
    net = SSMNet(SSMNetConfig(n_in=6, n_out=5, width=8, state_size=4, layers=3)).double().eval()
    x = torch.randint(0, 6, (2,))
    big = torch.randn(3, 3, 8, 4, dtype=torch.complex128)
    with torch.no_grad():
        ref_logits, ref_state = net.step(x, big[:2].clone())
        spare = torch.empty_like(ref_state)
        logits, nxt = net.step(x, big[:2].clone(), spare)
        assert nxt.data_ptr() == spare.data_ptr()  # a separate tensor: written into
        torch.testing.assert_close(nxt, ref_state, rtol=0, atol=0)
        torch.testing.assert_close(logits, ref_logits, rtol=0, atol=0)
        for state, out in [
            (big[:2], big[:2]),  # the state itself
            (big[:2], big[1:]),  # overlapping rows
            (big[:2].conj(), big[:2]),  # the caller's memory behind a conjugate view
            (big[:2].clone(), torch.empty_like(ref_state).conj()),  # a conjugate-bit spare
        ]:
            kept, expected = big.clone(), net.step(x, state.clone())
            logits, nxt = net.step(x, state, out)
            assert nxt.data_ptr() != out.data_ptr()
            assert torch.equal(big, kept)  # the caller's memory is untouched
            torch.testing.assert_close(nxt, expected[1], rtol=0, atol=0)
            torch.testing.assert_close(logits, expected[0], rtol=0, atol=0)


def test_an_ar_generation_loop_writes_into_its_own_dead_states_never_the_caller_s(monkeypatch):
    """The AR-SSM's loop hands each step a state it has read for the last time, and the native pass
    writes the next state there: the same tokens and final state as step-by-step calls (which have no
    spare), the caller's state untouched, and from the third step on no fresh state allocated.  (The
    loop in PyTorch: the scored path and any device take it; on the CPU the compiled loop runs.)"""
    from vssm.model.autoregressive import ARSSM, ARSSMConfig

    monkeypatch.setattr(native, "ar_loop", lambda: None)

    torch.manual_seed(4)
    m = ARSSM(ARSSMConfig(vocab_size=3, width=8, state_size=4, layers=3)).double().eval()
    start = m.start(torch.randint(0, 3, (2, 5)), [7, 8])
    kept = {k: v.clone() for k, v in start.tensors.items()}
    written, reused = [], []
    real = native._net

    def spy(*args, **kwargs):
        out = args[9] if len(args) > 9 else kwargs.get("out")
        logits, nxt = real(*args, **kwargs)
        written.append(nxt.data_ptr())
        reused.append(out is not None and nxt.data_ptr() == out.data_ptr())
        return logits, nxt

    monkeypatch.setattr(native, "_net", spy)
    tokens, state = m.generate(start, 9)
    assert reused == [False, False] + [True] * 7 and len(set(written)) == 2  # two buffers take turns
    for k, v in kept.items():
        assert torch.equal(start[k], v), k  # the caller's state is a value: never written
    monkeypatch.setattr(native, "_net", real)
    ref_state, ref_tokens = start, []
    for _ in range(9):  # one token per call: a loop of one step has no dead state to reuse
        t, ref_state = m.generate(ref_state, 1)
        ref_tokens.append(t)
    assert torch.equal(tokens, torch.cat(ref_tokens, dim=1))
    for k, v in ref_state.tensors.items():
        torch.testing.assert_close(state[k], v, rtol=0, atol=0)


@pytest.mark.parametrize("c", [1, 4, 7])
def test_block_sampling_draws_the_same_tokens_with_and_without_the_kernel(c, monkeypatch):
    torch.manual_seed(0)
    m = VSSM(VSSMConfig(vocab_size=3, n_latents=2, n_classes=3, width=8, state_size=4, max_position=20)).double().eval()
    prompt = torch.randint(0, 3, (2, 3))

    def draw() -> torch.Tensor:
        state = m.start(prompt, [5, 6])
        return m.generate(state, 17, block_size=c, resumable=True)[0]

    tokens = draw()
    _scan_off(monkeypatch)
    assert torch.equal(draw(), tokens)


def test_without_a_compiler_the_model_keeps_the_matrices(monkeypatch, tmp_path):
    """No compiler (or VSSM_NATIVE=0): no kernel, a warning, and the same outputs by the matrices."""
    monkeypatch.setattr(native, "_lib", None)
    monkeypatch.setattr(native, "_tried", False)
    monkeypatch.setenv("VSSM_KERNEL_CACHE", str(tmp_path))
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    assert not native.available() and native.block() is None and native.keyed() is None
    assert native.categorical() is None and native.max_tokens() == 0 and native.vector_bits() == 0
    seed, pos = torch.tensor([3]), torch.tensor([[5, 6]])
    torch.testing.assert_close(sampling.keyed_uniform(seed, pos, 2, 1, F64)[0, :, 0], _UNIFORMS_3_5_6)
    layer = S4D(S4DConfig(width=4, state_size=3)).double()
    assert not layer.runs_scan(torch.zeros(1, 2, 4, dtype=F64), 2)
    monkeypatch.setattr(native, "_tried", False)
    monkeypatch.delenv("CC")
    monkeypatch.setenv("VSSM_NATIVE", "0")
    assert not native.available()


def test_the_kernel_says_the_vector_width_it_was_built_for():
    """The build's vectors (their tiles follow them: csrc/s4d_block.c), which the benchmark records beside the CPU."""
    bits = native.vector_bits()
    assert bits in (128, 256, 512) and bits == 8 * native._load().s4d_vector_bytes()
    host = native.host_cpu()
    assert host["kernel_vector_bits"] == bits and host["cpu"]
    assert host["cpu_id"] == "" or host["cpu_id"].startswith("family ")


def test_the_kernel_is_compiled_once_per_source_and_cpu(monkeypatch, tmp_path):
    monkeypatch.setattr(native, "_lib", None)
    monkeypatch.setattr(native, "_tried", False)
    monkeypatch.setenv("VSSM_KERNEL_CACHE", str(tmp_path))
    path = native.kernel_path()
    assert path.parent == tmp_path and not path.exists()
    assert native.available() and path.exists()
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary files left behind
    header = tmp_path / "kernels.h"  # a header the sources include, changed: another file
    header.write_bytes(native.HEADERS[0].read_bytes() + b"\n")
    monkeypatch.setattr(native, "HEADERS", [header])
    assert native.kernel_path() != path
    monkeypatch.setattr(native, "FLAGS", [*native.FLAGS, "-DVSSM_TEST"])
    assert native.kernel_path() != path  # other flags, another file


def test_the_kernels_build_with_one_fma_for_every_multiply_add_or_say_why_not(monkeypatch, tmp_path, caplog):
    """Every build asks for ``native.FMA`` (csrc/s4d_block.c: a row's result must not depend on the rows beside it);
    a compiler that refuses that parameter by name builds without it and says so, and a build that fails for any
    other reason fails, never retried without it."""
    import subprocess

    calls: list[list[str]] = []

    def fake(refuse: bytes | None):
        def run(cmd: list[str], **_: object) -> None:
            calls.append(cmd)
            if native.FMA[0] in cmd and refuse is not None:
                raise subprocess.CalledProcessError(1, cmd, b"", refuse)
            Path(cmd[cmd.index("-o") + 1]).write_bytes(b"built")

        return run

    refused = b"gcc: error: invalid --param name 'avoid-fma-max-bits'"
    for refuse, ok in ((None, True), (refused, True), (b"kernels.c:1: error: expected ';'", False)):
        calls.clear()
        monkeypatch.setattr(native.subprocess, "run", fake(refuse))
        target = tmp_path / f"k{len(caplog.records)}-{ok}.so"
        with caplog.at_level("WARNING", logger=native.__name__):
            if ok:
                native._compile(target)
                assert target.read_bytes() == b"built"
            else:
                with pytest.raises(subprocess.CalledProcessError):
                    native._compile(target)
        assert native.FMA[0] in calls[0]
        assert all(native.FMA[0] in c for c in calls) is (refuse is None or not ok)
        assert any("refuses" in r.message for r in caplog.records) is (refuse == refused)
        caplog.clear()


def _torch_keyed(monkeypatch: pytest.MonkeyPatch, *args: object) -> torch.Tensor:
    with monkeypatch.context() as m:
        m.setattr(native, "_lib", None)  # _tried stays True: keyed() is None, the PyTorch hash runs
        assert native.keyed() is None
        return sampling.keyed_uniforms(*args)


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_compiled_keyed_uniforms_equal_pytorchs_bit_for_bit(monkeypatch, dtype):
    """Seeds over the whole int64 range (negative ones too), positions past 2**32, several streams,
    widths 0, 1 and odd, positions broadcast over the batch and sliced out of a larger tensor."""
    g = torch.Generator().manual_seed(0)
    seed = torch.cat([torch.randint(-(2**62), 2**62, (4,), generator=g), torch.tensor([0, -1, 2**63 - 1])])  # (7,)
    positions = torch.randint(0, 2**40, (7, 40), generator=g)  # (B, T)
    cases = [
        (seed, positions, (2,), 1),
        (seed, positions, (1, 2, 3), 8),
        (seed, positions[:, 3:20:2], (3,), 13),  # strided positions
        (seed[::2], torch.arange(9).expand(4, 9), (1,), 5),  # a broadcast batch axis, strided seeds
        (seed, positions, (1,), 0),
    ]
    for args in cases:
        compiled = native.keyed()(*args, dtype)  # type: ignore[misc]
        assert compiled.shape == (args[0].shape[0], len(args[2]), args[1].shape[1], args[3])
        assert torch.equal(compiled, _torch_keyed(monkeypatch, *args, dtype))
        assert torch.equal(sampling.keyed_uniforms(*args, dtype), compiled)  # the compiled hash is the default
        assert ((compiled > 0) & (compiled < 1)).all()
    # shapes the PyTorch hash broadcasts (one seed for every row, one row of positions for every seed)
    one_seed, one_row = seed[:1], positions[:1]
    for args in [(one_seed, positions, (1,), 3), (seed, one_row, (2,), 3)]:
        assert torch.equal(sampling.keyed_uniforms(*args, dtype), _torch_keyed(monkeypatch, *args, dtype))


def test_compiled_keyed_uniforms_refuse_what_they_cannot_read():
    fn = native.keyed()
    seed, pos = torch.tensor([1, 2]), torch.zeros(2, 3, dtype=torch.long)
    for bad in [(seed.int(), pos), (seed, pos.int()), (seed[:1], pos), (seed, pos[0]), (seed[:, None], pos)]:
        with pytest.raises(ValueError, match="keyed uniforms"):
            fn(*bad, (1,), 2, torch.float32)
    with pytest.raises(ValueError, match="keyed uniforms"):
        fn(seed, pos, (1,), 2, torch.float16)


def test_a_block_in_training_mode_keeps_its_dropout_on_the_kernel_path(monkeypatch):
    """The kernel path builds the block's output itself (no nn.Linear call): in training mode under
    no_grad (a validation pass of a model left in train()) its dropout must still apply, as on the matrices."""
    from vssm.model.network import SSMBlock

    torch.manual_seed(0)
    blk = SSMBlock(8, 4, 0.5).double().train()
    x, st = torch.randn(2, 3, 8, dtype=F64), torch.randn(2, 8, 4, dtype=torch.complex128)
    with torch.no_grad():
        assert blk._fused(x, 3, st)
        torch.manual_seed(1)
        y_kernel, h_kernel = blk(x, st, None, True)
        _scan_off(monkeypatch)
        torch.manual_seed(1)
        y_matrices, h_matrices = blk(x, st, None, True)
        y_eval, _ = blk.eval()(x, st, None, True)
    torch.testing.assert_close(y_kernel, y_matrices, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(h_kernel, h_matrices, rtol=1e-10, atol=1e-10)
    assert not torch.allclose(y_kernel, y_eval)  # the dropout did apply


def test_a_conjugate_or_negated_state_view_reads_as_its_values():
    """A lazy conjugate (``.conj()``) or negation is a flag on the tensor, not in its memory: the kernel
    must read the values, as PyTorch's own paths do."""
    torch.manual_seed(3)
    layer = S4D(S4DConfig(width=6, state_size=4)).double()
    u = torch.randn(2, 5, 6, dtype=F64)
    st = torch.randn(2, 6, 4, dtype=torch.complex128)
    with torch.no_grad():
        for view in (st.conj(), torch._neg_view(st)):
            assert view.is_conj() or view.is_neg()
            y, h = layer.scan(u, view)
            y_ref, h_ref = layer.scan(u, view.resolve_conj().resolve_neg().clone())
            torch.testing.assert_close(y, y_ref, rtol=0, atol=0)
            torch.testing.assert_close(h, h_ref, rtol=0, atol=0)


def test_a_hook_on_the_blocks_output_layer_still_runs_on_the_kernel_path():
    from vssm.model.network import SSMBlock

    torch.manual_seed(0)
    blk = SSMBlock(8, 4, 0.0).double().eval()
    x, st = torch.randn(1, 2, 8, dtype=F64), torch.randn(1, 8, 4, dtype=torch.complex128)
    with torch.no_grad():
        plain, _ = blk(x, st, None, True)
        seen = []
        blk.out.register_forward_hook(lambda mod, args, out: seen.append(out.shape))
        assert blk._fused(x, 2, st)
        hooked, _ = blk(x, st, None, True)
    assert seen == [(1, 2, 16)] and torch.equal(hooked, plain)


def _per_block(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every network pass block by block (each block's own kernel call), not as one native call."""
    monkeypatch.setattr(SSMNet, "_native_ok", lambda self, h, T, state: False)


@pytest.mark.parametrize("tokens", [True, False])
# (8, 32): the whole pass takes the kernel (S4D.scan_max_tokens), its blocks one by one the matrices (a layer alone);
# (1, 300) and (2, 130): past SHORT, against the blocks' FFT path
@pytest.mark.parametrize(
    ("B", "T", "at"),
    [(1, 1, None), (1, 16, 9), (2, 7, None), (3, 32, 0), (4, 24, 24), (8, 32, 20), (1, 300, 120), (2, 130, None)],
)
@pytest.mark.parametrize("fresh", [True, False])
@pytest.mark.parametrize("width", [8, 70])  # 70: two full blocks of the kernel's 32 lanes and a remainder
def test_one_native_network_pass_equals_the_blocks_one_by_one(tokens, B, T, at, fresh, width, monkeypatch):
    """The whole network in one call (csrc/s4d_block.c, NET) against its blocks called one by one, in
    float64: logits, the state after ``at`` steps, and the recurrent step (the AR-SSM's path)."""
    # the whole pass on the kernel, whatever this machine's crossover (with narrow vectors: 256 tokens)
    monkeypatch.setattr(S4D, "scan_max_tokens", 2048)
    torch.manual_seed(B * 100 + T)
    n_in = 5 if tokens else 7
    cfg = SSMNetConfig(n_in=n_in, n_out=6, tokens=tokens, width=width, state_size=4, layers=3)
    net = SSMNet(cfg).double().eval()
    x = torch.randint(0, n_in, (B, T)) if tokens else torch.randn(B, T, n_in, dtype=F64)
    s0 = None if fresh else torch.randn_like(net.initial_state(B))

    def run() -> tuple[torch.Tensor | None, ...]:
        with torch.no_grad():
            y, s = net(x, s0, lengths=at)
            y_nostate, none = net(x, s0, return_state=False)
            y1, s1 = net.step(x[:, 0], net.initial_state(B) if s0 is None else s0)
        return y, s, y_nostate, none, y1, s1

    with torch.no_grad():
        assert net._native_ok(net.inp(x), T, s0)
    native_pass = run()
    _per_block(monkeypatch)
    for a, b in zip(native_pass, run(), strict=True):
        if a is None or b is None:
            assert a is None and b is None
        else:
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_the_native_pass_follows_the_weights_and_reads_any_state_view(monkeypatch):
    """Its packed weights are rebuilt after an in-place change (an optimiser step, a load), and a state
    that is a strided row of a larger batch, a conjugate view or a float32 model's all read right."""
    torch.manual_seed(1)
    net = SSMNet(SSMNetConfig(n_in=4, n_out=3, width=8, state_size=4, layers=2)).double().eval()
    x = torch.randint(0, 4, (1, 6))
    big = torch.randn(3, 2, 8, 4, dtype=torch.complex128)
    states = [big[1:2], big[2:3].conj(), big.transpose(2, 3).contiguous().transpose(2, 3)[:1]]
    with torch.no_grad():
        first = [net(x, s)[0] for s in states]
        net.blocks[1].out.weight.add_(0.5)
        net.head.bias.sub_(1.0)
        net.blocks[0].ssm.C.mul_(2.0)
        after = [net(x, s) for s in states]
    assert not torch.allclose(first[0], after[0][0])
    _per_block(monkeypatch)
    with torch.no_grad():
        for s, (y, h) in zip(states, after, strict=True):
            y_ref, h_ref = net(x, s.resolve_conj().clone())
            torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(h, h_ref, rtol=1e-12, atol=1e-12)
    monkeypatch.undo()
    net32 = SSMNet(SSMNetConfig(n_in=4, n_out=3, width=8, state_size=4, layers=2)).eval()
    with torch.no_grad():
        y32, h32 = net32(x, None)
        _per_block(monkeypatch)
        y_ref, h_ref = net32(x, None)
    torch.testing.assert_close(y32, y_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(h32, h_ref, rtol=1e-5, atol=1e-5)


def test_what_one_native_call_cannot_reproduce_keeps_the_blocks_one_by_one(monkeypatch):
    """A hook (on a module or global), an active dropout (the network's or one block's), a parametrised
    or removed weight, LayerNorms of different eps, a gradient, a state broadcast over the batch or
    per-row lengths: the block path, with its results."""
    torch.manual_seed(2)
    net = SSMNet(SSMNetConfig(n_in=4, n_out=3, width=8, state_size=4, layers=2, dropout=0.5)).double().eval()
    x = torch.randint(0, 4, (3, 5))
    h = net.inp(x).detach()
    assert not net._native_ok(h, 5, None)  # gradients enabled
    with torch.no_grad():
        assert net._native_ok(h, 5, None)
        assert not net._native_ok(h, 5, net.initial_state(1))  # one state broadcast over three rows
        net.train()
        assert not net._native_ok(h, 5, None)  # dropout on
        net.eval()
        net.blocks[1].train()
        assert not net._native_ok(h, 5, None)  # one block's dropout on
        net.blocks[1].eval()
        seen = []
        handle = net.head.register_forward_hook(lambda mod, args, out: seen.append(out.shape))
        assert not net._native_ok(h, 5, None)
        net(x)
        assert seen == [(3, 5, 3)]
        handle.remove()
        handle = net.blocks[1].out.register_forward_hook(lambda mod, args, out: seen.append(out.shape))
        assert not net._native_ok(h, 5, None)
        handle.remove()
        handle = torch.nn.modules.module.register_module_forward_hook(lambda mod, args, out: None)
        assert not net._native_ok(h, 5, None)
        handle.remove()
        assert net._native_ok(h, 5, None)
        net.blocks[0].norm.eps = 1e-3
        assert not net._native_ok(h, 5, None)
        net.blocks[0].norm.eps = net.norm.eps
        torch.nn.utils.parametrize.register_parametrization(net.blocks[0].out, "weight", torch.nn.Identity())
        assert not net._native_ok(h, 5, None)  # a parametrised weight
        torch.nn.utils.parametrize.remove_parametrizations(net.blocks[0].out, "weight")
        assert net._native_ok(h, 5, None)
        net.head.bias = None
        assert not net._native_ok(h, 5, None)  # a removed bias
        y = net(x)[0]
        _per_block(monkeypatch)
        torch.testing.assert_close(y, net(x)[0], rtol=0, atol=0)
        lengths = torch.tensor([5, 2, 4])
        monkeypatch.undo()
        y_rows, s_rows = net(x, None, lengths=lengths)  # per-row lengths: never the native call
        _per_block(monkeypatch)
        y_ref, s_ref = net(x, None, lengths=lengths)
    torch.testing.assert_close(y_rows, y_ref, rtol=0, atol=0)
    torch.testing.assert_close(s_rows, s_ref, rtol=0, atol=0)


def test_the_native_pass_reads_the_weights_it_is_called_with():
    """Weights swapped for a call (torch.func.functional_call) or replaced by a new Parameter are
    the ones used, not the last pack."""
    torch.manual_seed(4)
    net = SSMNet(SSMNetConfig(n_in=4, n_out=3, width=8, state_size=4, layers=2)).double().eval()
    x = torch.randint(0, 4, (1, 5))
    with torch.no_grad():
        before = net(x)[0]
        swapped = {"head.weight": net.head.weight * 2, "blocks.1.out.bias": net.blocks[1].out.bias + 1}
        y_swapped = torch.func.functional_call(net, swapped, (x,))[0]
        assert torch.equal(net(x)[0], before)
        net.head.weight = torch.nn.Parameter(swapped["head.weight"])
        net.blocks[1].out.bias = torch.nn.Parameter(swapped["blocks.1.out.bias"])
        y_replaced = net(x)[0]
    torch.testing.assert_close(y_swapped, y_replaced, rtol=1e-12, atol=1e-12)
    assert not torch.allclose(y_swapped, before)


def test_the_native_pass_refuses_what_it_cannot_read_safely():
    torch.manual_seed(0)
    net = SSMNet(SSMNetConfig(n_in=4, n_out=3, width=8, state_size=4, layers=2)).double().eval()
    run = native.net()
    assert run is not None
    h = torch.randn(1, 5, 8, dtype=F64)
    packed = net._packed()
    with pytest.raises(ValueError, match="native network pass"):
        run(h, None, packed[:-1], 2, 4, 3, 1e-5, 5, True)  # a pack of the wrong size
    with pytest.raises(ValueError, match="native network pass"):
        run(h.float(), None, packed, 2, 4, 3, 1e-5, 5, True)  # dtypes differ
    with pytest.raises(ValueError, match="native network pass"):
        run(h, None, packed, 2, 4, 3, 1e-5, 6, True)  # a state past the pass
    with pytest.raises(ValueError, match="state must be"):
        run(h, torch.zeros(1, 3, 8, 4, dtype=torch.complex128), packed, 2, 4, 3, 1e-5, 5, True)


def test_a_generation_call_checks_the_weights_once_and_the_next_call_reads_new_ones(monkeypatch):
    """Within one generation call the weights cannot change: the AR-SSM's steps and the VSSM's rounds
    check the packed weights and the modules once per call, not once per pass; a change between calls
    (here in place, as an optimiser step or a load makes it) is read by the next call."""
    from vssm.model import ssm
    from vssm.model.autoregressive import ARSSM, ARSSMConfig

    torch.manual_seed(5)
    ar = ARSSM(ARSSMConfig(vocab_size=3, width=8, state_size=4, layers=2)).double().eval()
    vssm = VSSM(VSSMConfig(vocab_size=3, n_latents=2, n_classes=3, width=8, state_size=4, max_position=24))
    vssm = vssm.double().eval()
    keys, checks = [], []
    real_key, real_modules = ssm.pack_key, SSMNet._modules_native_ok
    monkeypatch.setattr(ssm, "pack_key", lambda params: keys.append(1) or real_key(params))
    monkeypatch.setattr(SSMNet, "_modules_native_ok", lambda self: checks.append(1) or real_modules(self))
    for m, networks, kwargs in ((ar, 1, {}), (vssm, 2, {"block_size": 4})):
        prompt = torch.randint(0, 3, (2, 3))
        for scale in (1.0, 1.3):
            with torch.no_grad():
                for p in m.parameters():
                    p.mul_(scale)
            start = m.start(prompt, [1, 2])  # a state names the weights that made it
            keys.clear(), checks.clear()
            tokens, state, scores = m.generate_scored(start, 12, **kwargs)  # 12 steps, or 3 block rounds
            assert len(keys) == networks and len(checks) == networks, (type(m).__name__, keys, checks)
            with monkeypatch.context() as off:  # the reference: every network block by block
                off.setattr(SSMNet, "_native_ok", lambda self, h, T, state: False)
                ref_tokens, ref_state, ref_scores = m.generate_scored(start, 12, **kwargs)
            assert torch.equal(tokens, ref_tokens)
            torch.testing.assert_close(scores, ref_scores, rtol=1e-10, atol=1e-10)
            for k, v in ref_state.tensors.items():
                torch.testing.assert_close(state[k], v, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize("temperature", [1.0, 0.5, 2.0, 1e-9, 0.0, float("nan")])
def test_compiled_draws_equal_the_tensor_arithmetic(monkeypatch, dtype, temperature):
    """csrc/categorical.c draws what sample_categorical's PyTorch path draws (the inverse CDF of the
    tempered softmax, the argmax at 0), for latents (B, n, Z, K) and tokens (B, n, V), strided views,
    one category, more categories than the kernel buffers, and logits with -inf, +inf and NaN
    (PyTorch's answers: its softmax's NaNs draw 0)."""
    torch.manual_seed(11)
    cases = [
        (torch.randn(3, 7, 2, 5, dtype=dtype) * 3, torch.rand(3, 7, 2, dtype=dtype)),
        (torch.randn(2, 9, 256, dtype=dtype) * 2, torch.rand(2, 9, dtype=dtype)),
        (torch.randn(2, 3, 1500, dtype=dtype) * 2, torch.rand(2, 3, dtype=dtype)),  # past the exponentials' buffer
        (torch.randn(4, 12, 6, dtype=dtype)[:, ::2, 1:], torch.rand(4, 6, dtype=dtype)),  # a strided view
        (torch.randn(5, 1, dtype=dtype), torch.rand(5, dtype=dtype)),
    ]
    odd = torch.randn(6, 4, dtype=dtype)
    odd[0, 1] = -torch.inf
    odd[1] = -torch.inf
    odd[2, 2] = torch.inf
    odd[3, 0] = torch.nan
    odd[4, 3] = 1e4
    cases.append((odd, torch.rand(6, dtype=dtype)))
    wide = torch.randn(8, 40, dtype=dtype)  # the same, past a vector of lanes (csrc/categorical.c, MAX_OVER)
    wide[0, 33] = torch.nan
    wide[1, [3, 17, 38]] = torch.inf
    wide[2] = -torch.inf
    wide[3] = (wide[3] * 2).round()  # ties
    wide[4] = torch.where(wide[4] > 0, 0.0, -0.0)  # signed zeros only
    wide[5, 20:] = -torch.inf
    wide[6, 35] = 1e4
    cases.append((wide, torch.rand(8, dtype=dtype)))
    compiled = [sampling.sample_categorical(logits, u, temperature) for logits, u in cases]
    monkeypatch.setattr(native, "categorical", lambda: None)
    for (logits, u), got in zip(cases, compiled, strict=True):
        assert got.dtype == torch.int64 and got.shape == u.shape
        assert torch.equal(got, sampling.sample_categorical(logits, u, temperature)), (logits.shape, temperature)


def test_compiled_draws_refuse_what_they_cannot_read():
    draw = native.categorical()
    assert draw is not None
    with pytest.raises(ValueError, match="native draw"):
        draw(torch.randn(2, 3), torch.rand(3), 1.0)  # one uniform per draw: (2,), not (3,)
    with pytest.raises(ValueError, match="native draw"):
        draw(torch.randn(2, 3), torch.rand(2, dtype=F64), 1.0)  # one dtype


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_compiled_draws_never_pick_a_category_of_probability_zero(dtype):
    """At u = 1 (a float32 keyed uniform rounds to 1 once in 2**24 draws) the target is the whole
    total: the draw is the last category with any probability, never a masked or underflowed one."""
    torch.manual_seed(3)
    far = torch.randn(32, 512, dtype=dtype)
    far[:, -1] -= 30  # exp underflows to 0 at temperature 0.05 in float32
    masked = torch.randn(32, 8, dtype=dtype)
    masked[:, 5:] = -torch.inf
    for logits, temperature in ((far, 0.05), (masked, 1.0), (masked, 0.3)):
        p = torch.softmax(logits / temperature, -1)  # (R, V)
        for top in (1.0, 1 - 2**-24, 1 - 2**-23):
            u = torch.full(logits.shape[:-1], top, dtype=dtype)
            drawn = sampling.sample_categorical(logits, u, temperature)  # (R,)
            assert (p.gather(-1, drawn[:, None]) > 0).all(), (temperature, top)


def test_the_kernel_threshold_follows_the_build_and_the_threads(monkeypatch):
    """S4D.scan_max_tokens None (the default) means native.max_tokens(): 2,048 tokens over PyTorch's
    threads where the kernel has 64-byte vectors or runs on one thread, else 1,024 over them; a whole
    network pass takes the kernel up to it and the matrices past it."""
    threads = torch.get_num_threads()
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            layer = S4D(S4DConfig(width=4, state_size=3))
            limit = native.max_tokens()
            assert layer.scan_max_tokens is None
            assert layer.runs_scan(torch.zeros(limit // 8, 8, 4), 8, whole_network=True)
            assert not layer.runs_scan(torch.zeros(limit // 8 + 1, 8, 4), 8, whole_network=True)
            for width, want in ((64, 2048 // n), (32, 2048 if n == 1 else 1024 // n)):  # the build's vectors
                monkeypatch.setattr(native, "_vector_bytes", width)
                assert native.max_tokens() == want
                monkeypatch.undo()
    finally:
        torch.set_num_threads(threads)


# ----- the latent prior's draws (csrc/latent_prior.c) ---------------------------------------------------------
def _prior(
    dtype: torch.dtype, Z: int = 2, K: int = 5, R: int = 37, M: int | None = None, F: int = 0
) -> torch.nn.Module:
    from vssm.model.latent_prior import LatentPrior

    torch.manual_seed(7)
    p = LatentPrior(Z, K, R, M, F).to(dtype)
    with torch.no_grad():  # a fresh prior's output layer is zero: make every weight act
        p.mlp[-1].weight.normal_(0.0, 1.0)
        p.mlp[-1].bias.normal_(0.0, 1.0)
        p.mlp[0].weight.normal_(1.0, 0.2)
        p.mlp[0].bias.normal_(0.0, 0.2)
    return p


def _python_draw(p: torch.nn.Module, *args) -> tuple[torch.Tensor, torch.Tensor]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(native, "prior_draws", lambda: None)
        return p.draw(*args)


def _both_draws(p: torch.nn.Module, *args) -> tuple[bool, tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, ...]]:
    """Whether the compiled loop ran, its latents and state, and the step-by-step loop's, for ``p.draw(*args)``."""
    calls = []
    real = native._prior_draws
    with torch.no_grad(), pytest.MonkeyPatch.context() as mp:
        mp.setattr(native, "_prior_draws", lambda *a: calls.append(1) or real(*a))
        got = p.draw(*args)
    with torch.no_grad():
        return bool(calls), got, _python_draw(p, *args)


def _assert_state_close(got: torch.Tensor, want: torch.Tensor, dtype: torch.dtype) -> None:
    tol = 1e-12 if dtype == F64 else 1e-4
    torch.testing.assert_close(got, want, rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", [F64, torch.float32])
@pytest.mark.parametrize("base", [True, False])
@pytest.mark.parametrize("temperature", [1.0, 0.7, 0.0, "rows"])
@pytest.mark.parametrize(("hidden", "context"), [(None, 0), (11, 0), (53, 0), (11, 4), (53, 9)])
def test_compiled_latent_prior_draws_equal_the_step_by_step_loop(dtype, base, temperature, hidden, context):
    """Latents and the state after them, from any state, with or without a base, at any temperature
    (one per row included), the MLP as wide as the state, narrower or wider (53: a whole register
    tile and a remainder at any vector width), with or without context features; float32 within
    rounding of the state, the same latents."""
    p = _prior(dtype, M=hidden, F=context)
    B, n, Z, K = 3, 19, 2, 5
    g = torch.Generator().manual_seed(1)
    b = torch.randn(B, n, Z, K, generator=g, dtype=F64).to(dtype) if base else None
    ctx = torch.randn(B, n, context, generator=g, dtype=F64).to(dtype) if context else None
    r = torch.randn(B, 37, generator=g, dtype=F64).to(dtype)
    u = torch.rand(B, n, Z, generator=g, dtype=F64).to(dtype)
    temp = torch.tensor([1.0, 0.0, 1.7], dtype=F64) if temperature == "rows" else temperature
    compiled, (z, r_after), (z_ref, r_ref) = _both_draws(p, b, r, u, temp, ctx)
    if ctx is not None:  # the features count
        with torch.no_grad():
            assert not torch.equal(_python_draw(p, b, r, u, 1.0)[1], _python_draw(p, b, r, u, 1.0, ctx)[1])
    assert compiled and torch.equal(z, z_ref)
    _assert_state_close(r_after, r_ref, dtype)
    assert not torch.equal(r_after, r)  # the caller's state is not written


@pytest.mark.parametrize("dtype", [F64, torch.float32])
@pytest.mark.parametrize(("Z", "K", "hidden"), [(1, 109, 163), (2, 137, 300), (1, 256, 320)])
def test_compiled_latent_prior_draws_equal_the_loop_at_wide_layers(dtype, Z, K, hidden):
    """Layers wide enough that a row's products run in sweeps of many vectors (csrc/s4d_block.c, ROW_REST): at any
    vector width, more than a sweep, a last sweep of another width, and outputs short of a vector (the text
    latent prior's shapes among them); the same latents, the state within rounding."""
    p = _prior(dtype, Z=Z, K=K, M=hidden)
    B, n = 2, 9
    g = torch.Generator().manual_seed(2)
    b = torch.randn(B, n, Z, K, generator=g, dtype=F64).to(dtype)
    r = torch.randn(B, 37, generator=g, dtype=F64).to(dtype)
    u = torch.rand(B, n, Z, generator=g, dtype=F64).to(dtype)
    _, (z, r_after), (z_ref, r_ref) = _both_draws(p, b, r, u, 1.0)
    assert torch.equal(z, z_ref)
    _assert_state_close(r_after, r_ref, dtype)


def test_the_compiled_latent_prior_follows_its_weights_and_steps_aside_for_gradients():
    p = _prior(F64)
    u = torch.rand(2, 6, 2, dtype=F64, generator=torch.Generator().manual_seed(3))
    r = torch.zeros(2, 37, dtype=F64)
    calls = []
    real = native._prior_draws
    with torch.no_grad(), pytest.MonkeyPatch.context() as mp:
        mp.setattr(native, "_prior_draws", lambda *a: calls.append(1) or real(*a))
        before = p.draw(None, r, u, 1.0)[1]
        p.mlp[1].weight.mul_(-1.0)  # an in-place change: the packed weights must follow
        after = p.draw(None, r, u, 1.0)[1]
    assert len(calls) == 2
    with torch.no_grad():
        torch.testing.assert_close(after, _python_draw(p, None, r, u, 1.0)[1], rtol=1e-12, atol=1e-12)
    assert not torch.allclose(before, after)
    with pytest.MonkeyPatch.context() as mp:  # with gradients the loop stays in PyTorch
        mp.setattr(native, "_prior_draws", lambda *a: pytest.fail("compiled with gradients on"))
        p.draw(None, r, u, 1.0)


def test_a_hook_on_the_latent_prior_keeps_its_draws_in_pytorch():
    """The hook check reads a walk of the prior's modules kept between calls (model/network.py, walked):
    a hook registered after the walk was taken still sends the draws through the modules' forward."""
    p = _prior(F64)
    u = torch.rand(2, 6, 2, dtype=F64, generator=torch.Generator().manual_seed(3))
    r = torch.zeros(2, 37, dtype=F64)
    seen, calls = [], []
    real = native._prior_draws
    with torch.no_grad():
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(native, "_prior_draws", lambda *a: calls.append(1) or real(*a))
            compiled = p.draw(None, r, u, 1.0)  # compiled: the walk is taken here
        assert calls
        handle = p.mlp[1].register_forward_hook(lambda mod, args, out: seen.append(out.shape))
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(native, "_prior_draws", lambda *a: pytest.fail("compiled with a hook"))
            hooked = p.draw(None, r, u, 1.0)
        handle.remove()
    assert len(seen) == 6  # one forward a step
    assert torch.equal(compiled[0], hooked[0])
    torch.testing.assert_close(compiled[1], hooked[1], rtol=1e-12, atol=1e-12)


# ----- the autoregressive SSM's loop (csrc/ar_loop.c) -----------------------------------------------------------
@pytest.mark.parametrize("dtype", [F64, torch.float32])
@pytest.mark.parametrize("resumable", [True, False])
@pytest.mark.parametrize("temperature", [1.0, 0.0, "rows"])
@pytest.mark.parametrize("width", [40, 17])
def test_the_compiled_ar_loop_equals_the_loop_in_pytorch(dtype, resumable, temperature, width):
    """Tokens, logits and state, from a prompted state of rows at different positions; float32
    within rounding of the state.  The loop holds its state planar between steps, and a step runs its
    channels in blocks of 32 (csrc/s4d_block.c, STEPS_OUTER's LANES): 40 channels are a whole block and
    a part block, 17 a part block alone."""
    from tests.conftest import tiny_model

    m = tiny_model("ar-ssm", dtype=dtype, vocab_size=7, width=width, state_size=5, layers=3)
    start = m.start(torch.randint(0, 7, (3, 4), generator=torch.Generator().manual_seed(2)), [1, 2, 3])
    state = start.evolve(position=start.position + torch.tensor([0, 5, 9]))  # rows at their own positions
    temp = torch.tensor([1.0, 0.0, 1.6], dtype=F64) if temperature == "rows" else temperature
    calls = []
    real = native._ar_loop

    def spy(*args):
        calls.append(1)
        return real(*args)

    kept = {k: v.clone() for k, v in state.tensors.items()}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(native, "_ar_loop", spy)
        tokens, nxt = m.generate(state, 13, temperature=temp, resumable=resumable)
    for k, v in kept.items():
        assert torch.equal(state[k], v), k  # the caller's state is a value: never written
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(native, "ar_loop", lambda: None)
        ref_tokens, ref = m.generate(state, 13, temperature=temp, resumable=resumable)
    assert calls and torch.equal(tokens, ref_tokens)
    if resumable:
        tol = 1e-10 if dtype == F64 else 1e-4
        for k in ("h", "logits"):
            torch.testing.assert_close(nxt[k], ref[k], rtol=tol, atol=tol)
        assert torch.equal(nxt.position, ref.position)
    else:
        assert nxt is None and ref is None


def test_the_compiled_ar_loop_follows_the_weights():
    """The AR-SSM's pack (SequenceModel._laid_out, as the VSSM's compiled calls key theirs) is reused within
    one version of the weights and rebuilt after an in-place change to any weight; after that, or a change
    of the LayerNorms' eps (passed beside the pack, not in it), the compiled loop draws what the loop in
    PyTorch draws."""
    from tests.conftest import tiny_model

    m = tiny_model("ar-ssm", vocab_size=7, width=24, state_size=5, layers=3)

    def start():  # a state of the current weights
        return m.start(torch.randint(0, 7, (2, 3), generator=torch.Generator().manual_seed(0)), [1, 2])

    changes = [
        lambda: m.net.blocks[1].out.weight.mul_(-2.0),
        lambda: m.net.head.bias.add_(0.7),
        lambda: m.net.blocks[0].ssm.log_dt.add_(0.4),
        lambda: [setattr(ln, "eps", 0.5) for ln in m.net.modules() if isinstance(ln, torch.nn.LayerNorm)],
    ]
    for i, change in enumerate(changes):
        m.generate(start(), 9)  # laid out, cached
        before = m.__dict__["_ar_pack_cache"][1]
        m.generate(start(), 9)  # reused
        assert m.__dict__["_ar_pack_cache"][1] is before
        with torch.no_grad():
            change()
        tokens, nxt = m.generate(start(), 9)
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(native, "ar_loop", lambda: None)
            ref_tokens, ref = m.generate(start(), 9)
        assert torch.equal(tokens, ref_tokens)
        torch.testing.assert_close(nxt["h"], ref["h"], rtol=1e-10, atol=1e-10)
        assert (m.__dict__["_ar_pack_cache"][1] is before) == (i == len(changes) - 1)  # eps: the same pack


# ----- block sampling's fused rounds (csrc/rounds.c) -------------------------------------------------------------
def compiled_equals_pytorch(m: VSSM, start, n: int, temp, block: int, obs: float, entry: str) -> list:
    """Generation from ``start`` with the compiled ``native.<entry>`` (spied on) and without it (the
    rounds in PyTorch), resumable or not: the same tokens, and every state tensor within rounding
    (float32: of the states').  Returns the compiled calls' ``(args, result)``."""
    calls = []
    real = getattr(native, f"_{entry}")

    def spy(*args, **kwargs):
        out = real(*args, **kwargs)
        calls.append((args, out))
        return out

    kwargs = dict(temperature=temp, block_size=block, observation_temperature=obs)
    for resumable in (True, False):
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(native, f"_{entry}", spy)
            if entry == "prior_piece":  # the piece, not the compiled rounds' open block a resumable call can be
                mp.setattr(native, "fused_rounds", lambda: None)
            tokens, state = m.generate(start, n, resumable=resumable, **kwargs)
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(native, entry, lambda: None)
            if entry == "prior_piece":
                mp.setattr(native, "fused_rounds", lambda: None)
            if entry == "patch_rounds":  # the reference's pieces without the compiled prior piece: all PyTorch
                mp.setattr(native, "prior_piece", lambda: None)
            ref_tokens, ref = m.generate(start, n, resumable=resumable, **kwargs)
        assert torch.equal(tokens, ref_tokens)
        if resumable:
            tol = 1e-10 if m.dtype == F64 else 1e-4
            for k, v in ref.tensors.items():
                torch.testing.assert_close(state[k], v, rtol=tol, atol=tol)
    return calls


# the compiled rounds' model variants: a latent prior with and without context, decoder tokens, odd shapes
ROUNDS_VARIANTS = [
    {},
    {"decoder_tokens": True},
    {"prior_width": 6, "prior_hidden": 20},
    {"prior_width": 6, "prior_hidden": 20, "prior_context": 5},
    {"prior_width": 6, "prior_hidden": 20, "decoder_tokens": True},  # no compiled prior piece: its one pass rounds
    {"width": 20, "state_size": 6},  # a part group of four modes; part vectors of channels with AVX-512
    {"par_layers": 1, "dec_layers": 3},  # the two networks' states of different sizes, either way
    {"par_layers": 3, "dec_layers": 1},
]


@pytest.mark.parametrize("dtype", [F64, torch.float32])
@pytest.mark.parametrize("variant", ROUNDS_VARIANTS)
@pytest.mark.parametrize(
    ("c", "position", "n"),
    [
        (4, 0, 17),
        (3, 7, 20),
        (8, 5, 24),
        (70, 9, 200),
        (40, 5, 100),  # c fits SHORT and 2c does not: fused only compiled, else block by block
        (4, 8, 4),
        (4, 5, 3),
        (4, 5, 2),
        (16, 0, 16),
        (1, 2, 5),
        (2, 3, 9),
        (2, 1, 1),
        (2, 1, 3),
    ],
)
def test_compiled_rounds_equal_the_rounds_in_pytorch(dtype, variant, c, position, n, monkeypatch):
    """Tokens and every state tensor, unprompted or mid-block after a prompt, resumable or not, a
    temperature per row; float32 within rounding of the states.  The cases take both of csrc/rounds.c's
    layouts: a lone round of passes under four steps keeps the states interleaved (the resumable calls of
    (4, 5, 3) and (2, 1, 1), which absorb their block; the other call of (2, 1, 3), which keeps no state),
    any other call steps them planar, on both of the recurrence's loops (blocks 1 and 2: passes of two and
    four steps)."""
    from tests.conftest import tiny_model

    monkeypatch.setattr(S4D, "scan_max_tokens", 2048)  # block 70's passes compiled on any machine

    m = tiny_model("vssm", dtype=dtype, max_position=256, **variant)  # block 70: passes past SHORT, FFT in PyTorch
    prompt = torch.randint(0, m.vocab_size, (3, position), generator=torch.Generator().manual_seed(position))
    start = m.start(prompt, [4, 5, 6])
    temp = torch.tensor([1.0, 0.6, 0.0], dtype=dtype)
    obs = 0.5 if variant else 1.0  # tokens given the latents at half the temperature (the served models' kind)
    calls = compiled_equals_pytorch(m, start, n, temp, c, obs, "fused_rounds")
    # both calls compiled: a resumable one that ends inside its first block as block 0 left open ([n, 0])
    assert len(calls) == 2


# ----- a piece drawn through the latent prior and decoded from its latents (csrc/prior_piece.c) -------------------
PRIOR_VARIANTS = [
    {"prior_width": 6, "prior_hidden": 20},
    {"prior_width": 6, "prior_hidden": 20, "prior_context": 5},
    {"prior_width": 6, "prior_hidden": 20, "n_latents": 2, "n_classes": 3},
    {"prior_width": 6, "prior_hidden": 20, "prior_context": 5, "n_classes": 40},  # PyTorch reads it as a lookup
]


def prior_model(dtype, **variant):
    """A tiny VSSM with a latent prior whose last layer is not zero (a fresh prior adds nothing)."""
    from tests.conftest import tiny_model

    m = tiny_model("vssm", dtype=dtype, max_position=64, **variant)
    with torch.no_grad():
        last = m.latent_prior.mlp[3]
        last.weight.copy_(torch.randn(last.weight.shape, generator=torch.Generator().manual_seed(7), dtype=dtype))
    return m


@pytest.mark.parametrize("dtype", [F64, torch.float32])
@pytest.mark.parametrize("variant", PRIOR_VARIANTS)
@pytest.mark.parametrize(("position", "n", "block"), [(0, 20, 64), (7, 22, 64), (5, 20, 9), (3, 30, 4), (3, 50, 40)])
def test_compiled_prior_piece_equals_the_piece_in_pytorch(dtype, variant, position, n, block, monkeypatch):
    """Tokens and every state tensor of pieces whose latents the latent prior draws, with the compiled rounds
    off (with them on, csrc/rounds.c draws a resumable one-pass call and a part block a call stops inside: the
    compiled rounds' tests): one pass (block 64) unprompted or after a prompt; blocks 9 and 4, whose rounds
    then run fused in PyTorch and whose part-block left at the end is a piece; block 40, fused only compiled
    (c <= SHORT < 2c; the compiled rounds are off here), piece after piece; resumable or not, a temperature per
    row, tokens at half the latents' temperature."""
    m = prior_model(dtype, **variant)
    prompt = torch.randint(0, m.vocab_size, (3, position), generator=torch.Generator().manual_seed(position))
    start = m.start(prompt, [4, 5, 6])
    temp = torch.tensor([1.0, 0.6, 0.0], dtype=dtype)
    calls = compiled_equals_pytorch(m, start, n, temp, block, 0.5, "prior_piece")
    assert calls


@pytest.mark.parametrize("dtype", [F64, torch.float32])
def test_compiled_prior_piece_per_row_from_the_prior_it_has(dtype):
    """One call for a row that has observed nothing (the uniform base, no context) and one that has (the
    partial encoder's logits and context), at different positions."""
    from vssm.model.state import GenState

    m = prior_model(dtype, prior_width=6, prior_hidden=20, prior_context=5)
    fresh = m.start(torch.zeros(1, 0, dtype=torch.long), [4])
    prompted = m.start(torch.randint(0, m.vocab_size, (1, 5), generator=torch.Generator().manual_seed(3)), [5])
    start = GenState.cat([fresh, prompted])
    assert start["observed"].tolist() == [False, True]
    calls = compiled_equals_pytorch(m, start, 17, torch.tensor([0.8, 1.0], dtype=dtype), 64, 0.5, "prior_piece")
    assert calls


def test_compiled_prior_piece_leaves_what_it_cannot_run():
    """Scores wanted, or a hook on the decoder: the piece keeps its PyTorch calls."""
    m = prior_model(F64, prior_width=6, prior_hidden=20)
    start = m.start(torch.zeros(2, 0, dtype=torch.long), [1, 2])
    calls = []
    real = native._prior_piece

    def spy(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(native, "_prior_piece", spy)
        m.generate(start, 10, resumable=False)
        assert len(calls) == 1
        m.generate_scored(start, 10, resumable=False)
        handle = m.decoder.register_forward_hook(lambda *_: None)
        try:
            m.generate(start, 10, resumable=False)
        finally:
            handle.remove()
    assert len(calls) == 1


@pytest.mark.parametrize("block", [None, 4, 28])
def test_an_infinite_temperature_at_observation_temperature_0_keeps_the_pytorch_path(block, monkeypatch):
    """Tokens at temperature inf x 0 = NaN: the compiled calls read a NaN temperature otherwise than PyTorch's
    draws, so such a call (one pass, block rounds, an open block) keeps the PyTorch path and draws its tokens."""
    from tests.conftest import tiny_model

    m = tiny_model("vssm", max_position=64)
    start = m.start(torch.randint(0, m.vocab_size, (2, 5), generator=torch.Generator().manual_seed(2)), [1, 2])
    calls = []
    real = native._fused_rounds
    monkeypatch.setattr(native, "_fused_rounds", lambda *a, **k: calls.append(a) or real(*a, **k))
    kwargs = dict(temperature=float("inf"), block_size=block, observation_temperature=0.0)
    tokens, state = m.generate(start, 13, **kwargs)
    assert calls == []
    with monkeypatch.context() as mp:
        mp.setattr(native, "fused_rounds", lambda: None)
        ref_tokens, ref = m.generate(start, 13, **kwargs)
    assert torch.equal(tokens, ref_tokens) and state.to_bytes() == ref.to_bytes()


@pytest.mark.parametrize("dtype", [F64, torch.float32])
@pytest.mark.parametrize("variant", ROUNDS_VARIANTS)
@pytest.mark.parametrize(
    ("position", "n", "block"),
    [(0, 9, None), (0, 2, None), (6, 13, None), (6, 3, None), (None, 11, None), ("after", 7, None), (6, 9, 28)],
)
def test_a_resumable_call_inside_its_block_is_the_compiled_rounds_block_0_left_open(dtype, variant, position, n, block):
    """A resumable call with no block size, or one that ends inside the block it starts in (block 28 from 6), is
    csrc/rounds.c's block 0 kept open (pieces [n, 0]): its tokens and every state tensor as VSSM._piece leaves
    them (within rounding; float32 of the states'), unprompted (the uniform prior: the partial encoder's
    generation state stays), after a prompt, (None) a batch of one row of each, or ("after") after a resumable
    call, the latent prior's state not zero; passes under four steps too.  A one-pass call that keeps no state is
    block 0 alone (pieces [n], nothing absorbed), where no latent prior's compiled piece draws it (prior_piece:
    not with decoder tokens)."""
    from tests.conftest import tiny_model

    m = tiny_model("vssm", dtype=dtype, max_position=64, **variant)
    if position == "after":
        first = m.start(torch.randint(0, m.vocab_size, (2, 4), generator=torch.Generator().manual_seed(8)), [4, 5])
        with pytest.MonkeyPatch.context() as mp:  # the reference path's state, to start both from
            mp.setattr(native, "fused_rounds", lambda: None)
            _, start = m.generate(first, 5, block_size=block)
        assert "prior" not in start.tensors or bool(start["prior"].abs().sum() > 0)
        temp = torch.tensor([0.8, 1.0], dtype=dtype)
    elif position is None:
        fresh = m.start(torch.zeros(1, 0, dtype=torch.long), [4])
        start = GenState.cat(
            [fresh, m.start(torch.randint(0, m.vocab_size, (1, 5), generator=torch.Generator().manual_seed(9)), [5])]
        )
        temp = torch.tensor([0.8, 1.0], dtype=dtype)
    else:
        prompt = torch.randint(0, m.vocab_size, (3, position), generator=torch.Generator().manual_seed(position))
        start = m.start(prompt, [4, 5, 6])
        temp = torch.tensor([1.0, 0.6, 0.0], dtype=dtype)
    calls = compiled_equals_pytorch(m, start, n, temp, block, 0.5 if variant else 1.0, "fused_rounds")
    pieces = [(list(args[0]), args[-2], args[-1]) for args, _ in calls]  # (pieces, keep, open_end)
    assert pieces[:1] == [([n, 0], True, True)]  # then the other's, if fused
    if block is None:  # a latent prior's piece is a compiled call of its own where the decoder reads no tokens
        piece = "prior_width" in variant and "decoder_tokens" not in variant
        assert pieces[1:] == ([] if piece else [([n], False, False)])


@pytest.mark.parametrize("variant", [{}, {"decoder_tokens": True}, {"width": 20, "state_size": 6}])
def test_a_one_pass_call_that_keeps_no_state_batches_exactly(variant, monkeypatch):
    """The compiled block 0 of a one-pass call that keeps no state (float32, where sums could follow the row
    count; past the short passes' 64 steps): each row of a batch (unprompted and prompted, temperatures of their
    own, 0 too) draws what it draws alone, and what a resumable call draws; the batch is one compiled call, and
    draws what the PyTorch path (VSSM._piece, the network's own pass) does."""
    from tests.conftest import tiny_model

    m = tiny_model("vssm", dtype=torch.float32, max_position=128, **variant)
    prompts = [
        torch.randint(0, m.vocab_size, (1, c), generator=torch.Generator().manual_seed(c)) for c in (0, 3, 0, 9, 1)
    ]
    seeds, temps = [1, 2, 3, 4, 5], [1.0, 0.7, 0.0, 1.3, 1.0]
    starts = [m.start(p, s) for p, s in zip(prompts, seeds, strict=True)]
    calls = []
    real = native._fused_rounds
    monkeypatch.setattr(native, "_fused_rounds", lambda *a, **k: calls.append(list(a[0])) or real(*a, **k))
    kwargs = dict(observation_temperature=0.5, resumable=False)
    tokens, none = m.generate(GenState.cat(starts), 70, temperature=torch.tensor(temps), **kwargs)
    assert none is None and calls == [[70]]
    with monkeypatch.context() as mp:
        mp.setattr(native, "fused_rounds", lambda: None)
        assert torch.equal(m.generate(GenState.cat(starts), 70, temperature=torch.tensor(temps), **kwargs)[0], tokens)
    assert calls == [[70]]
    for i, (start, t) in enumerate(zip(starts, temps, strict=True)):
        alone, _ = m.generate(start, 70, temperature=t, **kwargs)
        kept, _ = m.generate(start, 70, temperature=t, observation_temperature=0.5)
        assert torch.equal(tokens[i : i + 1], alone) and torch.equal(alone, kept)


@pytest.mark.parametrize(
    "variant", [{}, {"decoder_tokens": True}, {"prior_width": 6, "prior_hidden": 20, "prior_context": 5}]
)
def test_a_call_that_stops_inside_a_later_block_runs_whole_in_the_compiled_rounds(variant, monkeypatch):
    """A resumable call whose end falls inside a block after its first draws that part block in
    csrc/rounds.c too (no piece in PyTorch), which hands back generation's states after it beside the
    absorbed ones; the next call, which continues the open block, draws what it would have after the
    reference path's state (and whole, what one call of both lengths draws)."""
    from tests.conftest import tiny_model

    m = tiny_model("vssm", max_position=64, **variant)
    start = m.start(torch.randint(0, m.vocab_size, (2, 5), generator=torch.Generator().manual_seed(1)), [3, 4])
    pieces = []
    real = VSSM._piece
    monkeypatch.setattr(VSSM, "_piece", lambda self, *a, **k: pieces.append(a[1]) or real(self, *a, **k))
    calls = compiled_equals_pytorch(m, start, 13, torch.tensor([1.0, 0.7], dtype=F64), 4, 1.0, "fused_rounds")
    assert [args[-1] for args, _ in calls] == [True, False]  # open_end: the resumable call, then the other
    assert pieces == [2]  # the reference path's piece only: 5 + 13 = 18 stops two tokens into block 4
    tokens, mid = m.generate(start, 13, block_size=4)
    more, _ = m.generate(mid, 7, block_size=4)
    whole, _ = m.generate(start, 20, block_size=4)
    assert torch.equal(torch.cat([tokens, more], 1), whole)


@pytest.mark.parametrize("dtype", [F64, torch.float32])
@pytest.mark.parametrize(
    "variant", [{}, {"decoder_tokens": True}, {"prior_width": 6, "prior_hidden": 20, "prior_context": 5}]
)
def test_compiled_rounds_draw_block_0_per_row_from_the_prior_it_has(dtype, variant):
    """Block 0, drawn in the compiled rounds, from the uniform prior in a row that has observed nothing
    (floor(u K), or zero logits through the latent prior) and from the partial encoder in a row that has."""
    from tests.conftest import tiny_model
    from vssm.model.state import GenState

    m = tiny_model("vssm", dtype=dtype, max_position=64, **variant)
    fresh = m.start(torch.zeros(1, 0, dtype=torch.long), [4])
    prompted = m.start(torch.randint(0, m.vocab_size, (1, 8), generator=torch.Generator().manual_seed(3)), [5])
    start = GenState.cat([fresh, prompted])
    assert start["observed"].tolist() == [False, True]
    calls = compiled_equals_pytorch(m, start, 14, torch.tensor([0.8, 1.0], dtype=dtype), 4, 0.5, "fused_rounds")
    assert len(calls) == 2


@pytest.mark.parametrize("dtype", [F64, torch.float32])
@pytest.mark.parametrize("entry", ["fused_rounds", "prior_piece"])
def test_compiled_calls_continue_the_latent_prior_a_call_left_open(dtype, entry, monkeypatch):
    """A call that ends inside a block (or a one-pass call: its prior runs on) leaves the latent prior's
    state mid-block; the next call's first block, drawn in the compiled call, continues from it as the
    PyTorch path does (the prior made to matter: its last layer scaled up)."""
    m = prior_model(dtype, prior_width=6, prior_hidden=20, prior_context=5)
    with torch.no_grad():  # the prior's state and the latents show in the tokens
        m.latent_prior.mlp[3].weight.mul_(10.0)
        m.decoder.inp.weight.mul_(10.0)
    block = 8 if entry == "fused_rounds" else 64  # 64: one pass
    start = m.start(torch.randint(0, m.vocab_size, (3, 8), generator=torch.Generator().manual_seed(2)), [4, 5, 6])
    temp = torch.tensor([1.0, 0.6, 1.0], dtype=dtype)
    with monkeypatch.context() as mp:
        mp.setattr(native, entry, lambda: None)
        _, mid = m.generate(start, 1, block_size=block)  # one token into a block: seven more to draw in it
        # the test can see a prior started anew where it should continue: the tokens differ
        zeroed = mid.evolve(prior=torch.zeros_like(mid["prior"]))
        kwargs = dict(temperature=temp, block_size=block, observation_temperature=1.0, resumable=False)
        assert not torch.equal(m.generate(mid, 6, **kwargs)[0], m.generate(zeroed, 6, **kwargs)[0])
    calls = compiled_equals_pytorch(m, mid, 11, temp, block, 1.0, entry)
    assert calls


@pytest.mark.parametrize("entry", ["fused_rounds", "prior_piece"])
def test_compiled_calls_follow_the_weights(entry):
    """The laid-out weights of the compiled rounds and of the prior piece (VSSM._round_weights,
    VSSM._piece_weights) are reused within one version of the weights and rebuilt after an in-place
    change to any weight they read or to a LayerNorm's eps, as the patch rounds' are."""
    m = prior_model(F64, prior_width=6, prior_hidden=20, prior_context=5)
    block = 4 if entry == "fused_rounds" else 64
    cache = "_round_weights_cache" if entry == "fused_rounds" else "_piece_weights_cache"
    temp = torch.tensor([1.0, 0.7], dtype=F64)

    def start():  # a state of the current weights
        return m.start(torch.randint(0, m.vocab_size, (2, 3), generator=torch.Generator().manual_seed(0)), [1, 2])

    changes = [
        lambda: m.decoder.inp.weight.mul_(-3.0),
        lambda: m.decoder.blocks[0].out.bias.add_(0.5),
        lambda: m.latent_prior.mlp[3].weight.mul_(2.0),
        lambda: m.latent_prior.context.weight.add_(torch.randn(20, 5, generator=torch.Generator().manual_seed(0))),
        lambda: [setattr(ln, "eps", 0.5) for ln in m.decoder.modules() if isinstance(ln, torch.nn.LayerNorm)],
    ]
    if entry == "fused_rounds":
        changes.append(lambda: m.partial_encoder.inp.weight.mul_(2.0))
    for change in changes:
        m.generate(start(), 12, temperature=temp, block_size=block, resumable=False)  # laid out, cached
        before = m.__dict__[cache][1]
        m.generate(start(), 12, temperature=temp, block_size=block, resumable=False)  # reused
        assert m.__dict__[cache][1] is before
        with torch.no_grad():
            change()
        assert compiled_equals_pytorch(m, start(), 12, temp, block, 0.5, entry)
        assert m.__dict__[cache][1] is not before


# ----- block sampling's rounds for a partial encoder that reads a patch a step (csrc/patch_rounds.c) --------------
def copying(m: VSSM) -> VSSM:
    """``m`` made to copy: its decoder draws the token its latent names (the input and head agree; the
    blocks add a little that depends on the state, so that a wrong state still shows in the states
    compared), and an absorbed latent is its token's (``A`` large), so that every z' of a round equals
    its z and the compiled rounds skip the pass over z' (csrc/patch_rounds.c, step 4)."""
    with torch.no_grad():
        for block in m.decoder.blocks:
            block.out.weight.mul_(0.05)
            block.out.bias.zero_()
        H = m.config.width
        a = torch.tensor([(-1.0) ** i for i in range(H)], dtype=m.dtype)  # (H,): zero mean, so LayerNorm keeps it
        m.decoder.inp.weight.copy_(torch.stack([-a, a], 1))  # z = 0 -> -a, z = 1 -> a
        m.decoder.inp.bias.zero_()
        m.decoder.head.weight.copy_(torch.stack([-5 * a, 5 * a]))  # token 1 where the latent is 1
        m.decoder.head.bias.zero_()
        A = m.partial_encoder.token_out  # (Q, V+1, Z*K + F): every column
        A[:, 0, :2], A[:, 1, :2] = torch.tensor([20.0, -20.0]), torch.tensor([-20.0, 20.0])
    return m


def rounds_of(phase: int, span: int, absorb: bool = False, P: int = 4) -> int:
    """The rounds after block 0 of a compiled patch-rounds call of ``span`` tokens from ``phase`` into a patch,
    with ``absorb`` the one that absorbs the last block too (whole, or the part a call stops inside)."""
    return max(0, -(-(span - (P - phase)) // P)) + absorb


def absorbs(args: tuple) -> bool:
    """Whether a compiled patch-rounds call (its arguments, ``native._patch_rounds``'s) absorbs its last block."""
    return bool(args[-2] or args[-1])  # keep (it absorbs), open_end


# a tiny pixel-latent VSSM whose partial encoder reads patches of 4 tokens (the patch rounds' tests)
PATCH_CFG = dict(vocab_size=2, n_latents=1, n_classes=2, prior_width=6, prior_hidden=20, prior_context=5, par_patch=4)


@pytest.mark.parametrize("dtype", [F64, torch.float32])
@pytest.mark.parametrize(
    ("variant", "block", "entry"),
    [
        ({}, None, "fused_rounds"),  # one pass: block 0 alone, or left open where kept
        ({}, 4, "fused_rounds"),
        ({"decoder_tokens": True}, 4, "fused_rounds"),
        ({"prior_width": 6, "prior_hidden": 20}, None, "fused_rounds"),  # scored: not the prior's piece
        ({"prior_width": 6, "prior_hidden": 20, "prior_context": 5}, 4, "fused_rounds"),
        (PATCH_CFG, 6, "patch_rounds"),
        (PATCH_CFG, 3, "patch_rounds"),
    ],
)
def test_a_scored_call_runs_in_the_compiled_calls(dtype, variant, block, entry, monkeypatch):
    """A call that wants the log-probabilities of its tokens' distributions (a completion's logprobs) runs in the
    compiled rounds as an unscored one does, the logits each token was drawn from written beside it: its tokens are
    the unscored call's, bit for bit, and its tokens, scores and state those of the PyTorch path (a model of the
    same weights with no compiled rounds), kept or not, for a batch of an unprompted row and two prompted ones, past
    a block."""
    from tests.conftest import tiny_model

    def model():
        return tiny_model("vssm", dtype=dtype, max_position=64, **variant)

    def start(m):  # an unprompted row and two prompted ones at one place: a group of two rows a compiled call
        prompts = torch.randint(0, m.vocab_size, (2, 5), generator=torch.Generator().manual_seed(5))
        return GenState.cat([m.start(torch.zeros(1, 0, dtype=torch.long), [4]), m.start(prompts, [5, 6])])

    m, ref = model(), model()
    calls = []
    real = getattr(native, f"_{entry}")
    monkeypatch.setattr(native, f"_{entry}", lambda *a, **k: calls.append(k.get("seen")) or real(*a, **k))
    kwargs = dict(temperature=torch.tensor([0.8, 1.0, 0.6], dtype=dtype), block_size=block, observation_temperature=0.5)
    tol = 1e-10 if dtype == F64 else 1e-4
    for resumable in (False, True):
        calls.clear()
        tokens, state, scores = m.generate_scored(start(m), 13, resumable=resumable, **kwargs)
        assert calls and all(seen is not None for seen in calls) and max(seen.shape[0] for seen in calls) >= 2
        assert torch.equal(tokens, m.generate(start(m), 13, resumable=resumable, **kwargs)[0])
        with monkeypatch.context() as mp:
            for off in ("fused_rounds", "patch_rounds", "prior_piece"):
                mp.setattr(native, off, lambda: None)
            ref_tokens, ref_state, ref_scores = ref.generate_scored(start(ref), 13, resumable=resumable, **kwargs)
        assert torch.equal(tokens, ref_tokens) and scores.shape == (3, 13, m.vocab_size)
        torch.testing.assert_close(scores, ref_scores, rtol=tol, atol=tol)
        assert (state is None) == (ref_state is None) == (not resumable)
        for k, v in ({} if ref_state is None else ref_state.tensors).items():
            torch.testing.assert_close(state[k], v, rtol=tol, atol=tol)


def patch_start(dtype, position: int, period: int = 0, copy: bool = False, **shape) -> tuple[VSSM, GenState]:
    """:data:`PATCH_CFG`'s model (tables by column where ``period``; :func:`copying` where ``copy``) and three rows
    after the same random ``position``-token prompt, seeds 4, 5, 6."""
    from tests.conftest import tiny_model

    m = tiny_model("vssm", dtype=dtype, max_position=64, par_period=period, **PATCH_CFG, **shape)
    if copy:
        m = copying(m)
    prompt = torch.randint(0, 2, (3, position), generator=torch.Generator().manual_seed(position))
    return m, m.start(prompt, [4, 5, 6])


@pytest.mark.parametrize("dtype", [F64, torch.float32])
@pytest.mark.parametrize("copy", [False, True])
@pytest.mark.parametrize(("position", "n", "block"), [(0, 17, 4), (8, 24, 4), (5, 20, 4), (7, 22, 4), (5, 20, 3)])
@pytest.mark.parametrize("period", [0, 6], ids=["Q=P", "Q=6"])
@pytest.mark.parametrize("shape", [{}, {"width": 17, "state_size": 5}, {"width": 17}], ids=["tiny", "H17-N5", "H17"])
def test_compiled_patch_rounds_equal_the_rounds_in_pytorch(dtype, copy, position, n, block, period, shape):
    """Tokens and every state tensor for blocks that are the partial encoder's patches (P = 4), from
    a patch boundary or inside a patch (its first tokens pending in the state), resumable or not, a
    temperature per row; with random weights (z' differs from z: the decoder passes over z') and with
    a copying model (every z' is its z: the pass is skipped); with the tables by patch position and by
    column (a period of 6: three patches before the columns' phase repeats, which the state carries).
    A block of 3 runs compiled too, across the patches.  Widths and modes that fill whole vectors
    and groups of four modes (16 and 8), and ones that do not on any build's vectors (17 channels: whole
    vectors and a last channel; 5 modes: the decoder's planar states gathered a lane at a time, 8 modes:
    read straight but for the last channel, csrc/s4d_block.c)."""
    m, start = patch_start(dtype, position, period, copy, **shape)
    temp = torch.tensor([1.0, 0.6, 0.0], dtype=dtype)
    obs = 0.0 if copy else 0.5
    calls = compiled_equals_pytorch(m, start, n, temp, block, obs, "patch_rounds")
    assert len(calls) == 2
    # rounds that skipped the pass over z': after a prompt generation continues from the absorbed decoder
    # state, so the first round reuses block 0's pass as the others reuse the last round's; with random
    # weights a round skips only where each z' of its block happens to be its z (a part block's few may)
    for args, out in calls:
        rounds = rounds_of(*args[:2], absorbs(args), block)
        assert out[-1] == rounds if copy else out[-1] < rounds or rounds == 0  # random: some z' is not its z


@pytest.mark.parametrize("dtype", [F64, torch.float32])
@pytest.mark.parametrize("copy", [False, True])
@pytest.mark.parametrize(("position", "n"), [(0, 3), (5, 2), (6, 1), (9, 2), (4, 1)])
@pytest.mark.parametrize("period", [0, 6], ids=["Q=P", "Q=6"])
def test_compiled_patch_rounds_of_a_call_that_ends_inside_its_first_block(dtype, copy, position, n, period):
    """A call that ends before its first block does (no round after block 0) runs compiled, kept or not: the kept
    one is block 0 left open (absorb 2 with no round), its tokens added to the pending patch of the absorbed state
    and, where the row has observed a token, read as EMPTYs by generation's (unprompted rows keep theirs);
    the tokens and every state tensor as the rounds in PyTorch leave them, and a session goes on from it alike."""
    m, start = patch_start(dtype, position, period, copy)
    temp = torch.tensor([1.0, 0.6, 0.0], dtype=dtype)
    obs = 0.0 if copy else 0.5
    calls = compiled_equals_pytorch(m, start, n, temp, 4, obs, "patch_rounds")
    assert [(args[:2], args[-1]) for args, _ in calls] == [((position % 4, n), True), ((position % 4, n), False)]
    kwargs = dict(temperature=temp, block_size=4, observation_temperature=obs)
    tokens, mid = m.generate(start, n, **kwargs)  # compiled, then on from that state
    tokens = torch.cat([tokens, m.generate(mid, 7, **kwargs)[0]], 1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(native, "patch_rounds", lambda: None)
        ref, ref_mid = m.generate(start, n, **kwargs)
        ref = torch.cat([ref, m.generate(ref_mid, 7, **kwargs)[0]], 1)
    assert torch.equal(tokens, ref)


@pytest.mark.parametrize("dtype", [F64, torch.float32])
@pytest.mark.parametrize("copy", [False, True])
@pytest.mark.parametrize(("position", "n"), [(5, 3), (0, 4), (6, 2), (3, 5)])
@pytest.mark.parametrize("period", [0, 6], ids=["Q=P", "Q=6"])
def test_compiled_patch_rounds_absorb_the_block_that_ends_a_kept_call(dtype, copy, position, n, period):
    """A resumable call that ends at a block boundary absorbs its last block in the compiled call (a last round
    that draws no block), whatever came before it in the call: block 0 alone, from a patch boundary or from
    inside a patch (the pending tokens' sum, carried in the state), or after a round; the states as the rounds in
    PyTorch leave them, and the absorbing round skips the decoder's pass over z' where every z' is its z."""
    m, start = patch_start(dtype, position, period, copy)
    calls = compiled_equals_pytorch(m, start, n, torch.tensor([1.0, 0.6, 0.0], dtype=dtype), 4, 0.0, "patch_rounds")
    assert [(args[:2], args[-2]) for args, _ in calls] == [((position % 4, n), True), ((position % 4, n), False)]
    for args, out in calls:
        rounds = rounds_of(*args[:2], absorbs(args))
        assert out[-1] == rounds if copy else out[-1] < rounds or rounds == 0  # random: some z' is not its z


@pytest.mark.parametrize("dtype", [F64, torch.float32])
@pytest.mark.parametrize("copy", [False, True])
@pytest.mark.parametrize(("position", "n"), [(0, 6), (5, 6), (8, 13), (3, 2), (6, 7)])
@pytest.mark.parametrize("period", [0, 6], ids=["Q=P", "Q=6"])
def test_compiled_patch_rounds_stop_inside_a_block_with_the_state_kept(dtype, copy, position, n, period):
    """A resumable call that stops inside a block after at least one round draws that part block in the compiled
    call too (open end): the absorbed states after it (its tokens the pending patch's first: their sum, their
    count, the patch's phase), and generation's (the part block read as EMPTYs, the decoder after its latents,
    the latent prior's state after its draws), as VSSM._piece leaves them; a session goes on from that state
    as from the state the rounds in PyTorch leave."""
    m, start = patch_start(dtype, position, period, copy)
    temp = torch.tensor([1.0, 0.6, 0.0], dtype=dtype)
    obs = 0.0 if copy else 0.5
    calls = compiled_equals_pytorch(m, start, n, temp, 4, obs, "patch_rounds")
    assert [(args[:2], args[-1]) for args, _ in calls] == [((position % 4, n), True), ((position % 4, n), False)]
    for args, out in calls:  # with random weights a block of a token or two may skip its pass by chance
        assert not copy or out[-1] == rounds_of(*args[:2], absorbs(args))
        assert (out[3] is None) is not args[-1]  # generation's states come back with an open end only
    kwargs = dict(temperature=temp, block_size=4, observation_temperature=obs)
    tokens, mid = m.generate(start, n, **kwargs)  # compiled, then on from that state: two more calls
    tokens = torch.cat([tokens, *(m.generate(mid, k, **kwargs)[0] for k in (9, 3))], 1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(native, "patch_rounds", lambda: None)  # the rounds in PyTorch throughout
        ref, ref_mid = m.generate(start, n, **kwargs)
        ref = torch.cat([ref, *(m.generate(ref_mid, k, **kwargs)[0] for k in (9, 3))], 1)
    assert torch.equal(tokens, ref)


# blocks of two to four patches of 4: from a block start or inside one, inside a patch or at its start; kept calls that
# end at a block's end, at a patch's inside a block, or inside a patch, after rounds or inside block 0
SEVERAL_PATCHES = [
    (0, 17, 8), (8, 24, 8), (0, 24, 12), (12, 20, 12), (16, 16, 8), (0, 40, 16), (5, 20, 8), (4, 13, 8), (8, 5, 8),
    (5, 2, 8), (5, 3, 8), (5, 6, 8), (6, 9, 12), (3, 1, 8), (0, 4, 8), (0, 6, 12), (13, 20, 8), (2, 30, 12),
]  # fmt: skip


# blocks of 2 and 1 inside patches of 4: from a patch start or inside one, at a block start or inside one; kept
# calls that end at a block's end inside a patch or at a patch's end, or stop inside a block, after rounds or not,
# with a step or without one (0 + 3, 1 + 2, 9 + 2: rounds inside one patch), block 0 left open (0, 2, 4 + 1)
INSIDE_A_PATCH = [
    (0, 17, 2), (1, 9, 2), (3, 6, 2), (5, 3, 1), (0, 8, 2), (2, 7, 1), (6, 13, 2), (7, 1, 2), (4, 2, 2), (1, 1, 2),
    (0, 5, 1), (0, 3, 2), (1, 2, 2), (9, 2, 2), (0, 1, 2), (2, 1, 2), (4, 1, 2),
]  # fmt: skip


# blocks that neither are whole patches of 4 nor divide one (3, 5, 6, 7, 10): patches end inside blocks, at a place that
# moves from block to block, or a block lies inside a patch; from a block start or inside one, a patch's start or inside
# one; kept calls that end at a block's end inside a patch or stop inside a block, after rounds or inside block 0
ACROSS_PATCHES = [
    (0, 17, 3), (5, 20, 3), (2, 9, 3), (0, 23, 5), (7, 19, 5), (3, 2, 5), (0, 25, 6), (4, 14, 6), (9, 5, 6), (1, 1, 6),
    (0, 30, 7), (6, 15, 7), (11, 3, 7), (0, 21, 10), (13, 17, 10), (2, 8, 10), (3, 4, 6), (8, 12, 6), (1, 4, 3),
    (1, 4, 6), (2, 2, 5), (1, 3, 6),
]  # fmt: skip  # the last three: block 0 left open past its patch's end, at it, and before it, from inside the patch


@pytest.mark.parametrize("dtype", [F64, torch.float32])
@pytest.mark.parametrize("copy", [False, True])
@pytest.mark.parametrize(("position", "n", "block"), SEVERAL_PATCHES + INSIDE_A_PATCH + ACROSS_PATCHES)
@pytest.mark.parametrize("period", [0, 6], ids=["Q=P", "Q=6"])
def test_compiled_patch_rounds_of_blocks_other_than_the_patch(dtype, copy, position, n, block, period):
    """Blocks of two, three and four patches (P = 4), blocks that divide the patch (2 and 1), and blocks that do
    neither (3, 5, 6, 7, 10), run compiled.
    In a block of several patches generation reads the later patches through network steps over EMPTYs (from
    generation's state in block 0, its pending tokens' input first, from the absorbed one after) and absorption
    steps over each patch; inside a patch a block's tokens join the pending patch, whose input gathers over the
    blocks until the patch ends and the network steps, and generation reads the head of the patches before.  A kept
    call that stops inside a block leaves the pending tokens in the absorbed state and generation's states after the
    part read as EMPTYs.  The tokens and every state tensor as the rounds in PyTorch leave them, unprompted
    (position 0: block 0 from the uniform prior) and after a prompt, with the tables by patch position and by
    column, and a session goes on from the kept state alike."""
    m, start = patch_start(dtype, position, period, copy)
    temp = torch.tensor([1.0, 0.6, 0.0], dtype=dtype)
    obs = 0.0 if copy else 0.5
    calls = compiled_equals_pytorch(m, start, n, temp, block, obs, "patch_rounds")
    phase, open_end = position % block, (position + n) % block != 0
    assert [(args[:2], args[-2], args[-1]) for args, _ in calls] == [  # keep, open_end
        ((phase, n), True, open_end),
        ((phase, n), False, False),
    ]
    for args, out in calls:  # a copying model's every z' is its z: each round skips the pass over z' (with random
        rounds = rounds_of(phase, n, absorbs(args), block)  # weights a part block of a token may, by chance)
        assert out is not None and (out[-1] == rounds if copy else out[-1] <= rounds)
    more = min(2 * block, m.max_position - position - n)
    kwargs = dict(temperature=temp, block_size=block, observation_temperature=obs)
    tokens, mid = m.generate(start, n, **kwargs)  # then on from that state, compiled
    tokens = torch.cat([tokens, m.generate(mid, more, **kwargs)[0]], 1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(native, "patch_rounds", lambda: None)  # the rounds in PyTorch throughout
        ref, ref_mid = m.generate(start, n, **kwargs)
        ref = torch.cat([ref, m.generate(ref_mid, more, **kwargs)[0]], 1)
    assert torch.equal(tokens, ref)


@pytest.mark.parametrize("dtype", [F64, torch.float32])
@pytest.mark.parametrize("n", [1, 3, 5, 6])
@pytest.mark.parametrize(
    ("positions", "period", "block"),
    [
        ((0, 4, 8), 0, 2),
        ((8, 12, 0), 0, 2),
        ((0, 8, 20), 6, 2),
        ((0, 12, 24), 0, 6),
        ((2, 14, 26), 6, 3),
        ((1, 21, 41), 6, 5),
    ],
)
def test_compiled_patch_rounds_inside_a_patch_mix_rows(dtype, n, positions, period, block):
    """Blocks of 2 inside patches of 4, and blocks of 6, 3 and 5 across them, in a batch of rows at different positions
    but the same place in their blocks and patches (and, with tables by column, different phases of the columns), an
    unprompted row among them (position 0: block 0 from the uniform prior, generation's state kept where the call
    stops inside it): compiled, and as the rounds in PyTorch leave them."""
    from tests.conftest import tiny_model
    from vssm.model.state import GenState

    m = tiny_model("vssm", dtype=dtype, max_position=64, par_period=period, **PATCH_CFG)
    rows = [m.start(torch.randint(0, 2, (1, p), generator=torch.Generator().manual_seed(p)), [p]) for p in positions]
    temp = torch.tensor([0.8, 1.0, 0.5], dtype=dtype)
    calls = compiled_equals_pytorch(m, GenState.cat(rows), n, temp, block, 0.5, "patch_rounds")
    assert len(calls) == 2 and all(out is not None for _, out in calls)


@pytest.mark.parametrize("dtype", [F64, torch.float32])
@pytest.mark.parametrize(
    ("position", "n", "block"),
    [(0, 20, 3), (4, 9, 2), (7, 14, 3), (1, 25, 12), (13, 4, 2), (0, 22, 4), (5, 19, 4), (3, 30, 9), (2, 17, 8)],
)
def test_compiled_patch_rounds_of_another_patch_size(dtype, position, n, block):
    """Patches of 6, blocks of 2, 3 (inside one), 12 (two) and 4, 8 and 9 (across them): the same as the rounds in
    PyTorch."""
    from tests.conftest import tiny_model

    m = tiny_model("vssm", dtype=dtype, max_position=64, **{**PATCH_CFG, "par_patch": 6})
    prompt = torch.randint(0, 2, (3, position), generator=torch.Generator().manual_seed(position))
    start = m.start(prompt, [4, 5, 6])
    calls = compiled_equals_pytorch(m, start, n, torch.tensor([1.0, 0.6, 0.0], dtype=dtype), block, 0.5, "patch_rounds")
    assert len(calls) == 2 and all(out is not None for _, out in calls)


def test_compiled_patch_rounds_refuse_rows_at_different_places_in_their_patches():
    """Blocks inside a patch step the network where a patch ends, for every row at once: the compiled call refuses
    rows at the same phase of a block of 2 but at different places in their patches of 4 (positions 8 and 10; None:
    nothing drawn).  Generation never hands it such rows: it runs a compiled call for each place (VSSM._by_groups),
    and each row gets what it gets alone."""
    from tests.conftest import tiny_model
    from vssm.model.sampling import row_temperatures
    from vssm.model.state import GenState

    m = tiny_model("vssm", dtype=F64, max_position=64, **PATCH_CFG)
    rows = [m.start(torch.randint(0, 2, (1, p), generator=torch.Generator().manual_seed(p)), [p]) for p in (8, 10)]
    start = GenState.cat(rows)
    with torch.no_grad():
        rounds = m._compiled_patch_rounds(2, start)
        assert rounds is not None
        assert rounds(0, 9, (row_temperatures(1.0, 2), row_temperatures(0.5, 2)), start, True, True) is None
    calls = compiled_equals_pytorch(m, start, 9, torch.tensor([1.0, 0.5], dtype=F64), 2, 0.5, "patch_rounds")
    assert len(calls) == 4 and all(out is not None for _, out in calls)  # a call a row, kept and not
    kwargs = dict(temperature=torch.tensor([1.0, 0.5], dtype=F64), block_size=2, observation_temperature=0.5)
    together = m.generate(start, 9, **kwargs)[0]
    alone = [
        m.generate(r, 9, **{**kwargs, "temperature": kwargs["temperature"][i : i + 1]})[0] for i, r in enumerate(rows)
    ]
    assert torch.equal(together, torch.cat(alone))


@pytest.mark.parametrize("dtype", [F64, torch.float32])
@pytest.mark.parametrize("patch", [0, 4], ids=["tokens", "patches"])
@pytest.mark.parametrize("shared", [False, True], ids=["by-row", "shared"])
def test_a_batch_at_different_places_in_its_blocks_runs_compiled_a_group_at_a_time(dtype, patch, shared):
    """A batch whose rows share no block size and place (a server's batch of sessions in chunks meets them at
    different places in their blocks) runs a group of rows at a time (VSSM._by_groups): by block size, phase and,
    for a partial encoder that reads patches, place in the patch; rows in one pass together; rows whose blocks do
    not fuse (here past half a window of 16) by block size and phase.  Each group of blocks that fuse is one compiled
    call, none refused, and every row gets the tokens, the state and the scores it gets alone, with its own
    temperature and observation temperature or shared ones, kept or not."""
    from tests.conftest import tiny_model
    from vssm.model.state import GenState

    cfg = PATCH_CFG if patch else {k: v for k, v in PATCH_CFG.items() if k != "par_patch"}
    m = tiny_model("vssm", dtype=dtype, max_position=64, **cfg)
    m.gen_window = 16  # blocks of 12 do not fuse
    positions = [0, 5, 9, 6, 8, 3, 7, 10, 13, 2, 14, 4, 11]
    blocks = [4, 4, 4, 2, 2, 0, 0, 4, 2, 3, 6, 12, 12]
    rows = [
        m.start(torch.randint(0, 2, (1, p), generator=torch.Generator().manual_seed(p)), [i])
        for i, p in enumerate(positions)
    ]
    temps = 0.8 if shared else torch.linspace(0.4, 1.2, len(rows), dtype=dtype)
    ratios = 0.5 if shared else torch.linspace(0.0, 1.0, len(rows), dtype=dtype)
    kwargs = dict(temperature=temps, block_size=torch.tensor(blocks), observation_temperature=ratios)
    entry = "_patch_rounds" if patch else "_fused_rounds"
    real, calls = getattr(native, entry), []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(native, entry, lambda *a, **k: calls.append(real(*a, **k)) or calls[-1])
        tokens, state, scores = m.generate_scored(GenState.cat(rows), 11, **kwargs)
        calls_scored = len(calls)
        plain, plain_state = m.generate(GenState.cat(rows), 11, **kwargs)
        calls_kept = len(calls) - calls_scored
        unkept, none = m.generate(GenState.cat(rows), 11, resumable=False, **kwargs)
    # a call a group that fuses, none refused: phases 0, 1 and 2 of block 4; block 2 at places 2, 0 and 1 of the
    # patch of 4, or at phases 0 and 1 without patches; blocks 3 and 6; without patches, the rows in one pass are a
    # call of the compiled rounds too (an open block, kept calls only: unkept, the latent prior's compiled piece);
    # the scored calls as many as the unscored ones
    assert calls_scored == calls_kept == 8, (calls_scored, calls_kept)
    assert len(calls) == 2 * calls_kept + (8 if patch else 7), len(calls)
    assert all(out is not None for out in calls) and none is None
    tol = 1e-10 if dtype == F64 else 1e-4
    for i, r in enumerate(rows):
        t = temps if shared else temps[i : i + 1]
        o = ratios if shared else ratios[i : i + 1]
        kw = dict(temperature=t, block_size=blocks[i] or None, observation_temperature=o)
        t_alone, s_alone, sc_alone = m.generate_scored(r, 11, **kw)
        assert torch.equal(tokens[i], t_alone[0]) and torch.equal(plain[i], m.generate(r, 11, **kw)[0][0])
        assert torch.equal(unkept[i], m.generate(r, 11, resumable=False, **kw)[0][0])
        torch.testing.assert_close(scores[i], sc_alone[0], rtol=tol, atol=tol)
        assert set(state.tensors) == set(s_alone.tensors) == set(plain_state.tensors)
        for k, v in s_alone.tensors.items():
            torch.testing.assert_close(state[k][i], v[0], rtol=tol, atol=tol)
            torch.testing.assert_close(plain_state[k][i], v[0], rtol=tol, atol=tol)


def test_a_one_value_temperature_is_shared_by_every_row_and_another_count_is_refused():
    """A temperature tensor of one value is every row's (as a float is), in a batch of rows at different places
    in their blocks too; a tensor of another count than the rows is refused."""
    from tests.conftest import tiny_model
    from vssm.model.state import GenState

    m = tiny_model("vssm", dtype=F64, max_position=64, **PATCH_CFG)
    start = GenState.cat([m.start(torch.zeros(1, p, dtype=torch.long), [p]) for p in (0, 5, 6)])
    ref = m.generate(start, 9, temperature=0.7, block_size=4)
    for t in (torch.tensor(0.7, dtype=F64), torch.tensor([0.7], dtype=F64)):
        got = m.generate(start, 9, temperature=t, block_size=4)
        assert torch.equal(got[0], ref[0]) and all(torch.equal(got[1][k], v) for k, v in ref[1].tensors.items())
    with pytest.raises(ValueError, match="temperature has 2 values for 3 rows"):
        m.generate(start, 9, temperature=torch.tensor([0.7, 0.8]), block_size=4)


@pytest.mark.parametrize("dtype", [F64, torch.float32])
@pytest.mark.parametrize(
    ("position", "n", "block"), [(5, 20, 8), (0, 17, 8), (6, 9, 12), (13, 20, 8), (1, 5, 8), (5, 20, 6), (2, 17, 10)]
)
@pytest.mark.parametrize("shape", [{"width": 17, "state_size": 5}, {"width": 72, "state_size": 20}], ids=["H17", "H72"])
def test_compiled_patch_rounds_of_several_patches_in_odd_shapes(dtype, position, n, block, shape):
    """Blocks of several patches with widths and modes that do not fill whole vectors or groups of four (17
    channels, 5 modes), and with more than one tile of the states' layout (72 channels, 20 modes:
    csrc/s4d_block.c, ssm_states_layout), as the rounds in PyTorch leave them."""
    m, start = patch_start(dtype, position, 6, False, **shape)
    calls = compiled_equals_pytorch(m, start, n, torch.tensor([1.0, 0.6, 0.0], dtype=dtype), block, 0.5, "patch_rounds")
    assert len(calls) == 2 and all(out is not None for _, out in calls)


@pytest.mark.parametrize("dtype", [F64, torch.float32])
@pytest.mark.parametrize("period", [0, 6], ids=["Q=P", "Q=6"])
@pytest.mark.parametrize(
    "calls",
    [
        [(8, 7), (2, 5), (12, 9), (1, 3), (4, 6), (16, 13), (2, 3), (8, 5)],
        [(3, 7), (6, 5), (5, 9), (10, 3), (7, 6), (4, 13), (6, 3), (9, 5)],
    ],
    ids=["of-patches", "across-patches"],
)
def test_compiled_patch_rounds_of_a_session_that_changes_block_size(dtype, period, calls):
    """A session whose calls change block size (whole patches or parts of one; or sizes across patches), each
    starting where the last stopped, inside blocks and patches, every call compiled: the same tokens and state
    tensors after each call as the same session in PyTorch."""
    m, start = patch_start(dtype, 3, period)
    temp = torch.tensor([1.0, 0.6, 0.0], dtype=dtype)
    state, ref, compiled = start, start, []
    real = native._patch_rounds
    tol = 1e-10 if dtype == F64 else 1e-4
    for block, n in calls:
        kwargs = dict(temperature=temp, block_size=block, observation_temperature=0.5)
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(native, "_patch_rounds", lambda *a, **k: compiled.append(real(*a, **k)) or compiled[-1])
            tokens, state = m.generate(state, n, **kwargs)
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(native, "patch_rounds", lambda: None)
            mp.setattr(native, "prior_piece", lambda: None)
            ref_tokens, ref = m.generate(ref, n, **kwargs)
        assert torch.equal(tokens, ref_tokens)
        for k, v in ref.tensors.items():
            torch.testing.assert_close(state[k], v, rtol=tol, atol=tol)
    assert len(compiled) == 8 and all(out is not None for out in compiled)


@pytest.mark.parametrize("dtype", [F64, torch.float32])
@pytest.mark.parametrize(("first", "n"), [(3, 14), (4, 13), (1, 2), (6, 1), (0, 9), (1, 5), (2, 3)])
@pytest.mark.parametrize("period", [0, 6], ids=["Q=P", "Q=6"])
def test_compiled_patch_rounds_of_several_patches_mix_prompted_rows(dtype, first, n, period, monkeypatch):
    """Blocks of 8 (two patches of 4) in a batch of an unprompted row and two prompted ones, after a call at block
    4 (generation's states then ahead of the absorbed ones where it stopped inside a block): block 0's
    generation steps from generation's state in the rows that observed a token and leaves the other's as it was
    (also where a call stops inside block 0 after a step: 1 + 5, 2 + 3), as the rounds in PyTorch do."""
    from tests.conftest import tiny_model
    from vssm.model.state import GenState

    m = tiny_model("vssm", dtype=dtype, max_position=64, par_period=period, **PATCH_CFG)
    with torch.no_grad():  # the prompted rows' block 0 reads the partial encoder: latents all but surely 0
        m.partial_encoder.token_out[:, m.empty_token, :2] = torch.tensor([3.0, -3.0])
    rows = [m.start(torch.randint(0, 2, (1, p), generator=torch.Generator().manual_seed(p)), [p]) for p in (0, 8, 16)]
    start = GenState.cat(rows)
    with monkeypatch.context() as mp:
        mp.setattr(native, "patch_rounds", lambda: None)
        _, mid = m.generate(start, first, block_size=4, observation_temperature=0.5)
    temp = torch.tensor([0.8, 1.0, 0.5], dtype=dtype)
    calls = compiled_equals_pytorch(m, mid, n, temp, 8, 0.5, "patch_rounds")
    assert [args[:2] for args, _ in calls] == [(first % 8, n)] * 2 and all(out is not None for _, out in calls)


def test_compiled_patch_rounds_refuse_a_state_whose_pending_patch_is_elsewhere():
    """The C reads the pending patch's token count from the packed state and draws nothing where a row's
    is not the call's phase: the call returns None (the caller's loop runs instead)."""
    from tests.conftest import tiny_model
    from vssm.model.sampling import row_temperatures

    cfg = PATCH_CFG
    m = tiny_model("vssm", dtype=F64, max_position=64, **cfg)
    start = m.start(torch.randint(0, 2, (2, 5), generator=torch.Generator().manual_seed(1)), [1, 2])  # phase 1
    temps = (row_temperatures(1.0, 2), row_temperatures(0.5, 2))
    with torch.no_grad():
        rounds = m._compiled_patch_rounds(4, start)
        assert rounds is not None
        assert rounds(1, 11, temps, start, True) is not None
        assert rounds(2, 10, temps, start, True) is None  # the state holds one pending token, not two
        gen = start["gen"].clone()
        gen[1, -1, 0, 1] = 0  # row 1 has observed its prompt: generation's pending patch must hold its token too
        assert rounds(1, 11, temps, start.evolve(gen=gen), True) is None
        with pytest.raises(ValueError, match="bad inputs"):  # a kept call's span ends at a block's end ...
            rounds(1, 10, temps, start, True)
        with pytest.raises(ValueError, match="bad inputs"):  # ... or, with an open end, inside one
            rounds(1, 3, temps, start, True, True)


def test_compiled_patch_rounds_by_column_read_each_row_s_own_columns():
    """Tables by column (Q = 6 > P = 4): rows at positions 5 and 9 (one pending token each, the
    patch's phase 1 and 2 of a cycle of 3) read different columns in one compiled call, which draws
    and leaves what the rounds in PyTorch do; a state whose stored phase disagrees with its position
    is refused (None: nothing drawn)."""
    from tests.conftest import tiny_model
    from vssm.model.sampling import row_temperatures

    cfg = PATCH_CFG
    m = tiny_model("vssm", dtype=F64, max_position=64, par_period=6, **cfg)
    gen = torch.Generator().manual_seed(3)
    a, b = (m.start(torch.randint(0, 2, (1, p), generator=gen), [s]) for p, s in ((5, 7), (9, 8)))
    start = GenState.cat([a, b])
    calls = compiled_equals_pytorch(m, start, 19, torch.tensor([1.0, 0.7], dtype=F64), 4, 0.5, "patch_rounds")
    assert calls and all(args[0] == 1 for args, _ in calls)  # the call's phase: one pending token
    temps = (row_temperatures(1.0, 2), row_temperatures(0.5, 2))
    par = start["par"].clone()
    par[1, -1, 1, 1] = 0  # row 1's stored phase (2) no longer its position's
    with torch.no_grad():
        rounds = m._compiled_patch_rounds(4, start)
        assert rounds is not None and rounds(1, 11, temps, start, True) is not None
        assert rounds(1, 11, temps, start.evolve(par=par), True) is None


@pytest.mark.parametrize("dtype", [F64, torch.float32])
def test_compiled_patch_rounds_draw_block_0_per_row_from_the_prior_it_has(dtype):
    """Block 0, drawn in the compiled call, from the uniform prior in a row that has observed nothing
    and from the partial encoder in a row that has, in one batch (rows at the same phase)."""
    from tests.conftest import tiny_model
    from vssm.model.state import GenState

    cfg = PATCH_CFG
    m = tiny_model("vssm", dtype=dtype, max_position=64, **cfg)
    with torch.no_grad():  # where a token was observed, block 0's latents are all but surely 0
        m.partial_encoder.token_out[:, m.empty_token, :2] = torch.tensor([6.0, -6.0])
    fresh = m.start(torch.zeros(1, 0, dtype=torch.long), [4])
    prompted = m.start(torch.randint(0, 2, (1, 8), generator=torch.Generator().manual_seed(3)), [5])
    start = GenState.cat([fresh, prompted])
    assert start["observed"].tolist() == [False, True]
    temp = torch.tensor([0.8, 1.0], dtype=dtype)
    for n in (14, 2):  # 2: block 0 left open, generation's state advanced in the prompted row only
        calls = compiled_equals_pytorch(m, start, n, temp, 4, 0.5, "patch_rounds")
        assert len(calls) == 2
    # block 0 left open from phases 0, 1 and 2: from 1 on the unprompted row's generation state holds no pending
    # token (it read none) while its absorbed state holds some
    from vssm.model.patch import PatchNet

    for _ in range(3):
        calls = compiled_equals_pytorch(m, start, 1, temp, 4, 0.5, "patch_rounds")
        assert len(calls) == 2
        start = m.generate(start, 1, temperature=temp, block_size=4)[1]
    assert PatchNet.pending(start["par"]).tolist() == [3, 3] and PatchNet.pending(start["gen"]).tolist() == [0, 3]


@pytest.mark.parametrize("dtype", [F64, torch.float32])
@pytest.mark.parametrize("copy", [False, True])
@pytest.mark.parametrize(("first", "block"), [(4, 8), (6, 8), (4, 64)])
def test_compiled_patch_rounds_after_a_call_of_another_block_size(dtype, copy, first, block, monkeypatch):
    """A call of another block size (8, or one pass) leaves the state generation continues from ahead
    of the absorbed one, here at a patch boundary (12) or inside one (14): block 0 reads generation's
    residual stream and decoder state, and round 1 reuses block 0's decoder pass only where that
    state is the absorbed one, as the rounds in PyTorch read them."""
    from tests.conftest import tiny_model

    cfg = PATCH_CFG
    m = tiny_model("vssm", dtype=dtype, max_position=64, **cfg)
    if copy:
        m = copying(m)
        with torch.no_grad():  # drawn tokens that differ from their latents at temperature 1
            m.decoder.head.weight.mul_(0.01)
    start = m.start(torch.randint(0, 2, (3, 8), generator=torch.Generator().manual_seed(8)), [4, 5, 6])
    with monkeypatch.context() as mp:
        mp.setattr(native, "patch_rounds", lambda: None)
        _, mid = m.generate(start, first, block_size=block, observation_temperature=1.0)
    assert not torch.equal(mid["gen"], mid["par"]) and not torch.equal(mid["dec"], mid["dec_abs"])
    temp = torch.tensor([1.0, 0.6, 0.0], dtype=dtype)
    for n in (12, 1):  # 1: block 0 left open, from generation's states ahead of the absorbed ones
        calls = compiled_equals_pytorch(m, mid, n, temp, 4, 0.0 if copy else 0.5, "patch_rounds")
        assert len(calls) == 2
        for args, out in calls:  # round 1 cannot reuse block 0's pass: it ran from generation's state
            rounds = rounds_of(*args[:2], absorbs(args))
            assert out[-1] == max(rounds - 1, 0) if copy else out[-1] < rounds or rounds == 0  # random: a z' differs


@pytest.mark.parametrize("dtype", [F64, torch.float32])
def test_compiled_patch_rounds_with_several_latents_of_several_classes(dtype):
    """Two latents of three classes a step: the prior's tables keep each latent's class 0 apart."""
    from tests.conftest import tiny_model

    cfg = dict(vocab_size=3, n_latents=2, n_classes=3, prior_width=6, prior_hidden=20, prior_context=5, par_patch=4)
    m = tiny_model("vssm", dtype=dtype, max_position=64, **cfg)
    with torch.no_grad():
        m.latent_prior.mlp[3].weight.mul_(10.0)  # the prior's state matters
    start = m.start(torch.randint(0, 3, (3, 5), generator=torch.Generator().manual_seed(5)), [4, 5, 6])
    temp = torch.tensor([1.0, 0.6, 0.0], dtype=dtype)
    assert len(compiled_equals_pytorch(m, start, 19, temp, 4, 0.5, "patch_rounds")) == 2


def test_compiled_patch_rounds_follow_the_weights():
    """The compiled rounds' laid-out weights (VSSM._patch_weights) are rebuilt after an in-place change
    to any weight they read (an optimiser step, a load) or to a LayerNorm's eps."""
    from tests.conftest import tiny_model

    cfg = PATCH_CFG
    m = tiny_model("vssm", dtype=F64, max_position=64, **cfg)
    temp = torch.tensor([1.0, 0.7], dtype=F64)

    def start():  # a state of the current weights
        return m.start(torch.zeros(2, 0, dtype=torch.long), [1, 2])

    changes = [
        lambda: m.decoder.inp.weight.mul_(-3.0),
        lambda: m.partial_encoder.token_out.mul_(4.0),
        lambda: m.partial_encoder.net.inp.bias.add_(torch.linspace(-3.0, 3.0, m.config.width, dtype=F64)),
        lambda: m.latent_prior.context.weight.add_(torch.randn(20, 5, generator=torch.Generator().manual_seed(0))),
        lambda: [setattr(ln, "eps", 0.5) for ln in m.decoder.modules() if isinstance(ln, torch.nn.LayerNorm)],
    ]
    for change in changes:
        m.generate(start(), 12, temperature=temp, block_size=4, resumable=False)  # laid out, cached
        before = m.__dict__["_patch_weights_cache"][1]
        m.generate(start(), 12, temperature=temp, block_size=4, resumable=False)  # reused
        assert m.__dict__["_patch_weights_cache"][1] is before
        with torch.no_grad():
            change()
        assert len(compiled_equals_pytorch(m, start(), 12, temp, 4, 0.5, "patch_rounds")) == 2
        assert m.__dict__["_patch_weights_cache"][1] is not before


@pytest.mark.parametrize("dtype", [F64, torch.float32])
def test_compiled_patch_rounds_continue_a_block_a_call_left_open(dtype, monkeypatch):
    """A call that ends inside a block leaves the latent prior mid-block; the next call's block 0,
    drawn in the compiled call, continues the prior from that state (made to matter: its last layer
    scaled up), as the rounds in PyTorch do."""
    from tests.conftest import tiny_model

    cfg = PATCH_CFG
    m = tiny_model("vssm", dtype=dtype, max_position=64, **cfg)
    with torch.no_grad():
        m.latent_prior.mlp[3].weight.mul_(10.0)
    start = m.start(torch.randint(0, 2, (3, 4), generator=torch.Generator().manual_seed(2)), [4, 5, 6])
    with monkeypatch.context() as mp:
        mp.setattr(native, "patch_rounds", lambda: None)
        _, mid = m.generate(start, 2, block_size=4)  # two tokens into the block: the prior's state after them
    assert bool((mid["prior"] != 0).any())
    temp = torch.tensor([1.0, 0.6, 0.0], dtype=dtype)
    calls = compiled_equals_pytorch(m, mid, 11, temp, 4, 0.5, "patch_rounds")
    assert len(calls) == 2


@pytest.mark.parametrize("dtype", [F64, torch.float32])
@pytest.mark.parametrize("n", [3, 7])
def test_compiled_patch_rounds_draw_each_row_s_block_0_as_alone_whatever_the_others_prior(dtype, n):
    """Block 0's latents come from the prior's tables where a row's prior state is zeros (a block start) and from
    its recurrence where it is not, a row's way its own: a row at phase 2 of block 6 whose last call ended a block of
    4 (its prior state zeros) batched with one in the middle of its block of 6 draws what it draws alone, and so does
    the other, the latent prior's state bit for bit.  (The two ways differ only in the logits' rounding, which here
    never moved a draw: this checks the batch against each row alone, not which way a row took.)"""
    from tests.conftest import tiny_model
    from vssm.model.state import GenState

    m = tiny_model("vssm", dtype=dtype, max_position=64, **PATCH_CFG)
    fresh = m.generate(m.start(torch.zeros(1, 0, dtype=torch.long), [1]), 8, block_size=4)[1]  # a block of 4 ended
    mid = m.generate(m.start(torch.zeros(1, 0, dtype=torch.long), [2]), 8, block_size=6)[1]  # inside a block of 6
    assert not bool(fresh["prior"].any()) and bool(mid["prior"].any())
    real, calls = native._patch_rounds, []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(native, "_patch_rounds", lambda *a, **k: calls.append(real(*a, **k)) or calls[-1])
        tokens, state = m.generate(GenState.cat([fresh, mid]), n, block_size=6)
    assert len(calls) == 1 and calls[0] is not None  # one call for both rows: the same place
    for i, row in enumerate((fresh, mid)):
        alone_tokens, alone = m.generate(row, n, block_size=6)
        assert torch.equal(tokens[i], alone_tokens[0])
        assert torch.equal(state["prior"][i], alone["prior"][0])


# ----- the baselines' sequential loops (csrc/transformer_loop.c, csrc/gru_loop.c, csrc/vrnn_loop.c, csrc/ar_loop.c) ---
# per family: the compiled loop's Python wrapper, its getter, and two shapes (the Transformer's width and heads: heads
# of 6 and 10 channels, an MLP of 120 that leaves each row a part vector; the GRU's width: whole vectors and a tail;
# the VRNN's the same, with latents of 3 x 4 and 2 x 5 classes: a whole vector and a part one)
LOOPS = {
    "ar-ssm": ("_ar_loop", "ar_loop", [{"width": 24, "state_size": 5}, {"width": 17, "state_size": 5}]),
    "ar-transformer": ("_transformer_loop", "transformer_loop", [{"width": 24, "heads": 4}, {"width": 30, "heads": 3}]),
    "ar-gru": ("_gru_loop", "gru_loop", [{"width": 24}, {"width": 20}]),
    "vrnn": (
        "_vrnn_loop",
        "vrnn_loop",
        [{"width": 24, "n_latents": 3, "n_classes": 4}, {"width": 20, "n_latents": 2, "n_classes": 5}],
    ),
}
CASES = [(f, i) for f in LOOPS for i in range(2)]
NEW = ["ar-transformer", "ar-gru", "vrnn"]  # the AR-SSM's own fallbacks and packs are tested above


def _ar(family: str, dtype: torch.dtype = F64, shape: int = 0, **overrides):
    from tests.conftest import tiny_model

    cfg = {"vocab_size": 7, **({} if family == "vrnn" else {"layers": 3}), **LOOPS[family][2][shape], **overrides}
    if family == "ar-transformer":
        cfg["max_position"] = 160
    return tiny_model(family, dtype=dtype, **cfg)


def _staggered(m, rows: int = 3):
    """A state of ``rows`` rows at their own lengths: prompts of 4 tokens, then 0, 5, 9, ... more appended."""
    p = torch.randint(0, 7, (rows, 4), generator=torch.Generator().manual_seed(2))
    parts = [m.start(p[i : i + 1], 1 + i) for i in range(rows)]
    more = torch.randint(0, 7, (1, 40), generator=torch.Generator().manual_seed(3))
    parts = [s if i == 0 else m.append(s, more[:, : 5 * i - 1 + i % 2]) for i, s in enumerate(parts)]
    return GenState.cat(parts)


def _spied(monkeypatch: pytest.MonkeyPatch, family: str) -> list[int]:
    calls: list[int] = []
    name = LOOPS[family][0]
    real = getattr(native, name)
    monkeypatch.setattr(native, name, lambda *a, **k: calls.append(1) or real(*a, **k))
    return calls


def _without(monkeypatch: pytest.MonkeyPatch, family: str) -> None:
    monkeypatch.setattr(native, LOOPS[family][1], lambda: None)


def _state_keys(family: str) -> tuple[str, ...]:
    return {"ar-transformer": ("logits", "k", "v"), "vrnn": ("h",)}.get(family, ("logits", "h"))


@pytest.mark.parametrize("dtype", [F64, torch.float32])
@pytest.mark.parametrize("resumable", [True, False])
@pytest.mark.parametrize("temperature", [1.0, 0.0, "rows"])
@pytest.mark.parametrize("family, shape", CASES)
def test_the_compiled_baseline_loops_equal_the_loop_in_pytorch(
    dtype, resumable, temperature, family, shape, monkeypatch
):
    """Tokens, logits and state from rows at different lengths (a Transformer head's slots cross the loop's 16 lanes
    at different places for each row); float32 within its rounding.  The caller's state is a value: never
    written."""
    m = _ar(family, dtype, shape)
    state = _staggered(m)
    temp = torch.tensor([1.0, 0.0, 1.6], dtype=F64) if temperature == "rows" else temperature
    kept = {k: v.clone() for k, v in state.tensors.items()}
    calls = _spied(monkeypatch, family)
    tokens, nxt = m.generate(state, 23, temperature=temp, resumable=resumable)
    assert calls
    for k, v in kept.items():
        assert torch.equal(state[k], v), k
    _without(monkeypatch, family)
    ref_tokens, ref = m.generate(state, 23, temperature=temp, resumable=resumable)
    assert len(calls) == 1 and torch.equal(tokens, ref_tokens)
    if not resumable:
        assert nxt is None and ref is None
        return
    tol = 1e-10 if dtype == F64 else 1e-5
    assert set(nxt.tensors) == set(ref.tensors)
    for k in _state_keys(family):
        assert nxt[k].shape == ref[k].shape, k
        torch.testing.assert_close(nxt[k], ref[k], rtol=tol, atol=tol)
    assert torch.equal(nxt.position, ref.position)
    if family == "ar-transformer":
        assert torch.equal(nxt["length"], ref["length"])


@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize("family, shape", CASES)
def test_the_compiled_baseline_loops_give_the_same_bits_in_any_chunks_and_batch(dtype, family, shape, monkeypatch):
    """A session's chunks (through the state's bytes) leave the tokens and the state of one call, bit for bit, and
    each row of a batch at its own length draws and stores what it would alone: a step's arithmetic depends on the
    row's own length only; 7 rows reach the products' tiles of 6 rows and the rows left over."""
    m = _ar(family, dtype, shape).freeze()
    state = _staggered(m, 7)
    calls = _spied(monkeypatch, family)
    m._unsettle()  # (the VRNN's appends kept a check of batch 1 that holds the loop before the spy)
    whole, s_whole = m.generate(state, 96)
    for chunks in [(16,) * 6, (3, 29, 1, 40, 23)]:
        parts, st = [], state
        for n in chunks:
            t, st = m.generate(GenState.from_bytes(st.to_bytes()), n)
            parts.append(t)
        assert torch.equal(torch.cat(parts, 1), whole)
        for k, v in s_whole.tensors.items():
            assert torch.equal(st[k], v), k
    for i in range(7):
        alone, s_alone = m.generate(state.rows(slice(i, i + 1)), 96)
        assert torch.equal(alone, whole[i : i + 1])
        if family == "ar-transformer":
            used = int(s_alone["length"][0])
            for k in ("k", "v"):
                assert torch.equal(s_alone[k][0, :, :, :used], s_whole[k][i, :, :, :used]), k
        else:
            assert torch.equal(s_alone["h"][0], s_whole["h"][i])
        if family != "vrnn":  # (its state is h alone: its logits depend on the latent drawn next)
            assert torch.equal(s_alone["logits"][0], s_whole["logits"][i])
    assert len(calls) == 1 + 5 + 6 + 7


@pytest.mark.parametrize("resumable", [True, False])
@pytest.mark.parametrize("family", list(LOOPS))
def test_the_compiled_baseline_loops_score_without_changing_the_tokens(family, resumable, monkeypatch):
    """Asking for the tokens' log-probabilities keeps the compiled loop, so a request's tokens do not depend on
    whether it asked; the scores equal those of the loop in PyTorch, in a call that keeps no state (a completion)
    as in one that does."""
    m = _ar(family, torch.float32).freeze()
    state = _staggered(m)
    calls = _spied(monkeypatch, family)
    plain, _ = m.generate(state, 17, resumable=resumable)
    scored, _, scores = m.generate_scored(state, 17, resumable=resumable)
    assert len(calls) == 2 and torch.equal(plain, scored) and scores.shape == (3, 17, 7)
    _without(monkeypatch, family)
    m._unsettle()
    ref, _, ref_scores = m.generate_scored(state, 17, resumable=resumable)
    assert torch.equal(ref, plain)
    torch.testing.assert_close(scores, ref_scores, rtol=1e-5, atol=1e-5)


def _unfit(family: str) -> list:
    """Changes that leave a model the compiled loop cannot reproduce."""
    if family == "ar-transformer":
        return [
            lambda m: setattr(m.blocks[0].mlp[1], "approximate", "tanh"),
            lambda m: setattr(m.blocks[2].ln2, "eps", 0.5),
            lambda m: (setattr(m.blocks[0].drop, "p", 0.5), m.blocks[0].drop.train()),
            lambda m: setattr(m.blocks[1].proj, "bias", None),
        ]
    if family == "vrnn":
        return [
            lambda m: setattr(m.dec_out, "bias", None),
            lambda m: setattr(m.gru_z, "bias", torch.nn.Parameter(torch.full((72,), 0.1, dtype=F64))),
            lambda m: setattr(m.prior, "1", torch.nn.Tanh()),
        ]
    g = torch.nn.GRU(24, 24, 3, batch_first=True, bias=False, dtype=F64)
    return [
        lambda m: (setattr(m.gru, "dropout", 0.5), m.gru.train()),
        lambda m: setattr(m.head, "bias", None),
        lambda m: setattr(m, "gru", g),
    ]


@pytest.mark.parametrize("family", NEW)
def test_the_compiled_baseline_loops_keep_what_they_cannot_reproduce_in_pytorch(family, monkeypatch):
    """A hook, what one call cannot reproduce (the Transformer's approximate GELU, LayerNorms of different eps, an
    active dropout, a missing bias; the GRU's dropout between layers in training, a head or stack without biases;
    the VRNN's emission without a bias, a bias where the loop has none, an activation other than ReLU)
    or gradients keep the loop in PyTorch (the hook
    runs every step); a temperature of NaN does too, as for the AR-SSM's loop."""
    calls = _spied(monkeypatch, family)

    def fresh():
        m = _ar(family)
        return m, _staggered(m, 2)

    m, state = fresh()
    calls.clear()  # (the VRNN's appends that built the state ran compiled)
    seen = []
    module = m.blocks[1].mlp if family == "ar-transformer" else m.dec_out if family == "vrnn" else m.head
    handle = module.register_forward_hook(lambda mod, args, out: seen.append(1))
    m.generate(state, 5)
    handle.remove()
    assert len(seen) == 5 and not calls
    for change in _unfit(family):
        m = _ar(family)
        change(m)
        m.generate(_staggered(m, 2), 5)  # (a state of the changed model: a new stack is new weights)
        assert not calls
    m, state = fresh()
    calls.clear()
    with torch.enable_grad():
        m._generate(state, 5, 1.0, True)  # (generate itself turns gradients off)
    m.generate(state, 5, temperature=float("nan"))
    assert not calls
    m.generate(state, 5)
    assert len(calls) == 1


@pytest.mark.parametrize("family", NEW)
def test_the_compiled_baseline_loops_follow_the_weights(family):
    """The pack is reused within one version of the weights and rebuilt after an in-place change to any of them;
    after that (or, for the Transformer, a change of every LayerNorm's eps, passed beside the pack) the compiled
    loop draws what the loop in PyTorch draws."""
    m = _ar(family)
    if family == "ar-transformer":
        cache, keys = "_tr_pack_cache", ("k", "logits")
        changes = [
            lambda: m.blocks[1].qkv.weight.mul_(-2.0),
            lambda: m.head.bias.add_(0.7),
            lambda: m.pos.weight.add_(0.3),
            lambda: [setattr(ln, "eps", 0.5) for ln in m.modules() if isinstance(ln, torch.nn.LayerNorm)],
        ]
    elif family == "vrnn":  # the tables of a token's parts (phi_x, gru_x, enc_x) and the filter's weights too
        cache, keys = "_vrnn_pack_cache", ("h",)
        changes = [
            lambda: m.gru_h.weight.mul_(-2.0),
            lambda: m.phi_x.weight.add_(0.3),
            lambda: m.enc_x.bias.add_(0.7),
            lambda: m.phi_z[2].weight.mul_(1.5),
            lambda: m.enc_out.bias.add_(-0.4),
        ]
    else:
        cache, keys = "_gru_pack_cache", ("h", "logits")
        changes = [
            lambda: m.gru.weight_hh_l1.mul_(-2.0),
            lambda: m.gru.bias_ih_l2.add_(0.7),
            lambda: m.head.bias.add_(0.7),
            lambda: m.embed.weight.add_(0.3),
        ]
    for change in changes:
        m.generate(_staggered(m, 2), 9)  # laid out, cached
        before = m.__dict__[cache][1]
        m.generate(_staggered(m, 2), 9)  # reused
        assert m.__dict__[cache][1] is before
        with torch.no_grad():
            change()
        state = _staggered(m, 2)  # (the VRNN's appends run compiled too)
        tokens, nxt = m.generate(state, 9)
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(native, LOOPS[family][1], lambda: None)
            ref_state = _staggered(m, 2)
            ref_tokens, ref = m.generate(state, 9)
        assert torch.equal(tokens, ref_tokens)
        for k in keys:
            torch.testing.assert_close(state[k], ref_state[k], rtol=1e-10, atol=1e-10)
            torch.testing.assert_close(nxt[k], ref[k], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("family", NEW)  # (the AR-SSM's loop takes its buffers from Python: it allocates none)
def test_a_loop_whose_scratch_cannot_be_allocated_runs_in_pytorch(family, monkeypatch, caplog):
    """Where a compiled loop's scratch cannot be allocated (its C returns -1 before writing anything) the call runs
    in PyTorch and draws what that loop draws; said once per model."""
    m = _ar(family)
    state = _staggered(m)
    entry = {"ar-transformer": "transformer_loop_f64", "ar-gru": "gru_loop_f64", "vrnn": "vrnn_loop_f64"}[family]
    native._load()
    monkeypatch.setattr(native._lib, entry, lambda *args: -1)
    with caplog.at_level("WARNING"):
        tokens, nxt = m.generate(state, 11)
        m.generate(state, 11)
    assert sum("could not allocate its scratch" in r.getMessage() for r in caplog.records) == 1
    _without(monkeypatch, family)
    ref_tokens, ref = m.generate(state, 11)
    assert torch.equal(tokens, ref_tokens)
    for k in _state_keys(family):
        assert torch.equal(nxt[k], ref[k]), k  # the loop in PyTorch's own state


@pytest.mark.parametrize("temperature", [0.0, 0.7, "rows"])
def test_the_vrnn_loop_draws_as_pytorch_at_any_observation_temperature_and_from_degenerate_latents(
    temperature, monkeypatch
):
    """The VRNN's tokens are drawn at the latents' temperature times the observation temperature (a float or one per
    row), and its latents from log-softmaxed logits: where a NaN makes a latent's logits degenerate, the compiled
    loop draws what PyTorch draws from its log-softmax (all NaN: class 0 at temperature 0), tokens and state."""
    m = _ar("vrnn", F64, 1)
    state = _staggered(m)
    temp = torch.tensor([0.0, 0.7, 1.3], dtype=F64) if temperature == "rows" else temperature
    ratios = [0.0, 0.5, torch.tensor([1.0, 0.0, 0.4], dtype=F64)]

    def both() -> list[tuple[torch.Tensor, torch.Tensor]]:
        out = []
        for getter in (native.vrnn_loop, lambda: None):
            with pytest.MonkeyPatch.context() as mp:
                mp.setattr(native, "vrnn_loop", getter)
                for ratio in ratios:
                    tokens, nxt = m.generate(state, 19, temperature=temp, observation_temperature=ratio)
                    out.append((tokens, nxt["h"]))
        return out

    calls = _spied(monkeypatch, "vrnn")
    for label in ("plain", "a NaN in a latent's logits"):
        drawn = both()
        compiled, ref = drawn[: len(ratios)], drawn[len(ratios) :]
        assert calls
        for (t, h), (rt, rh) in zip(compiled, ref, strict=True):
            assert torch.equal(t, rt), label
            torch.testing.assert_close(h, rh, rtol=1e-10, atol=1e-10, equal_nan=True)
        with torch.no_grad():
            m.prior[2].bias[1] = float("nan")  # latent 0's class 1
        state = _staggered(m)


@pytest.mark.parametrize("dtype", [F64, torch.float32])
@pytest.mark.parametrize("shape", [0, 1])
def test_the_vrnn_filter_compiled_equals_the_filter_in_pytorch(dtype, shape, monkeypatch):
    """Observed tokens (a prompt, an append) are read by one compiled call too, each latent drawn from the
    posterior with its keyed uniform: the state equals the PyTorch filter's, from rows at different lengths, and a
    prompt longer than the append window (read a window at a time) as well; float32 within its rounding.  The
    caller's state is a value: never written."""
    m = _ar("vrnn", dtype, shape)
    state = _staggered(m)
    kept = state["h"].clone()
    tokens = torch.randint(0, 7, (3, 300), generator=torch.Generator().manual_seed(5))
    calls = _spied(monkeypatch, "vrnn")
    read = m.append(state, tokens)
    started = m.start(tokens, [4, 5, 6])
    assert len(calls) == 4 and torch.equal(state["h"], kept)  # 300 tokens: windows of 256 and 44, twice
    _without(monkeypatch, "vrnn")
    tol = 1e-10 if dtype == F64 else 1e-4
    torch.testing.assert_close(read["h"], m.append(state, tokens)["h"], rtol=tol, atol=tol)
    torch.testing.assert_close(started["h"], m.start(tokens, [4, 5, 6])["h"], rtol=tol, atol=tol)
    assert torch.equal(read.position, state.position + 300)


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_the_vrnn_filter_gives_the_same_bits_in_any_chunks_and_batch(dtype, monkeypatch):
    """Reading a prompt in pieces (through the state's bytes) leaves the state of one read, bit for bit, and each
    row of a batch at its own length reads as it would alone: then a session's tokens do not depend on how its
    prompt and appends were cut, or on the requests batched with it."""
    m = _ar("vrnn", dtype).freeze()
    state = _staggered(m, 7)
    tokens = torch.randint(0, 7, (7, 90), generator=torch.Generator().manual_seed(6))
    calls = _spied(monkeypatch, "vrnn")
    m._unsettle()  # (the appends that built the state kept checks that hold the loop before the spy)
    whole = m.append(state, tokens)
    for cuts in [(30, 30, 30), (1, 44, 2, 43)]:
        st, at = state, 0
        for n in cuts:
            st = m.append(GenState.from_bytes(st.to_bytes()), tokens[:, at : at + n])
            at += n
        assert torch.equal(st["h"], whole["h"])
    for i in range(7):
        alone = m.append(state.rows(slice(i, i + 1)), tokens[i : i + 1])
        assert torch.equal(alone["h"][0], whole["h"][i])
    assert len(calls) == 1 + 3 + 4 + 7


# ----- what every compiled path leaves to the modules' own forward -------------------------------------------------
# families and variants whose generation or prompt reading has a compiled call that reads an embedding's rows, and
# that call's entry point (a patch partial encoder, model/patch.py, reads a linear layer's weight as tables: its
# generation reads no embedding)
RENORMED = {
    "ar-ssm": ("ar-ssm", {}, "ssm_ar_loop"),
    "ar-transformer": ("ar-transformer", {}, "transformer_loop"),
    "ar-gru": ("ar-gru", {}, "gru_loop"),
    "vrnn": ("vrnn", {}, "vrnn_loop"),
    "vssm": ("vssm", {}, "fused_rounds"),
    "vssm-decoder-tokens": ("vssm", {"decoder_tokens": True}, "fused_rounds"),
    "vssm-latent-prior": ("vssm", {"prior_width": 6}, "fused_rounds"),
}


class _EntryPoints:
    """The loaded kernels, with the names of the entry points called through them recorded."""

    def __init__(self, lib) -> None:
        self.lib, self.called = lib, set()

    def __getattr__(self, name: str):
        self.called.add(name.removesuffix("_f32").removesuffix("_f64"))
        return getattr(self.lib, name)


@pytest.mark.parametrize("name", sorted(RENORMED))
def test_an_embedding_with_max_norm_keeps_its_own_forward(name, monkeypatch):
    """An embedding's ``max_norm`` renormalises, in its weight, the rows its forward looks up; a compiled call reads
    the rows as they are. So such a model generates and reads prompts in PyTorch, compiled kernels and all: its
    tokens, state and renormalised weights equal those of the same model with no kernel at all, and the compiled
    call that the same model without a ``max_norm`` makes is not made."""
    from tests.conftest import tiny_model

    family, overrides, entry = RENORMED[name]
    vssm = family == "vssm"

    def run(kernels: bool, max_norm: float | None = 0.5):
        lib = _EntryPoints(native._load())
        monkeypatch.setattr(native, "_lib", lib if kernels else None)
        m = tiny_model(family, **overrides)
        embeddings = [mod for mod in m.modules() if isinstance(mod, torch.nn.Embedding)]
        assert embeddings
        before = [e.weight.detach().clone() for e in embeddings]
        for e in embeddings:
            e.max_norm = max_norm
        m.freeze()  # (as served)
        prompt = torch.zeros(3, 3, dtype=torch.long)  # (tokens 1.. and their rows first read while generating)
        state = m.start(prompt, [1, 2, 3])
        out = [m.generate(state, 12, block_size=4 if vssm else None)]
        if vssm:
            out.append(m.generate(state, 12))  # the one pass
            out.append(m.generate(state, 12, resumable=False))  # and one that keeps no state
        monkeypatch.undo()
        after = [e.weight.detach().clone() for e in embeddings]
        renormed = any(not torch.equal(a, b) for a, b in zip(after, before, strict=True))
        assert renormed == (max_norm is not None)
        return out, after, lib.called

    *_, called = run(True, max_norm=None)
    assert entry in called  # the control: without a max_norm this model takes the compiled call
    compiled, compiled_w, called = run(True)
    assert entry not in called
    plain, plain_w, _ = run(False)
    for (tokens, state), (ref_tokens, ref_state) in zip(compiled, plain, strict=True):
        assert torch.equal(tokens, ref_tokens)
        for key, t in ({} if state is None else state.tensors).items():
            torch.testing.assert_close(t, ref_state[key], rtol=1e-9, atol=1e-12)
    for w, ref in zip(compiled_w, plain_w, strict=True):
        torch.testing.assert_close(w, ref, rtol=1e-12, atol=1e-12)
