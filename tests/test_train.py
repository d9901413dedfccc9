"""The training loop in process: the weight average (``ema_decay``) and how it resumes."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.test_data import DATA, needs_data
from vssm.model import load_checkpoint
from vssm.model.data import load_dataset
from vssm.model.train import TrainConfig, train

pytestmark = needs_data


@pytest.fixture(scope="module")
def mnist():
    return load_dataset("mnist", DATA, limit=64)


def config(out: Path, steps: int, ema_decay: float = 0.0, family: str = "ar-ssm") -> TrainConfig:
    return TrainConfig(
        dataset="mnist",
        family=family,
        size="tiny",
        out=str(out),
        max_steps=steps,
        batch_size=4,
        val_every=1,
        ckpt_every=1,
        val_sequences=4,
        threads=1,
        ema_decay=ema_decay,
    )


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path).state_dict()


@pytest.mark.slow
def test_average_is_saved_validated_and_resumed_exactly(tmp_path, mnist):
    d = 0.75
    # two steps without an average, then resume with one: it starts from the step-2 weights
    train(config(tmp_path / "run", 2), mnist)
    w2 = weights(tmp_path / "run" / "model.safetensors")
    assert not (tmp_path / "run" / "model-raw.safetensors").exists()
    train(config(tmp_path / "run", 4, ema_decay=d), mnist)
    raw_path = tmp_path / "run" / "model-raw.safetensors"
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert "val_raw_nll" not in records[1] and records[3]["val_raw_nll"] != records[3]["val_nll"]

    # the same 4 steps in one run, checkpointing the raw weights of step 3 on the way
    train(config(tmp_path / "step3", 3, ema_decay=d), mnist)
    w3 = weights(tmp_path / "step3" / "model-raw.safetensors")
    w4 = weights(raw_path)
    ema = weights(tmp_path / "run" / "model.safetensors")
    for k in ema:  # step 3: d * w2 + (1 - d) * w3, step 4: d * that + (1 - d) * w4
        expected = d * (d * w2[k] + (1 - d) * w3[k]) + (1 - d) * w4[k]
        torch.testing.assert_close(ema[k], expected, rtol=1e-5, atol=1e-6)
    assert any(not torch.equal(ema[k], w4[k]) for k in ema)
    # the average resumes from the train state, not from the raw weights: 4 steps in one go == 2 + 2
    train(config(tmp_path / "whole", 4, ema_decay=d), mnist)
    train(config(tmp_path / "halves", 2, ema_decay=d), mnist)
    train(config(tmp_path / "halves", 4, ema_decay=d), mnist)
    whole = weights(tmp_path / "whole" / "model.safetensors")
    halves = weights(tmp_path / "halves" / "model.safetensors")
    for k in whole:
        torch.testing.assert_close(halves[k], whole[k], rtol=0, atol=0)


def test_vssm_trains_with_an_average(tmp_path, mnist):
    out = tmp_path / "vssm"
    train(config(out, 2, ema_decay=0.9, family="vssm"), mnist)
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert {"val_nll", "val_raw_nll", "val_kl", "val_raw_kl"} <= set(record)
    assert load_checkpoint(out / "model.safetensors").family == "vssm"


def test_a_decoder_that_reads_tokens_trains_with_blocks_only(tmp_path, mnist):
    """One-pass training shows the decoder EMPTYs only: its token weights would never move."""
    base = dataclasses.replace(config(tmp_path / "one-pass", 2, family="vssm"), overrides='{"decoder_tokens": true}')
    for sizes in ("", "784"):
        with pytest.raises(ValueError, match="decoder_tokens"):
            train(dataclasses.replace(base, block_sizes=sizes), mnist)
    out = tmp_path / "blocks"
    train(dataclasses.replace(base, out=str(out), block_sizes="28,784"), mnist)  # a block below the length: fine
    assert load_checkpoint(out / "model.safetensors").config.decoder_tokens


def test_code_steps_fix_the_latents_for_the_first_steps_then_train_the_elbo(tmp_path, mnist, monkeypatch):
    from vssm.model import VSSM

    with pytest.raises(ValueError, match="block-sizes"):
        TrainConfig(family="vssm", code_steps=2)
    with pytest.raises(ValueError, match="code_steps must be >= 0"):
        TrainConfig(family="vssm", code_steps=-1, block_sizes="4")
    with pytest.raises(ValueError, match="block-sizes"):
        TrainConfig(family="ar-ssm", code_steps=2, block_sizes="4")
    stages: list[bool] = []  # training steps only: validation runs without gradients, on the ELBO
    validated: list[bool] = []
    loss = VSSM.loss

    def spy(self, x, **kw):
        (stages if torch.is_grad_enabled() else validated).append(kw.get("code", False))
        return loss(self, x, **kw)

    monkeypatch.setattr(VSSM, "loss", spy)
    cfg = dataclasses.replace(config(tmp_path / "code", 3, family="vssm"), block_sizes="4", code_steps=2)
    train(cfg, mnist)
    assert stages == [True, True, False]
    assert validated and not any(validated)


@pytest.mark.slow
@pytest.mark.parametrize(("field", "value"), [("ema_decay", -0.1), ("ema_decay", 1.0)])
def test_train_config_refuses_bad_values(tmp_path, field, value):
    with pytest.raises(ValueError, match=field):
        TrainConfig(**{field: value})
    proc = subprocess.run(
        [sys.executable, "-m", "vssm.model", "train", "--" + field.replace("_", "-"), str(value), "--max-steps", "1"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0 and f"vssm train: error: {field}" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_cpu_budget_sets_the_schedule_and_the_end():
    """On a shared machine the run's own CPU time is the fair budget: it drives the cosine and the stop."""
    from vssm.model.train import TrainConfig, _finished, _progress

    cfg = TrainConfig(budget_cpu_minutes=10.0)
    assert _progress(cfg, step=5, elapsed=3000.0, cpu=300.0) == pytest.approx(0.5)
    assert not _finished(cfg, 5, 3000.0, world=1, cpu=599.0)
    assert _finished(cfg, 5, 3000.0, world=1, cpu=600.0)
    both = TrainConfig(budget_minutes=20.0, budget_cpu_minutes=10.0)
    assert _progress(both, 5, elapsed=900.0, cpu=300.0) == pytest.approx(0.75)  # whichever is further along


