"""A frozen model (SequenceModel.freeze, as the server holds every model it serves): the same tokens
and states as the model unfrozen, weights that refuse in-place writes, and caches that follow a
conversion.  Float64 unless a test says otherwise."""

from __future__ import annotations

import copy
import itertools

import pytest
import torch
from torch import nn

from tests.conftest import TINY, VARIANTS, tiny_model
from vssm.model import native
from vssm.model.ssm import S4D
from vssm.model.state import GenState
from vssm.model.vssm import VSSM

F64 = torch.float64
PATCH = dict(vocab_size=2, n_latents=1, n_classes=2, prior_width=6, prior_hidden=20, prior_context=5, par_patch=4)


def _calls(m, block_size: int | None) -> tuple[torch.Tensor, bytes, torch.Tensor]:
    """Tokens and state of a prompted resumable call, then tokens of an unprompted one-shot call."""
    prompt = torch.randint(0, m.vocab_size, (3, 5), generator=torch.Generator().manual_seed(1))
    temp = torch.tensor([1.0, 0.6, 0.0], dtype=m.dtype)
    tokens, state = m.generate(m.start(prompt, [4, 5, 6]), 13, temperature=temp, block_size=block_size)
    more, _ = m.generate(m.start(torch.zeros(2, 0, dtype=torch.long), [7, 8]), 9, resumable=False)
    return tokens, state.to_bytes(), more


CASES = [(f, None) for f in sorted(TINY)] + [("vssm", "vssm-patch"), ("vssm", "vssm-latent-prior")]


@pytest.mark.parametrize(("family", "variant"), CASES, ids=[v or f for f, v in CASES])
def test_a_frozen_model_generates_what_it_did_unfrozen(family, variant):
    overrides = VARIANTS[variant][1] if variant else {}
    m = tiny_model(family, max_position=64, **overrides)
    block = 3 if family == "vssm" else None  # the VSSM's rounds (the patch variant's compiled ones), else its default
    want = _calls(m, block)
    fingerprint = m.fingerprint
    assert m.freeze() is m and m.frozen and not m.training
    assert all(p.is_inference() and not p.requires_grad for p in m.parameters())
    assert m.fingerprint == fingerprint  # states made before freezing still resume
    got = _calls(m, block)
    torch.testing.assert_close(got[0], want[0], rtol=0, atol=0)
    assert got[1] == want[1]
    torch.testing.assert_close(got[2], want[2], rtol=0, atol=0)


def test_a_frozen_model_refuses_in_place_writes():
    m = tiny_model("vssm", max_position=64, **PATCH)
    weights = copy.deepcopy(m.state_dict())
    m.freeze()
    with pytest.raises(RuntimeError, match=r"[Ii]nference tensor"), torch.no_grad():
        m.decoder.inp.weight.add_(1.0)  # an optimiser's step
    with pytest.raises(RuntimeError):
        m.load_state_dict(weights)
    assert m.frozen


def test_a_state_reads_its_positions_once():
    state = GenState("vssm", "f", {"position": torch.tensor([3, 9, 4]), "seed": torch.zeros(3, dtype=torch.long)})
    assert state.position_list == [3, 9, 4]
    assert state.position_list is state.position_list  # read once
    assert state.evolve(position=torch.tensor([5, 5, 5])).position_list == [5, 5, 5]  # a new state, read anew


def _image(model) -> torch.Tensor:
    """12 unprompted tokens of two rows at block 4 (the patch rounds, compiled)."""
    start = model.start(torch.zeros(2, 0, dtype=torch.long), [1, 2])
    return model.generate(start, 12, block_size=4, resumable=False)[0]


