"""The resumable-generation contract, for every family alike (tiny float64 models)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from tests.conftest import LATENT, VARIANTS, V, tiny_model
from tests.test_blocks import latent_prior_log_probs
from tests.test_ssm import written_out_zoh
from vssm import model
from vssm.model import GenState, PositionLimitError, StateError, TokenRangeError, native
from vssm.model import vssm as vssm_module
from vssm.model.sampling import STREAM_LATENT, positional_draw, sequence_seeds
from vssm.model.ssm import S4D


def roundtrip(state: GenState) -> GenState:
    return GenState.from_bytes(state.to_bytes())


def prompt(B: int = 2, C: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, V, (B, C), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("C", [0, 3])
def test_one_call_equals_two_chunks_and_bytes_roundtrip(tiny, C):
    s = tiny.start(prompt(C=C), seed=[11, 12])
    whole, s_whole = tiny.generate(s, 9)
    a, s_a = tiny.generate(s, 4)
    b, _s_b = tiny.generate(s_a, 5)
    b2, s_b2 = tiny.generate(roundtrip(s_a), 5)
    assert torch.equal(whole, torch.cat([a, b], 1))
    assert torch.equal(b, b2)
    assert torch.equal(s_whole.position, torch.full((2,), C + 9))
    c1, _ = tiny.generate(s_whole, 3)
    c2, _ = tiny.generate(s_b2, 3)
    assert torch.equal(c1, c2)  # the states after both paths continue identically


def test_batch_of_seeds_equals_each_seed_alone(tiny):
    p = prompt(B=3, C=2)
    seeds = [5, 6, 7]
    batch, _ = tiny.generate(tiny.start(p, seeds), 8)
    for i, sd in enumerate(seeds):
        alone, _ = tiny.generate(tiny.start(p[i : i + 1], sd), 8)
        assert torch.equal(batch[i : i + 1], alone)


def test_batched_rows_at_different_positions_equal_alone(tiny):
    """States of different lengths, concatenated, generate what each would alone (dynamic batching)."""
    s1 = tiny.start(prompt(B=1, C=1, seed=1), 3)
    s2 = tiny.start(prompt(B=1, C=5, seed=2), 4)
    s2 = tiny.append(s2, prompt(B=1, C=2, seed=3))
    both, _ = tiny.generate(GenState.cat([s1, s2]), 6)
    assert torch.equal(both[0:1], tiny.generate(s1, 6)[0])
    assert torch.equal(both[1:2], tiny.generate(s2, 6)[0])


def test_append_in_pieces_equals_one_prompt(tiny):
    p = prompt(C=6)
    one, _ = tiny.generate(tiny.start(p, 1), 5)
    s = tiny.append(tiny.start(p[:, :2], 1), p[:, 2:])
    two, _ = tiny.generate(roundtrip(s), 5)
    assert torch.equal(one, two)


def test_seed_changes_the_sample_and_temperature_zero_is_deterministic(tiny):
    s = tiny.start(prompt(B=1, C=2), 1)
    a, _ = tiny.generate(s, 30)
    b, _ = tiny.generate(tiny.start(prompt(B=1, C=2), 2), 30)
    assert not torch.equal(a, b)
    g1, _ = tiny.generate(s, 10, temperature=0.0)
    g2, _ = tiny.generate(tiny.start(prompt(B=1, C=2), 99), 10, temperature=0.0)
    if tiny.family not in LATENT:  # a latent family's greedy path still differs by the prompt's keyed latent draws
        assert torch.equal(g1, g2)


def test_per_row_temperature_equals_alone(tiny):
    p = prompt(B=2, C=2)
    batch, _ = tiny.generate(tiny.start(p, [1, 2]), 6, temperature=torch.tensor([0.5, 2.0], dtype=tiny.dtype))
    for i, t in enumerate([0.5, 2.0]):
        alone, _ = tiny.generate(tiny.start(p[i : i + 1], [1, 2][i]), 6, temperature=t)
        assert torch.equal(batch[i : i + 1], alone)


def test_non_resumable_generation_gives_the_same_tokens(tiny):
    s = tiny.start(prompt(C=2), [3, 4])
    a, s_next = tiny.generate(s, 7)
    b, none = tiny.generate(s, 7, resumable=False)
    assert torch.equal(a, b) and none is None and s_next is not None


def test_state_of_another_model_is_refused(family):
    m1, m2 = tiny_model(family, seed=0), tiny_model(family, seed=1)
    s = m1.start(prompt(), 1)
    with pytest.raises(StateError, match="not by this model"):
        m2.generate(s, 2)
    other = tiny_model("ar-gru" if family != "ar-gru" else "ar-ssm")
    with pytest.raises(StateError):
        other.append(s, prompt())


def test_bad_state_bytes_are_refused():
    with pytest.raises(StateError):
        GenState.from_bytes(b"\x00" * 3)
    with pytest.raises(StateError):
        GenState.from_bytes(b"not safetensors at all, not at all")


def as_format_1(m: model.SequenceModel, state: GenState) -> bytes:
    """The bytes an earlier release wrote for ``state``: every SSM layer's state held as ``h = g B_bar``."""
    nets = {"h": m.net} if m.family == "ar-ssm" else {}
    if m.family == "vssm":
        nets = {"dec": m.decoder, "dec_abs": m.decoder, "par": m.partial_encoder, "gen": m.partial_encoder}
    tensors = dict(state.tensors)
    assert set(nets) == {k for k, v in tensors.items() if v.is_complex()}  # every SSM state: the complex tensors
    for name, net in nets.items():
        blocks = getattr(net, "net", net).blocks  # a patch network's SSM slots come first, its pending patch last
        h = tensors[name].clone()
        for i, block in enumerate(blocks):
            h[:, i] = tensors[name][:, i] * written_out_zoh(block.ssm)[1]
        tensors[name] = h
    return GenState(state.family, state.fingerprint, tensors, model.state.FORMAT_1).to_bytes()


