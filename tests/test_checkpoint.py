"""Checkpoints: a round trip for every family and a clear error for every corrupt case."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from tests.conftest import TINY, VARIANTS, tiny_model
from vssm import model
from vssm.model import CheckpointError, GenState, load_checkpoint, save_checkpoint


@pytest.mark.parametrize("name", sorted(TINY) + sorted(VARIANTS))
def test_roundtrip_every_family(tmp_path, name):
    family, overrides = VARIANTS.get(name, (name, {}))
    m = tiny_model(family, dtype=torch.float32, **overrides)
    path = save_checkpoint(m, tmp_path / f"{family}.safetensors")
    loaded = load_checkpoint(path, device="cpu")
    assert type(loaded) is type(m) and loaded.config == m.config
    assert loaded.fingerprint == m.fingerprint and len(m.fingerprint) == 16
    assert not loaded.training
    p = torch.randint(0, m.vocab_size, (2, 3))
    state = m.start(p, [1, 2])
    a, _ = m.generate(state, 6)
    b, _ = loaded.generate(GenState.from_bytes(state.to_bytes()), 6)  # a state made by m resumes on loaded
    assert torch.equal(a, b)
    x = torch.randint(0, m.vocab_size, (2, 8))
    torch.testing.assert_close(m.nll(x), loaded.nll(x))


def test_auto_device_loads(tmp_path):
    path = save_checkpoint(tiny_model("ar-gru", dtype=torch.float32), tmp_path / "m.safetensors")
    loaded = load_checkpoint(path, device="auto")
    assert loaded.device.type == ("cuda" if torch.cuda.is_available() else "cpu")


def rewrite(path, out, *, tensors=None, meta=None):
    with safe_open(str(path), framework="pt") as f:
        t = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not iterable)
        m = dict(f.metadata())
    save_file(tensors(t) if tensors else t, str(out), metadata=meta(m) if meta else m)
    return out


@pytest.fixture
def saved(tmp_path):
    return save_checkpoint(tiny_model("vssm", dtype=torch.float32), tmp_path / "vssm.safetensors")


def test_not_safetensors(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x80\x04garbage, maybe a pickle")
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        load_checkpoint(bad)


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="not a readable"):
        load_checkpoint(tmp_path / "absent.safetensors")


def test_newer_format_version(saved, tmp_path):
    out = rewrite(saved, tmp_path / "new.safetensors", meta=lambda m: {**m, "format_version": "99"})
    with pytest.raises(CheckpointError, match="format version 99 is newer"):
        load_checkpoint(out)


def test_missing_format_version(saved, tmp_path):
    out = rewrite(
        saved, tmp_path / "nov.safetensors", meta=lambda m: {k: v for k, v in m.items() if k != "format_version"}
    )
    with pytest.raises(CheckpointError, match="no format_version"):
        load_checkpoint(out)


def test_missing_tensor(saved, tmp_path):
    out = rewrite(
        saved,
        tmp_path / "miss.safetensors",
        tensors=lambda t: {k: v for k, v in t.items() if k != "decoder.head.weight"},
    )
    with pytest.raises(CheckpointError, match=r"missing tensor\(s\): decoder\.head\.weight"):
        load_checkpoint(out)


def test_unexpected_tensor(saved, tmp_path):
    out = rewrite(saved, tmp_path / "extra.safetensors", tensors=lambda t: {**t, "stray": torch.zeros(2)})
    with pytest.raises(CheckpointError, match=r"unexpected tensor.*stray"):
        load_checkpoint(out)


def test_misshapen_tensor(saved, tmp_path):
    out = rewrite(saved, tmp_path / "shape.safetensors", tensors=lambda t: {**t, "encoder.head.bias": torch.zeros(3)})
    with pytest.raises(CheckpointError, match=r"encoder\.head\.bias has shape \(3,\), the config needs \(12,\)"):
        load_checkpoint(out)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda c: "{not json", "not JSON"),
        (lambda c: json.dumps({**json.loads(c), "colour": "red"}), "unknown field.*colour"),
        (lambda c: json.dumps({**json.loads(c), "width": -4}), "width must be a positive integer"),
        (lambda c: json.dumps({**json.loads(c), "n_classes": 1}), "n_classes must be an integer >= 2"),
        (lambda c: json.dumps({**json.loads(c), "posterior": "acausal"}), "posterior must be one of"),
        (lambda c: json.dumps({**json.loads(c), "block": "mamba"}), "block='mamba', an experimental option removed"),
        (lambda c: json.dumps([1, 2]), "expected a JSON object"),
    ],
)
def test_bad_config(saved, tmp_path, edit, message):
    out = rewrite(saved, tmp_path / "cfg.safetensors", meta=lambda m: {**m, "config": edit(m["config"])})
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(out)


def test_unknown_family(saved, tmp_path):
    out = rewrite(saved, tmp_path / "fam.safetensors", meta=lambda m: {**m, "family": "lstm"})
    with pytest.raises(CheckpointError, match="unknown model family 'lstm'"):
        load_checkpoint(out)


def test_tampered_weights_fail_the_fingerprint(saved, tmp_path):
    out = rewrite(
        saved, tmp_path / "tamper.safetensors", tensors=lambda t: {**t, "decoder.head.bias": t["decoder.head.bias"] + 1}
    )
    with pytest.raises(CheckpointError, match="corrupt file"):
        load_checkpoint(out)


def test_build_model_rejects_unknown_family():
    with pytest.raises(CheckpointError):
        model.build_model("lstm")


def test_models_loaded_or_built_under_inference_mode_work(tmp_path, family):
    path = save_checkpoint(tiny_model(family, dtype=torch.float32), tmp_path / "m.safetensors")
    with torch.inference_mode():
        m = load_checkpoint(path)  # its weights are inference tensors: no version counters
        state = m.start(torch.zeros(1, 2, dtype=torch.long), 3)
        a, _ = m.generate(state, 5)
        assert m.fingerprint == load_checkpoint(path).fingerprint
    b, _ = load_checkpoint(path).generate(load_checkpoint(path).start(torch.zeros(1, 2, dtype=torch.long), 3), 5)
    assert torch.equal(a, b)


def test_removed_options_load_at_their_off_value_and_are_refused_otherwise(saved, tmp_path):
    """Checkpoints saved before the experimental options left the model record them (every bundled
    VSSM does, as block "glu" and dec_estimates 0): those load unchanged; one that used an option
    cannot run here and is refused by name."""
    ref = load_checkpoint(saved)

    def with_config(**extra):
        def meta(m):
            return {**m, "config": json.dumps({**json.loads(m["config"]), **extra})}

        return meta

    legacy = rewrite(
        saved,
        tmp_path / "legacy.safetensors",
        meta=with_config(block="glu", dec_estimates=0, posterior_blocks=False, decoder_ar=False),
    )
    loaded = load_checkpoint(legacy)
    assert loaded.config == ref.config and loaded.fingerprint == ref.fingerprint
    for name, value in (("block", "gated"), ("dec_estimates", 2), ("posterior_blocks", True), ("decoder_ar", True)):
        used = rewrite(saved, tmp_path / f"{name}.safetensors", meta=with_config(**{name: value}))
        with pytest.raises(CheckpointError, match=f"{name}={value!r}.*removed"):
            load_checkpoint(used)


def test_modality_is_recorded_and_old_checkpoints_get_their_dataset_s(saved, tmp_path):
    from vssm.model.modality import Modality

    m = tiny_model("vssm", dtype=torch.float32)
    m.modality = Modality("image", shape=(4, 4))
    path = save_checkpoint(m, tmp_path / "image.safetensors")
    assert load_checkpoint(path).modality == Modality("image", shape=(4, 4))
    model.set_default_block_size(path, 2)  # rewriting the metadata keeps it
    assert load_checkpoint(path).modality.shape == (4, 4)
    # saved before the field: derived from the recorded dataset, once, by the loader
    for dataset, want in (("shakespeare", Modality("text", encoding="utf-8")), ("mnist", Modality("image", (28, 28)))):
        old = rewrite(
            path,
            tmp_path / f"{dataset}.safetensors",
            meta=lambda m, d=dataset: {**{k: v for k, v in m.items() if k != "modality"}, "dataset": d},
        )
        assert load_checkpoint(old).modality == want
    assert load_checkpoint(saved).modality == Modality("tokens")  # no dataset: plain token ids
    bad = rewrite(path, tmp_path / "bad.safetensors", meta=lambda m: {**m, "modality": '{"kind": "video"}'})
    with pytest.raises(CheckpointError, match="bad modality: modality kind must be one of"):
        load_checkpoint(bad)
    with pytest.raises(ValueError, match="needs a shape"):
        Modality("image")