@pytest.mark.parametrize("built_elsewhere", [False, True])
def test_a_frozen_model_converted_lays_out_the_new_weights(built_elsewhere):
    """``.double()`` swaps every parameter's storage: the compiled calls' laid-out weights (keyed on the
    frozen key) must follow, or they would read the float32 weights' freed memory.  Registration hooks are
    global: another model built after freezing makes the next call read the key once, finds the same
    storages and stays frozen."""
    m = tiny_model("vssm", dtype=torch.float32, max_position=64, **PATCH)
    twin = copy.deepcopy(m).double()
    _image(m.freeze())  # float32 weights laid out
    if built_elsewhere:
        tiny_model("ar-gru")  # modules registered elsewhere
        assert m.frozen
    m.double()
    assert m.frozen and m.dtype == F64
    assert all(p.is_inference() and p.dtype == F64 for p in m.parameters())
    torch.testing.assert_close(_image(m), _image(twin), rtol=0, atol=0)


def test_a_copy_of_a_frozen_model_lays_out_its_own_weights():
    """A deep copy's laid-out weights would hold the original's addresses: the copy reads its own, follows
    its own weights, and outlives the original."""
    m = tiny_model("vssm", max_position=64, **PATCH).freeze()
    before = _image(m)  # laid out
    twin = copy.deepcopy(m)
    assert not twin.frozen
    torch.testing.assert_close(_image(twin), before, rtol=0, atol=0)
    with torch.no_grad():
        twin.decoder.inp.weight.mul_(-3.0)
    changed = _image(twin)
    assert not torch.equal(changed, before)
    torch.testing.assert_close(_image(m), before, rtol=0, atol=0)
    del m
    torch.testing.assert_close(_image(twin), changed, rtol=0, atol=0)


def test_replacing_a_weight_of_a_frozen_model_ends_it_and_a_conversion_freezes_again():
    """A parameter added ends the freeze; the model still holds frozen weights, whose data a conversion
    swaps, so the conversion freezes them all again (else no op could read them)."""
    m = tiny_model("ar-ssm").freeze()
    fingerprint = m.fingerprint
    m.register_parameter("extra", nn.Parameter(torch.zeros(2, dtype=F64)))
    assert not m.frozen
    assert m.fingerprint != fingerprint  # read again: the new parameter is in it
    m.float()
    assert m.frozen and all(p.is_inference() and p.dtype == torch.float32 for p in m.parameters())
    m.generate(m.start(torch.zeros(2, 0, dtype=torch.long), [1, 2]), 5)


def test_weights_loaded_by_assignment_end_the_freeze_whenever_it_is_asked():
    """``load_state_dict(assign=True)`` replaces every parameter: the model is no longer frozen, and a
    conversion right after it leaves it so, whether or not anything asked in between."""
    weights = tiny_model("ar-ssm", seed=1).state_dict()
    for ask in (False, True):
        m = tiny_model("ar-ssm").freeze()
        m.load_state_dict(weights, assign=True)
        if ask:
            assert not m.frozen
        m.float()
        assert not m.frozen and not any(p.is_inference() for p in m.parameters())


def test_a_state_of_no_rows_is_refused():
    m = tiny_model("vssm", max_position=64)
    empty = m.start(torch.zeros(0, 0, dtype=torch.long), torch.zeros(0, dtype=torch.long))
    with pytest.raises(ValueError, match="no rows"):
        m.generate(empty, 4)


# The compiled calls' checks, kept while the model stays frozen (SequenceModel._settled): each case is a
# model, the method that checks whether its compiled call can run, and the block size that takes it.
KEPT = {
    "patch rounds": ("vssm", PATCH, "_compiled_patch_rounds", 4),
    "rounds": ("vssm", {"prior_width": 6, "prior_context": 3}, "_compiled_rounds", 3),
    "piece": ("vssm", {"prior_width": 6, "prior_context": 3}, "_compiled_piece", None),  # one pass
    "ar loop": ("ar-ssm", {}, "_compiled_loop", None),
}
ENTRY = {  # their C
    "patch rounds": "patch_rounds_f64",
    "rounds": "fused_rounds_f64",
    "piece": "prior_piece_f64",
    "ar loop": "ssm_ar_loop_f64",
    "net pass": "ssm_net_f64",
    "ar-transformer": "transformer_loop_f64",
    "ar-gru": "gru_loop_f64",
}
ONE_ROW = {"patch rounds": 1, "rounds": 6, "piece": 13, "ar loop": 1}  # a kernel limit for one row's passes, not two