FORMAT_1_FAMILIES = ["vssm", "vssm-patch", "ar-ssm", "ar-gru", "ar-transformer", "tvae", "vrnn"]


@pytest.mark.parametrize("family", FORMAT_1_FAMILIES)
def test_a_format_1_state_goes_on_where_it_was(family):
    """Format 2 holds an SSM layer's state as ``g = h / B_bar`` (model/ssm.py), format 1 held ``h``: a format-1
    state of a family with SSM layers reads as format 1, which no model call takes until ``upgrade_state``
    converts it; converted it goes on as the state it was (a session stored by an earlier release survives
    an upgrade).  A format-1 state of any other family, whose bytes did not change, reads as format 2."""
    name, overrides = VARIANTS.get(family, (family, {}))
    m = tiny_model(name, **overrides)
    kwargs = {"block_size": 3} if m.family == "vssm" else {}
    state = m.generate(m.start(prompt(B=2, C=3), [1, 2]), 4, **kwargs)[1]  # every state tensor in use
    old = as_format_1(m, state)
    read, batched = GenState.from_bytes(old), GenState.from_bytes_many([old, old])[0]
    if m.family in ("vssm", "ar-ssm"):
        assert read.format == batched.format == model.state.FORMAT_1
        for s in (read, batched):
            with pytest.raises(StateError, match="upgrade_state"):
                m.generate(s, 2)
            with pytest.raises(StateError, match="upgrade_state"):
                m.append(s, prompt(B=s.batch_size, C=1))
        with pytest.raises(StateError, match="formats"):  # a batch of both formats does not form
            GenState.from_bytes_many([old, state.to_bytes()])
        # converted, not relabelled: read as format 2 the same bytes go on elsewhere
        relabelled = GenState(read.family, read.fingerprint, read.tensors)
        key = "h" if m.family == "ar-ssm" else "dec"  # bytes that read as a state but not as this model's
        bad = GenState(read.family, read.fingerprint, {**read.tensors, key: read[key][:, :, :3]}, read.format)
        with pytest.raises(StateError, match="does not fit"):
            m.upgrade_state(bad)
        wrong, right = m.generate(relabelled, 6, **kwargs)[1], m.generate(state, 6, **kwargs)[1]
        assert max(float((wrong[k] - right[k]).abs().max()) for k in ("dec", "h") if k in right.tensors) > 1e-3
    else:
        assert _states_equal(read, state) and _states_equal(GenState.from_bytes_many([old])[0], state)
    for s, expected in ((read, state), (batched, GenState.cat([state, state]))):
        up = m.upgrade_state(s)
        assert up.format == model.state.STATE_FORMAT and up.tensors.keys() == state.tensors.keys()
        for k, v in expected.tensors.items():
            assert up.tensors[k].dtype == v.dtype
            torch.testing.assert_close(up.tensors[k], v, rtol=1e-12, atol=1e-12)
        assert torch.equal(m.generate(up, 6, **kwargs)[0], m.generate(expected, 6, **kwargs)[0])
        assert GenState.from_bytes(up.to_bytes()).format == model.state.STATE_FORMAT
    assert m.upgrade_state(state) is state  # this release's state as it is
    other = tiny_model(name, seed=1, **overrides)
    assert other.upgrade_state(read) is read  # another model's: check_state refuses it, not a conversion
    with pytest.raises(StateError):
        other.check_state(other.upgrade_state(read))


