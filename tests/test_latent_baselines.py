"""TVAE and VRNN beside the other families: parameter-matched presets, ``vssm eval``'s bounds and
curve, the model card, and the training loop (tiny models; the MNIST slice from ../shared/data).

Glossary: S sequences, T length.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from tests.conftest import V, tiny_model
from tests.test_data import DATA, needs_data
from vssm.model import build_model, load_checkpoint
from vssm.model.card import model_card
from vssm.model.cli import build_parser, train_config
from vssm.model.evaluate import block_curve, evaluate, is_latent
from vssm.model.presets import preset_config
from vssm.model.train import TrainConfig, train

LATENT_BASELINES = ("tvae", "vrnn")


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run many small ops: on a shared 2-core machine a second thread only contends."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def generation_parameters(dataset: str, family: str) -> int:
    return build_model(family, preset_config(dataset, family, "small", 256)).num_parameters(generation_only=True)


@pytest.mark.parametrize("dataset", ["mnist", "shakespeare"])
@pytest.mark.parametrize("family", ["ar-ssm", "ar-transformer", "ar-gru", *LATENT_BASELINES])
def test_small_presets_match_the_vssm_s_generation_parameters_within_10_percent(dataset, family):
    target = generation_parameters(dataset, "vssm")
    assert abs(generation_parameters(dataset, family) / target - 1) < 0.10


def test_latent_baselines_keep_the_vssm_s_latent_space_and_the_data_s_length():
    vssm = preset_config("mnist", "vssm", "small")
    for family in LATENT_BASELINES:
        cfg = preset_config("mnist", family, "small")
        assert (cfg["n_latents"], cfg["n_classes"], cfg["max_position"]) == (
            vssm["n_latents"],
            vssm["n_classes"],
            784,
        )
    assert preset_config("shakespeare", "tvae", "small", seq_len=128)["max_position"] == 128  # learned positions
    assert preset_config("shakespeare", "vrnn", "small")["max_position"] is None
    # the VRNN's posterior reads prompts when serving: every parameter counts
    m = build_model("vrnn", preset_config("mnist", "vrnn", "small"))
    assert m.num_parameters(generation_only=True) == m.num_parameters()
    t = build_model("tvae", preset_config("mnist", "tvae", "small"))
    assert t.num_parameters(generation_only=True) == t.num_parameters() - sum(p.numel() for p in t.encoder.parameters())


def test_train_flag_takes_the_new_families():
    parser, _ = build_parser()
    for family in LATENT_BASELINES:
        cfg = train_config(parser.parse_args(["train", "--family", family, "--dataset", "mnist", "--tau", "0.5"]))
        assert (cfg.family, cfg.tau) == (family, 0.5)


# ----- vssm eval ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", LATENT_BASELINES)
def test_eval_reports_an_importance_weighted_bound(family):
    m = tiny_model(family, max_position=12)
    assert is_latent(m) and not is_latent(tiny_model("ar-gru"))
    x = torch.randint(0, V, (6, 12), generator=torch.Generator().manual_seed(1))
    out = evaluate(m, x, samples=4, batch_size=8, prompted_limit=4)
    nll = out["nll"]
    assert nll["bound"] == "iw" and nll["samples"] == 4 and set(nll["iw_curve"]) == {"1", "2", "4"}
    assert nll["nats_per_sequence"] <= nll["elbo"]["nats_per_sequence"]
    assert nll["nats_per_sequence"] == pytest.approx(float(m.nll(x, samples=4).mean()), rel=1e-9)
    assert nll["kl_nats_per_sequence"] > 0 and nll["reconstruction_nats_per_sequence"] > 0
    half = out["prompted_nll"]["0.5"]
    assert half["samples"] == 4 and half["sequences"] == 4 and half["prompt_tokens"] == 6
    expected = float(m.nll(x[:4], prompt_len=6, samples=4).sum()) / 4
    assert half["nats_per_sequence"] == pytest.approx(expected, rel=1e-9)
    assert out["generation_seconds"]["batch_32"] > 0


@pytest.mark.parametrize(("family", "block"), [("tvae", 12), ("vrnn", 1)])
def test_block_curve_has_one_row_the_way_the_family_samples(family, block):
    m = tiny_model(family, max_position=12)
    x = torch.randint(0, V, (5, 12), generator=torch.Generator().manual_seed(2))
    (row,) = block_curve(m, x, [3, 12], samples=4, batch_size=4)
    assert row["block_size"] == block and row["nll"]["bound"] == "iw"
    assert row["nll"]["nats_per_sequence"] == pytest.approx(float(m.nll(x, samples=4).mean()), rel=1e-9)


def test_card_says_how_each_family_generates():
    evaluation = {"family": "tvae", "test": {"tokens_per_sequence": 784}, "generation_seconds": {"batch_1": 0.01}}
    evaluation["generation_seconds"]["batch_32"] = 0.1
    notes = {
        f: next(m["note"] for m in model_card("x", {}, {**evaluation, "family": f}, None)["metrics"])
        for f in ("tvae", "vrnn")
    }
    assert "one parallel pass" in notes["tvae"] and "token by token" in notes["vrnn"]


# ----- the training loop ------------------------------------------------------------------------------------
@needs_data
@pytest.mark.parametrize("family", LATENT_BASELINES)
def test_train_validate_save_and_resume(tmp_path, family):
    from vssm.model.data import load_dataset

    ds = load_dataset("mnist", DATA, limit=32)
    cfg = dict(dataset="mnist", family=family, size="tiny", batch_size=2, val_every=1, ckpt_every=1)
    cfg |= dict(val_sequences=2, threads=1, kl_warmup_steps=2, tau=0.5, out=str(tmp_path / family))
    train(TrainConfig(**cfg, max_steps=1), ds)
    train(TrainConfig(**cfg, max_steps=2), ds)  # resumes at step 1
    records = [json.loads(x) for x in (tmp_path / family / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2]
    assert records[0]["kl_weight"] == 0.5 and records[1]["kl_weight"] == 1.0
    assert {"val_nll", "val_rec", "val_kl", "train_kl"} <= set(records[-1])
    assert all(math.isfinite(r["val_nll"]) and r["val_kl"] >= 0 for r in records)
    m = load_checkpoint(tmp_path / family / "model.safetensors")
    assert m.family == family and m.max_position == 784 and m.modality.kind == "image"
    tokens, state = m.generate(m.start(torch.zeros(1, 0, dtype=torch.long), 0), 5)
    assert tokens.shape == (1, 5) and int(state.position[0]) == 5