def _entered(monkeypatch, case: str) -> list[int]:
    """How many times the case's compiled call is entered in C (a list of one count, kept up to date)."""
    if native._load() is None:
        pytest.skip("no C compiler: the kernels cannot be built here")
    count, fn = [0], getattr(native._lib, ENTRY[case])

    def entered(*args):
        count[0] += 1
        return fn(*args)

    monkeypatch.setattr(native._lib, ENTRY[case], entered)
    return count


def _counted(monkeypatch, m, name: str) -> list[int]:
    """How many times ``m``'s class runs its check ``name`` (a list of one count, kept up to date)."""
    count = [0]
    check = getattr(type(m), name)

    def counted(self, *args):
        count[0] += 1
        return check(self, *args)

    monkeypatch.setattr(type(m), name, counted)
    return count


def _start(m) -> GenState:
    """Two rows after a prompt of 5 tokens."""
    return m.start(torch.randint(0, m.vocab_size, (2, 5), generator=torch.Generator().manual_seed(3)), [4, 5])


def _tokens(m, block: int | None, start: GenState | None = None, resumable: bool | None = None) -> torch.Tensor:
    """A call of 13 tokens from ``start`` (None: :func:`_start`), resumable unless ``resumable`` says otherwise or
    it is a VSSM's one-pass call: that one keeps no state, so that it stays a piece (the piece case; a resumable
    one is the compiled rounds' block 0 left open, VSSM._compiled_open_block, which the rounds case covers)."""
    if resumable is None:
        resumable = not (block is None and isinstance(m, VSSM))
    return m.generate(_start(m) if start is None else start, 13, block_size=block, resumable=resumable)[0]


@pytest.mark.parametrize("case", sorted(KEPT))
def test_a_frozen_model_checks_its_compiled_call_once(case, monkeypatch):
    family, overrides, name, block = KEPT[case]
    m = tiny_model(family, max_position=64, **overrides)
    count = _counted(monkeypatch, m, name)
    want = _tokens(m, block)
    _tokens(m, block)
    assert count[0] == 2  # unfrozen: every call checks (an optimiser may have changed the weights)
    m.freeze()
    for _ in range(3):
        torch.testing.assert_close(_tokens(m, block), want, rtol=0, atol=0)
    assert count[0] == 3  # frozen: the first call checks, the rest keep what it found
    tiny_model("ar-gru")  # modules registered elsewhere: checked again, once
    _tokens(m, block), _tokens(m, block)
    assert count[0] == 4
    m.eval()  # train() and eval() drop what was kept
    _tokens(m, block), _tokens(m, block)
    assert count[0] == 5
    with torch.enable_grad():  # gradients on: nothing is kept, nothing is used
        assert m._settled(("probe",), lambda: "checked") == "checked"
        assert "probe" not in str(m.__dict__.get("_settled_cache"))


@pytest.mark.parametrize("family", ["ar-transformer", "ar-gru"])
def test_a_frozen_baseline_keeps_its_loop_s_check_and_still_sees_hooks_and_new_weights(family, monkeypatch):
    """The AR Transformer's and AR-GRU's compiled loops (csrc/transformer_loop.c, csrc/gru_loop.c) are checked as
    the AR-SSM's is: on every call unfrozen, once frozen; a hook registered after the check runs (the loop in
    PyTorch), and after its removal the loop is entered again; a weight replaced ends the freeze and is read."""
    m = tiny_model(family, max_position=64)
    twin = copy.deepcopy(m)
    count = _counted(monkeypatch, m, "_compiled_loop")
    entered = _entered(monkeypatch, family)
    want = _tokens(m, None)
    _tokens(m, None)
    assert count[0] == 2 and entered[0] == 2
    m.freeze()
    for _ in range(3):
        torch.testing.assert_close(_tokens(m, None), want, rtol=0, atol=0)
    assert count[0] == 3 and entered[0] == 5
    seen = []
    handle = m.head.register_forward_hook(lambda *_: seen.append(1))
    torch.testing.assert_close(_tokens(m, None), want, rtol=0, atol=0)
    assert seen and entered[0] == 5
    handle.remove()
    torch.testing.assert_close(_tokens(m, None), want, rtol=0, atol=0)
    assert entered[0] == 6
    new = nn.Parameter(torch.randn(m.head.weight.shape, dtype=F64, generator=torch.Generator().manual_seed(9)))
    m.head.weight = new
    twin.head.weight = nn.Parameter(new.detach().clone())
    assert not m.frozen
    got = _tokens(m, None)
    assert not torch.equal(got, want) and entered[0] == 7
    torch.testing.assert_close(got, _tokens(twin, None), rtol=0, atol=0)