def _states_equal(a: GenState, b: GenState) -> bool:
    return (a.family, a.fingerprint, a.tensors.keys()) == (b.family, b.fingerprint, b.tensors.keys()) and all(
        a.tensors[k].dtype == b.tensors[k].dtype and torch.equal(a.tensors[k], b.tensors[k]) for k in a.tensors
    )


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_state_bytes_are_safetensors_both_ways(family, dtype):
    """The bytes a state writes read back with the safetensors library, and bytes the library writes (as
    states were written before) read as the same state."""
    from safetensors.torch import load, save

    m = tiny_model(family, dtype=dtype)
    s = m.start(prompt(B=2, C=3), [1, 2])
    _, s = m.generate(s, 4)
    blob = s.to_bytes()
    flat = load(blob)
    assert flat.keys() == s.tensors.keys()
    for k, v in s.tensors.items():
        assert torch.equal(torch.view_as_complex(flat[k]) if v.is_complex() else flat[k], v), k
    assert _states_equal(GenState.from_bytes(blob), s)
    header = json.loads(blob[8 : 8 + int.from_bytes(blob[:8], "little")])
    lib = {k: t.clone() for k, t in flat.items()}  # the library refuses shared memory
    assert _states_equal(GenState.from_bytes(save(lib, metadata=header["__metadata__"])), s)


def test_state_bytes_of_shared_empty_scalar_and_bool_tensors():
    """Tensors sharing memory (a view, the same tensor twice), empty, 0-d and bool tensors read back as
    they were, with the library and through from_bytes, as the library's own bytes do."""
    from safetensors.torch import load, save

    x = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    tensors = {
        "position": torch.tensor([5]),
        "seed": torch.tensor([2]),
        "a": x,
        "b": x,
        "c": x[1:],
        "e": torch.empty(0, 3),
        "s": torch.tensor(1.5, dtype=torch.float64),
        "m": torch.tensor([True, False, True]),
        "z": torch.zeros(2, 3, dtype=torch.complex64),
    }
    s = GenState("x", "f", tensors)
    blob = s.to_bytes()
    assert _states_equal(GenState.from_bytes(blob), s)
    flat = load(blob)
    for k, v in tensors.items():
        assert torch.equal(torch.view_as_complex(flat[k]) if v.is_complex() else flat[k], v), k
    header = json.loads(blob[8 : 8 + int.from_bytes(blob[:8], "little")])
    lib = save({k: t.clone() for k, t in flat.items()}, metadata=header["__metadata__"])
    assert _states_equal(GenState.from_bytes(lib), s)


def test_a_state_of_a_dtype_safetensors_names_only_through_the_library():
    s = GenState(
        "x",
        "f",
        {"position": torch.tensor([3]), "seed": torch.tensor([1]), "h": torch.ones(2, 3).to(torch.float8_e4m3fn)},
    )
    back = GenState.from_bytes(s.to_bytes())
    assert back.tensors["h"].dtype == torch.float8_e4m3fn and torch.equal(back.tensors["h"].float(), torch.ones(2, 3))


def _with_header(blob: bytes, edit) -> bytes:
    n = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8 : 8 + n])
    edit(header)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    return len(h).to_bytes(8, "little") + h + blob[8 + n :]


@pytest.mark.parametrize(
    "edit",
    [
        lambda h: h["dec"].update(data_offsets=[h["dec"]["data_offsets"][0] + 8, h["dec"]["data_offsets"][1] + 8]),
        lambda h: h["dec"].update(shape=[*h["dec"]["shape"][:-1], h["dec"]["shape"][-1] + 1]),
        lambda h: h["dec"].update(shape=[-1]),
        lambda h: h["dec"].update(data_offsets=[0]),
        lambda h: h["position"].update(data_offsets=h["seed"]["data_offsets"]),
        lambda h: h.update(__metadata__=["not", "an", "object"]),
        lambda h: h.pop("seed"),
        lambda h: h["__metadata__"].update(format="vssm-state/3"),  # a newer release's
    ],
)
def test_state_bytes_with_a_bad_header_are_refused(edit):
    m = tiny_model("vssm")
    blob = m.start(prompt(B=1, C=2), 1).to_bytes()
    with pytest.raises(StateError):
        GenState.from_bytes(_with_header(blob, edit))