def test_init_from_starts_at_a_checkpoints_weights_and_refuses_another_model(tmp_path, mnist):
    """Fine-tuning: the run starts from the checkpoint's weights (at learning rate 0 it keeps them),
    and a checkpoint of another family or config is refused by name."""
    import dataclasses

    source = load_checkpoint(train(config(tmp_path / "src", 2, family="vssm"), mnist))
    cfg = dataclasses.replace(
        config(tmp_path / "ft", 1, family="vssm"), init_from=str(tmp_path / "src" / "model.safetensors")
    )
    tuned = load_checkpoint(train(dataclasses.replace(cfg, lr=0.0, weight_decay=0.0), mnist))
    for (name, a), (_, b) in zip(source.state_dict().items(), tuned.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    moved = load_checkpoint(train(dataclasses.replace(cfg, out=str(tmp_path / "ft2")), mnist))
    pairs = zip(source.state_dict().values(), moved.state_dict().values(), strict=True)
    assert any(not torch.equal(a, b) for a, b in pairs)
    other = dataclasses.replace(cfg, out=str(tmp_path / "bad"), overrides='{"n_latents": 3}')
    with pytest.raises(ValueError, match="n_latents"):
        train(other, mnist)
    with pytest.raises(ValueError, match="vssm"):
        train(dataclasses.replace(cfg, out=str(tmp_path / "bad2"), family="ar-ssm"), mnist)


def test_train_only_moves_the_named_networks_and_freezes_the_rest(tmp_path, mnist):
    """``train_only``: an encoder fitted to a fixed generative model (its decoder and partial encoder
    bit for bit the checkpoint's, so what it samples is too); an unknown network is refused."""
    source = load_checkpoint(train(config(tmp_path / "src", 2, family="vssm"), mnist))
    cfg = dataclasses.replace(
        config(tmp_path / "enc", 2, family="vssm"),
        init_from=str(tmp_path / "src" / "model.safetensors"),
        train_only="encoder",
        block_sizes="4,784",
    )
    tuned = load_checkpoint(train(cfg, mnist))
    theirs = source.state_dict()
    for name, value in tuned.state_dict().items():
        if name.startswith("encoder."):
            continue
        assert torch.equal(value, theirs[name]), name
    assert any(not torch.equal(v, theirs[k]) for k, v in tuned.state_dict().items() if k.startswith("encoder."))
    with pytest.raises(ValueError, match="encoderr"):
        train(dataclasses.replace(cfg, out=str(tmp_path / "bad"), train_only="encoderr"), mnist)
    # the optimiser's state is kept by position among the trained parameters: another frozen set
    # resuming the run would hand it to the wrong tensors, so it is refused
    with pytest.raises(ValueError, match="train-only 'encoder'"):
        train(dataclasses.replace(cfg, max_steps=3, train_only="decoder"), mnist)