@pytest.mark.parametrize("case", sorted(KEPT))
def test_kept_checks_are_the_call_s_own(case):
    """Kept per call kind, block size, batch size and pass length: calls that alternate them draw the tokens and
    reach the states the model unfrozen does (the patch rounds take block 4 only; block 3 runs elsewhere)."""
    family, overrides, _, block = KEPT[case]
    m = tiny_model(family, max_position=64, **overrides)
    twin = copy.deepcopy(m)
    m.freeze()
    prompt = torch.randint(0, m.vocab_size, (3, 5), generator=torch.Generator().manual_seed(3))
    blocks = [block, 3, block] if family == "vssm" else [None]
    for _ in range(2):
        for rows, length, b, n in itertools.product((1, 3), (0, 5), blocks, (13, 4)):
            got = m.generate(m.start(prompt[:rows, :length], list(range(rows))), n, block_size=b)
            want = twin.generate(twin.start(prompt[:rows, :length], list(range(rows))), n, block_size=b)
            torch.testing.assert_close(got[0], want[0], rtol=0, atol=0)
            assert got[1].to_bytes() == want[1].to_bytes()


@pytest.mark.parametrize("case", sorted(KEPT))
@pytest.mark.parametrize("where", ["class", "layers"])
def test_a_kernel_limit_set_after_the_check_is_read(case, where, monkeypatch):
    """A pass's kernel limit (S4D.scan_max_tokens: on the class, or on every layer as bench/rounds.py sets it)
    set to 0 after a frozen model kept its check: the next call leaves the compiled call, as a fresh check
    would, and draws the same tokens; the limit restored, it returns to it."""
    family, overrides, _, block = KEPT[case]
    m = tiny_model(family, max_position=64, **overrides).freeze()
    entered = _entered(monkeypatch, case)
    start = _start(m)
    want = _tokens(m, block, start, resumable=False)
    assert entered[0] == 1
    layers = [mod for mod in m.modules() if isinstance(mod, S4D)]
    with monkeypatch.context() as patch:
        for owner in [S4D] if where == "class" else layers:
            patch.setattr(owner, "scan_max_tokens", 0, raising=False)
        torch.testing.assert_close(_tokens(m, block, start, resumable=False), want, rtol=0, atol=0)
        assert entered[0] == 1
    torch.testing.assert_close(_tokens(m, block, start, resumable=False), want, rtol=0, atol=0)
    assert entered[0] == 2


@pytest.mark.parametrize("case", sorted(KEPT))
def test_a_kept_check_is_the_batch_size_s_own(case, monkeypatch):
    """With a kernel limit that admits one row's passes and not two rows' (a patch step or an AR step is a pass of
    one; a 13-token call at block 3 from position 5 makes passes of up to 6, in one pass one of 13), a frozen
    model's call of one row runs compiled and one of two rows does not, in any order."""
    family, overrides, _, block = KEPT[case]
    m = tiny_model(family, max_position=64, **overrides).freeze()
    monkeypatch.setattr(S4D, "scan_max_tokens", ONE_ROW[case])
    entered = _entered(monkeypatch, case)
    start = _start(m)
    for rows, calls in ((1, 1), (2, 1), (1, 2), (2, 2)):
        _tokens(m, block, start.rows(slice(0, rows)), resumable=False)
        assert entered[0] == calls, rows
    if case == "piece":  # and the pass length's own: one row, 20 steps
        m.generate(start.rows(slice(0, 1)), 20, resumable=False)
        assert entered[0] == 2