def _groups(m: model.SequenceModel) -> list[GenState]:
    """States of 1, 2 and 1 rows at different positions (a KV cache's length differs between them)."""
    out = []
    for i, rows in enumerate([1, 2, 1]):
        s = m.start(
            torch.randint(0, V, (rows, i), generator=torch.Generator().manual_seed(i)),
            [10 * i + r for r in range(rows)],
        )
        out.append(m.generate(s, 2 + i)[1])
    return out


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_many_states_read_and_written_at_once_are_those_row_by_row(family, dtype):
    """What a batched server call reads and writes in one go (``from_bytes_many``, ``to_bytes_split``)
    is exactly what reading and writing each session's state alone gives."""
    m = tiny_model(family, dtype=dtype)
    states = _groups(m)
    blobs = [s.to_bytes() for s in states]
    batch, sizes = GenState.from_bytes_many(blobs)
    assert sizes == [1, 2, 1]
    assert _states_equal(batch, GenState.cat([GenState.from_bytes(b) for b in blobs]))
    assert batch.to_bytes_split(sizes) == [batch.rows(slice(a, a + n)).to_bytes() for a, n in [(0, 1), (1, 2), (3, 1)]]
    assert batch.to_bytes_split([4]) == [batch.to_bytes()]
    with pytest.raises(ValueError):
        batch.to_bytes_split([1, 2])
    # and the state read at once generates what the states read alone do
    assert torch.equal(m.generate(batch, 3)[0], torch.cat([m.generate(s, 3)[0] for s in states]))


def test_states_of_fixed_shapes_are_read_without_the_library(monkeypatch):
    """The recurrent families' states all have one shape, and are read at once, not blob by blob."""
    m = tiny_model("vssm")
    blobs = [s.to_bytes() for s in _groups(m)]
    expected = GenState.cat([GenState.from_bytes(b) for b in blobs])

    def refused(*_: object, **__: object) -> GenState:
        raise AssertionError("read blob by blob")

    monkeypatch.setattr(GenState, "from_bytes", refused)
    assert _states_equal(GenState.from_bytes_many(blobs)[0], expected)


def _raw_header(blob: bytes, edit) -> bytes:
    """The blob with its header's JSON text edited as text (what a dict cannot hold: repeated keys, NaN)."""
    n = int.from_bytes(blob[:8], "little")
    h = edit(blob[8 : 8 + n].decode().rstrip(" ")).encode("utf-8", "surrogatepass")
    h += b" " * (-len(h) % 8)
    return len(h).to_bytes(8, "little") + h + blob[8 + n :]


MALFORMED = [
    lambda blob: blob[:-8],  # cut short
    lambda blob: blob + b"\0" * 8,  # a tail no tensor covers
    lambda blob: b"not a state",
    lambda blob: b"",
    lambda blob: _with_header(blob, lambda h: h["__metadata__"].update(format="vssm-state/0")),
    lambda blob: _with_header(blob, lambda h: h["__metadata__"].pop("family")),
    lambda blob: _with_header(blob, lambda h: h["__metadata__"].update(extra=1)),  # not a string
    lambda blob: _with_header(blob, lambda h: h["__metadata__"].update(complex='["seed"]')),
    lambda blob: _with_header(blob, lambda h: h["__metadata__"].update(complex='["gone"]')),
    lambda blob: _with_header(blob, lambda h: h["dec"].update(dtype="F16")),
    lambda blob: _with_header(blob, lambda h: h["dec"].update(dtype="C64")),
    lambda blob: _with_header(blob, lambda h: h["dec"].update(data_offsets=[0.0, h["dec"]["data_offsets"][1]])),
    lambda blob: _with_header(blob, lambda h: h["dec"].update(data_offsets=[])),
    lambda blob: _with_header(blob, lambda h: h["dec"].update(data_offsets="")),
    lambda blob: _with_header(blob, lambda h: h["dec"].update(shape=[True, *h["dec"]["shape"][1:]])),
    lambda blob: _with_header(blob, lambda h: h["position"].update(shape=[])),
    lambda blob: _with_header(blob, lambda h: h.update(dec=[1, 2])),
    lambda blob: _raw_header(blob, lambda t: '{"seed":' + json.dumps(json.loads(t)["seed"]) + "," + t[1:]),  # repeated
    lambda blob: _raw_header(blob, lambda t: t.replace('"shape":[', '"shape":[NaN,', 1)),
    lambda blob: _raw_header(blob, lambda t: "\ufeff" + t),  # a byte-order mark
    lambda blob: _raw_header(blob, lambda t: t.replace('"__metadata__":{', '"__metadata__":{"\\ud800":"x",', 1)),
    lambda blob: _with_header(blob, lambda h: h["dec"].update(dtype="F8_E8M0")),  # known to the library, not torch
    lambda blob: _with_header(blob, lambda h: h["dec"].update(x="\ud800")),  # a field more, not UTF-8
    lambda blob: _with_header(blob, lambda h: h["dec"].update(x=1)),  # a field more
    lambda blob: _with_header(blob, lambda h: h["position"].update(shape=[1, 0, 2**63])),  # zero bytes, a huge dim
    lambda blob: _raw_header(blob, lambda t: t.replace('"data_offsets":[0,', '"data_offsets":[-0,', 1)),
    lambda blob: tiny_model("vssm", seed=1).start(prompt(B=1, C=0), 1).to_bytes(),  # other weights
    lambda blob: tiny_model("ar-ssm").start(prompt(B=1, C=0), 1).to_bytes(),  # another family
]


@pytest.mark.parametrize("where", [0, 1])
@pytest.mark.parametrize("bad", MALFORMED)
def test_many_states_accept_exactly_what_one_by_one_accepts(bad, where):
    """A bad blob among good ones (first or not): :class:`StateError` wherever reading the blobs one by one
    refuses them (the server then reads them one by one to fail that session alone), never another
    exception and never a state made of what the blob's bytes happen to hold; the same state where not."""
    m = tiny_model("vssm")
    blobs = [s.to_bytes() for s in _groups(m)]
    blobs[where] = bad(blobs[where])
    try:
        expected = GenState.cat([GenState.from_bytes(b) for b in blobs])
    except StateError:
        with pytest.raises(StateError):
            GenState.from_bytes_many(blobs)
        return
    assert _states_equal(GenState.from_bytes_many(blobs)[0], expected)


def test_limits_and_token_range(family):
    m = tiny_model(family, max_position=10)
    s = m.start(prompt(C=4), 1)
    with pytest.raises(PositionLimitError):
        m.generate(s, 7)
    tokens, s = m.generate(s, 6)
    assert tokens.shape == (2, 6) and int(s.position[0]) == 10
    with pytest.raises(PositionLimitError):
        m.append(s, prompt(C=1))
    with pytest.raises(TokenRangeError):
        m.start(torch.tensor([[0, V]]), 1)
    with pytest.raises(ValueError):
        m.start(torch.tensor([[0, 1]]), [1, 2])  # two seeds, one row


def test_state_records_position_seed_and_fingerprint(tiny):
    s = tiny.start(prompt(B=2, C=3), [8, 9])
    assert s.position.tolist() == [3, 3] and s.seed.tolist() == [8, 9]
    assert s.fingerprint == tiny.fingerprint and s.family == tiny.family
    r = roundtrip(s)
    assert r.tensors.keys() == s.tensors.keys()
    for k in s.tensors:
        assert torch.equal(r[k], s[k]), k


def test_the_fingerprint_follows_every_kind_of_weight_change():
    """The fingerprint (checked on every call, from a key of the parameters' storage and versions kept with
    the module walk) changes with an in-place update, a swapped storage, a dtype change and a parameter
    replaced; a swap for an inference tensor (no version counter) still reads; an unchanged model keeps it."""
    m = tiny_model("vssm")
    seen = [m.fingerprint]
    assert m.fingerprint == seen[0]
    p = next(iter(m.decoder.parameters()))

    def in_place() -> None:
        with torch.no_grad():
            p.add_(1.0)

    other = torch.float32 if m.dtype == torch.float64 else torch.float64
    changes = [
        in_place,
        lambda: setattr(p, "data", p.data * 2.0),
        lambda: m.to(other),
        lambda: setattr(m.decoder.head, "bias", torch.nn.Parameter(m.decoder.head.bias.detach() + 1.0)),
    ]
    for change in changes:
        change()
        seen.append(m.fingerprint)
        assert seen[-1] not in seen[:-1]
    with torch.inference_mode():
        frozen = m.decoder.head.bias.detach() + 1.0  # an inference tensor
    m.decoder.head.bias.data = frozen
    assert m.fingerprint not in seen