@pytest.mark.parametrize("case", sorted(KEPT))
def test_settings_changed_by_hand_are_read_after_freezing_again(case):
    """An eps set by hand on a part of a frozen model is not seen (as torch.jit.freeze does not see it); freezing
    again, as the docstring says, makes the next call read it, as a model built with it does."""
    family, overrides, _, block = KEPT[case]
    m = tiny_model(family, max_position=64, **overrides)
    twin = copy.deepcopy(m)
    start = _start(m)
    before = _tokens(m.freeze(), block, start, resumable=False)
    for model in (m, twin):
        (model.net if family == "ar-ssm" else model.decoder).norm.eps = 50.0
    m.freeze()
    got = _tokens(m, block, start, resumable=False)
    assert not torch.equal(got, before)
    torch.testing.assert_close(got, _tokens(twin, block, _start(twin), resumable=False), rtol=0, atol=0)


@pytest.mark.parametrize("case", sorted(KEPT))
def test_a_hook_registered_after_the_check_is_run(case, monkeypatch):
    """A forward hook on a network's head leaves the compiled call (which would skip it): registered after a
    frozen model kept its check, the next call still runs it, and draws the same tokens.  The prompt is read
    before the hook, and no state is kept (the last block would be absorbed in PyTorch): only the compiled
    call's part of generation could run the hook."""
    family, overrides, _, block = KEPT[case]
    m = tiny_model(family, max_position=64, **overrides).freeze()
    entered = _entered(monkeypatch, case)
    start = _start(m)
    want = _tokens(m, block, start, resumable=False)
    _tokens(m, block, start, resumable=False)  # kept
    assert entered[0] == 2
    seen = []
    net = m.net if family == "ar-ssm" else m.decoder
    handle = net.head.register_forward_hook(lambda *_: seen.append(1))
    torch.testing.assert_close(_tokens(m, block, start, resumable=False), want, rtol=0, atol=0)
    assert seen  # run in PyTorch, the hook with it
    handle.remove()
    seen.clear()
    torch.testing.assert_close(_tokens(m, block, start, resumable=False), want, rtol=0, atol=0)
    assert not seen and entered[0] == 3  # the hook gone, compiled again


@pytest.mark.parametrize("case", sorted(KEPT))
def test_a_weight_replaced_after_the_check_is_read(case):
    """A parameter replaced ends the freeze: the next call reads the new weight, as a model built with it does."""
    family, overrides, _, block = KEPT[case]
    m = tiny_model(family, max_position=64, **overrides)
    twin = copy.deepcopy(m)
    before = _tokens(m.freeze(), block)
    _tokens(m, block)  # kept
    net, twin_net = (m.net, twin.net) if family == "ar-ssm" else (m.decoder, twin.decoder)
    new = nn.Parameter(torch.randn(net.head.weight.shape, dtype=F64, generator=torch.Generator().manual_seed(9)))
    net.head.weight = new
    twin_net.head.weight = nn.Parameter(new.detach().clone())
    assert not m.frozen
    got = _tokens(m, block)
    assert not torch.equal(got, before)
    torch.testing.assert_close(got, _tokens(twin, block), rtol=0, atol=0)


def test_a_call_s_block_sizes_are_kept_and_read_only():
    m = tiny_model("vssm", max_position=64)
    blocks = m._blocks(4, 3)
    assert blocks.tolist() == [4, 4, 4] and m._blocks(4, 3) is blocks
    assert m._blocks(64, 3).tolist() == [0, 0, 0]  # at the maximum position: one pass
    with pytest.raises(RuntimeError, match=r"[Ii]nference tensor"):
        blocks.add_(1)
    assert m._blocks(1, 3).tolist() == [1, 1, 1]
    m.default_block_size = 5
    assert m._blocks(None, 2).tolist() == [5, 5]
    m.default_block_size = 7
    assert m._blocks(None, 2).tolist() == [7, 7]
    for bad in (True, 0):  # refused every time: True is no block size of 1, though it hashes as one
        with pytest.raises(ValueError):
            m._blocks(bad, 3)