def test_ssm_state_size_is_constant_in_position_transformer_grows(family):
    m = tiny_model(family)
    s = m.start(prompt(B=1, C=1), 1)
    size0 = len(s.to_bytes())
    _, s = m.generate(s, 40)
    grows = len(s.to_bytes()) > size0
    assert grows == (family in ("ar-transformer", "tvae"))  # KV caches; every other state is fixed-size


def test_nll_is_finite_per_sequence(tiny):
    x = prompt(B=3, C=12)
    nll = tiny.nll(x)
    assert nll.shape == (3,) and torch.isfinite(nll).all() and (nll > 0).all()


def test_per_step_terms_sum_to_the_sequence_figures(tiny):
    x = prompt(B=3, C=12)
    if isinstance(tiny, (model.VSSM, model.TVAE)):
        rec, kl = tiny.step_terms(x, seed=4)
        assert rec.shape == kl.shape == (3, 12) and (rec >= 0).all() and (kl >= -1e-9).all()
        if getattr(tiny, "latent_prior", None) is None:
            torch.testing.assert_close(kl.sum(-1), tiny.loss(x).kl)  # closed form: no draw involved
        else:  # the latent prior reads the draw's latents before t: a keyed KL, from its definition
            log_q = tiny._posterior_log_probs(x)  # (B, T, Z, K)
            z = positional_draw(log_q, sequence_seeds(x, 4), STREAM_LATENT)  # the draw step_terms keys
            log_p = latent_prior_log_probs(tiny, torch.full_like(log_q, -math.log(tiny.config.n_classes)), z)
            torch.testing.assert_close(kl, (log_q.exp() * (log_q - log_p)).sum((-1, -2)))
            assert not torch.equal(kl, tiny.step_terms(x, seed=5)[1])
        torch.testing.assert_close(rec, tiny.step_terms(x, seed=4)[0])  # keyed draws
        assert not torch.equal(rec, tiny.step_terms(x, seed=5)[0])
    elif isinstance(tiny, model.VRNN):  # its KL depends on the draws through h: the keyed bound's terms
        torch.testing.assert_close(tiny.nll(x, seed=4), -tiny.log_weights(x, seed=4)[0])
        assert not torch.equal(tiny.nll(x, seed=4), tiny.nll(x, seed=5))
    else:
        per_step = tiny.token_nll(x)
        assert per_step.shape == (3, 12)
        torch.testing.assert_close(per_step.sum(-1), tiny.nll(x))
        torch.testing.assert_close(per_step[:, 5:].sum(-1), tiny.nll(x, prompt_len=5))


def test_vssm_unprompted_one_call_equals_many_chunks():
    m = tiny_model("vssm", max_position=48)
    s = m.start(torch.zeros(2, 0, dtype=torch.long), [21, 22])
    whole, _ = m.generate(s, 48)
    parts, st = [], s
    for n in (5, 11, 16, 16):
        t, st = m.generate(st, n)
        parts.append(t)
    assert torch.equal(whole, torch.cat(parts, 1))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    "family, chunkings",
    [
        ("ar-ssm", [(96,), (16,) * 6, (3, 29, 1, 40, 23)]),  # a step at a time whatever the chunks
        ("vssm", [(96,), (16,) * 6, (32, 48, 16), (3, 29, 1, 40, 23), (2, 2, 1, 91)]),  # passes of any length
        # blocks of 4 across patches of 3: chunks that cut a patch anywhere, its pending tokens' sum carried
        ("vssm-patch:4", [(96,), (16,) * 6, (3, 29, 1, 40, 23), (2, 2, 1, 91), (5, 7, 11, 73)]),
        ("vssm-patch:6", [(96,), (16,) * 6, (3, 29, 1, 40, 23), (5, 7, 11, 73)]),  # blocks of whole patches
        ("vssm-patch-period:4", [(96,), (16,) * 6, (3, 29, 1, 40, 23)]),  # tables by column t mod 5
        # widths that leave a part vector of channels, a part group of modes: rows that move from one alignment to
        # another between calls, and the short passes' padded lanes (csrc/s4d_block.c, GELU_ROWS, PADDED_GROUP)
        ("vssm@76x6", [(96,), (16,) * 6, (3, 29, 1, 40, 23), (2, 2, 1, 91), (5, 7, 11, 73)]),
        ("vssm-patch:4@72x6", [(96,), (3, 29, 1, 40, 23), (2, 2, 1, 91)]),
        ("ar-ssm@76x6", [(96,), (16,) * 6, (3, 29, 1, 40, 23)]),
    ],
)
def test_chunks_leave_the_state_bit_for_bit(family, chunkings, dtype, monkeypatch):
    """Chunks do not change tokens (docs/api.md) because they do not change the state either: every chunking's
    state equals one call's, bit for bit, as do its tokens, at shapes that fill the kernels' vectors (64 channels,
    groups of four modes) and at shapes that do not; a pass of a few steps (csrc/s4d_block.c, STEPS_OUTER) does a
    longer one's operations in their order, and a row's operations do not depend on where it sits in a call.  A
    prompt appended in the same pieces leaves the state one append leaves.
    (A state scaled by 1 / B_bar for a pass and back at its end drifted here by a few units in the last place: the
    state is kept scaled instead, model/ssm.py.)"""
    if not native.available():
        pytest.skip("the compiled kernels: without them a pass's length chooses between the FFT and the matrices")
    monkeypatch.setattr(S4D, "scan_max_tokens", 4096)  # every pass on the kernel, whatever the thread count
    family, _, shape = family.partition("@")
    width, state_size = (int(v) for v in shape.split("x")) if shape else (64, 8)
    variant, _, block = family.partition(":")
    name, overrides = VARIANTS.get(variant, (variant, {}))
    m = tiny_model(name, dtype=dtype, **{**overrides, "width": width, "state_size": state_size}).freeze()
    kwargs = {"block_size": int(block)} if block else {}
    start = m.start(torch.zeros(3, 0, dtype=torch.long), [31, 32, 33])
    results = []
    for chunks in chunkings:
        parts, st = [], start
        for n in chunks:
            t, st = m.generate(roundtrip(st), n, **kwargs)
            parts.append(t)
        results.append((torch.cat(parts, 1), st))
    (tokens, state), rest = results[0], results[1:]
    for other_tokens, other in rest:
        assert torch.equal(other_tokens, tokens)
        for k, v in state.tensors.items():
            assert torch.equal(other[k], v), k
    appended = []  # a prompt appended in the same pieces leaves one append's state too
    for chunks in chunkings:
        st, at = start, 0
        for n in chunks:
            st, at = m.append(roundtrip(st), tokens[:, at : at + n]), at + n
        appended.append(st)
    for other in appended[1:]:
        for k, v in appended[0].tensors.items():
            assert torch.equal(other[k], v), k


def test_vssm_unprompted_latents_come_from_the_prior_and_prompt_changes_them():
    """Unprompted rows ignore the partial encoder; a prompt conditions the continuation."""
    m = tiny_model("vssm")
    empty = torch.zeros(1, 0, dtype=torch.long)
    s = m.start(empty, 4)
    assert not bool(s["observed"].any())
    with torch.no_grad():
        for p in m.partial_encoder.parameters():
            p.add_(0.5)
    m._fp_key = None
    s2 = m.start(empty, 4)  # same seed, different partial encoder: same unprompted sample
    a, _ = m.generate(s2, 20)
    m2 = tiny_model("vssm")
    b, _ = m2.generate(m2.start(empty, 4), 20)
    assert torch.equal(a, b)


def test_every_family_is_registered():
    assert set(model.FAMILIES) == {"vssm", "ar-ssm", "ar-transformer", "ar-gru", "tvae", "vrnn"}


@pytest.mark.slow
def test_prompted_nll_is_the_conditional(family):
    m = tiny_model(family)
    x = prompt(B=3, C=12)
    full, cont = m.nll(x), m.nll(x, prompt_len=5)
    assert cont.shape == (3,) and torch.isfinite(cont).all() and (cont > 0).all()
    if family not in LATENT:  # exact chain rule for the autoregressive families
        torch.testing.assert_close(cont + m.nll(x[:, :5]), full)
    else:  # a bound on fewer tokens; more importance samples never loosen it on average
        assert (
            m.nll(x, prompt_len=5, samples=32, seed=1).mean() <= m.nll(x, prompt_len=5, samples=1, seed=1).mean() + 2.0
        )
    with pytest.raises(ValueError):
        m.nll(x, prompt_len=12)