class _Negated(nn.Module):
    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return -w


@pytest.mark.parametrize("case", sorted(KEPT))
def test_a_parametrization_registered_after_the_check_is_read(case):
    """A parametrization changes what the head computes, which no compiled call reproduces: the next call
    reads the parametrized weight, as a model built with it does."""
    family, overrides, _, block = KEPT[case]
    m = tiny_model(family, max_position=64, **overrides)
    twin = copy.deepcopy(m)
    before = _tokens(m.freeze(), block)
    _tokens(m, block)  # kept
    for model in (m, twin):
        net = model.net if family == "ar-ssm" else model.decoder
        with torch.inference_mode():  # a frozen weight is moved in place only there
            torch.nn.utils.parametrize.register_parametrization(net.head, "weight", _Negated())
    got = _tokens(m, block)
    assert not torch.equal(got, before)
    torch.testing.assert_close(got, _tokens(twin, block), rtol=0, atol=0)


def test_a_frozen_model_s_networks_check_their_pass_once(monkeypatch):
    """A pass that is no kept call of its own (a one-pass VSSM without a latent prior, the compiled rounds off: the
    decoder's network pass) checks its modules and keys its packed weights once while its frozen model's guard stays
    the same; a hook registered since is run, and after its removal the compiled pass is entered again."""
    from vssm.model import network, ssm

    monkeypatch.setattr(native, "fused_rounds", lambda: None)  # else the call is the rounds' block 0, kept

    m = tiny_model("vssm", max_position=64)
    twin = copy.deepcopy(m)
    checks, keys = [0], [0]
    check, key = network.SSMNet._modules_native_ok, ssm.pack_key

    def counted_check(self):
        checks[0] += 1
        return check(self)

    def counted_key(params):
        keys[0] += 1
        return key(params)

    monkeypatch.setattr(network.SSMNet, "_modules_native_ok", counted_check)
    monkeypatch.setattr(ssm, "pack_key", counted_key)
    entered = _entered(monkeypatch, "net pass")

    def call(model=m):  # unprompted: the decoder's pass only
        return model.generate(model.start(torch.zeros(2, 0, dtype=torch.long), [1, 2]), 13, resumable=False)[0]

    want = call()
    call()
    assert checks[0] == 2 and keys[0] == 2 and entered[0] == 2  # unfrozen: every call
    m.freeze()
    for _ in range(3):
        torch.testing.assert_close(call(), want, rtol=0, atol=0)
    assert checks[0] == 3 and keys[0] == 3 and entered[0] == 5  # frozen: the first call checks
    seen = []
    handle = m.decoder.head.register_forward_hook(lambda *_: seen.append(1))
    for _ in range(2):
        torch.testing.assert_close(call(), want, rtol=0, atol=0)
    assert len(seen) == 2 and entered[0] == 5  # in PyTorch, the hook with it, each time
    handle.remove()
    torch.testing.assert_close(call(), want, rtol=0, atol=0)
    assert entered[0] == 6  # compiled again: a refusal is never kept
    before = checks[0], keys[0]
    call(), call()
    assert (checks[0], keys[0]) == before  # kept again
    for renew in (m.freeze, m.eval):  # freezing again and a train()/eval() switch renew the guard
        renew()
        call(), call()
        assert (checks[0], keys[0]) == (before[0] + 1, before[1] + 1)
        before = checks[0], keys[0]
    new = nn.Parameter(torch.randn(m.decoder.head.weight.shape, dtype=F64, generator=torch.Generator().manual_seed(9)))
    m.decoder.head.weight = new
    twin.decoder.head.weight = nn.Parameter(new.detach().clone())
    torch.testing.assert_close(call(), call(twin), rtol=0, atol=0)  # the new weight packed