def test_generate_and_append_never_mutate_their_input_state(tiny):
    """States are values: the transformer's private decode buffer must not leak into the caller's state."""
    s = tiny.start(prompt(B=2, C=3), [1, 2])
    before = {k: v.clone() for k, v in s.tensors.items()}
    a, s2 = tiny.generate(s, 6)
    tiny.append(s, prompt(B=2, C=2))
    tiny.generate(s2, 3)
    assert all(torch.equal(before[k], s[k]) for k in before)  # (bytes differ: safetensors' header order is free)
    b, _ = tiny.generate(s, 6)
    assert torch.equal(a, b)


def test_vssm_row_groups_follow_the_pass_not_the_call(monkeypatch):
    """A call longer than a window runs passes of a window, so its rows group by the window's length
    (rows x steps per thread about ``row_block_tokens``), and the groups draw what one group draws."""
    m = tiny_model("vssm")
    s = m.start(torch.zeros(5, 0, dtype=torch.long), [1, 2, 3, 4, 5])
    whole, _ = m.generate(s, 12, resumable=False)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    m.gen_window, m.row_block_tokens = 4, 4  # passes of 4 steps, 8 row-steps: groups of 2, 2 and 1 rows
    groups = []
    inner = m._generate_rows
    monkeypatch.setattr(m, "_generate_rows", lambda st, *a, **k: groups.append(st.batch_size) or inner(st, *a, **k))
    grouped, _ = m.generate(s, 12, resumable=False)
    assert groups == [2, 2, 1]  # by the call's 12 steps it would be five groups of one row
    assert torch.equal(whole, grouped)
    # off the CPU (not measured there) a group keeps its earlier size, whatever the threads
    monkeypatch.setattr(type(m), "device", property(lambda self: torch.device("cuda")))
    assert m._row_group(1024) == vssm_module.DEVICE_ROW_TOKENS // 1024


@pytest.mark.parametrize("resumable", [True, False])
def test_vssm_row_blocks_equal_one_block(resumable, monkeypatch):
    """Large calls run in blocks of rows (a cache-size speed knob): tokens and states are unchanged."""
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)  # row_block_tokens is per thread
    m = tiny_model("vssm")
    p = prompt(B=5, C=3)
    s = GenState.cat([m.start(p[:3], [1, 2, 3]), m.start(torch.zeros(2, 0, dtype=torch.long), [4, 5])])
    temps = torch.tensor([0.5, 1.0, 2.0, 1.0, 0.7], dtype=m.dtype)
    whole, s_whole = m.generate(s, 6, temperature=temps, resumable=resumable)
    m.row_block_tokens = 12  # two rows of 6 tokens per block: blocks of 2, 2 and 1 rows
    blocked, s_blocked = m.generate(s, 6, temperature=temps, resumable=resumable)
    assert torch.equal(whole, blocked)
    if resumable:
        assert s_whole.tensors.keys() == s_blocked.tensors.keys()
        for k, t in s_whole.tensors.items():  # equal up to the summation order of a smaller batch
            torch.testing.assert_close(t, s_blocked.tensors[k], rtol=1e-12, atol=1e-12, msg=k)
    else:
        assert s_whole is None and s_blocked is None


def test_a_float_temperature_s_shared_tensor_is_never_written():
    """row_temperatures makes a float's tensor once and shares it between calls: the compiled calls
    that read it (rounds, the AR-SSM's loop) must leave it as it was."""
    from vssm.model.sampling import row_temperatures

    shared = row_temperatures(0.7, 2)
    assert shared.data_ptr() == row_temperatures(0.7, 5).data_ptr()  # one tensor, expanded per batch
    for family, kwargs in (("vssm", {"block_size": 3}), ("ar-ssm", {})):
        m = tiny_model(family)
        m.generate(m.start(prompt(B=2, C=3), [1, 2]), 9, temperature=0.7, **kwargs)
    assert row_temperatures(0.7, 3).tolist() == [0.7, 0.7, 0.7]
    assert row_temperatures(torch.tensor([0.5, 2.0]), 2).tolist() == [0.5, 2.0]
