"""The observation temperature of latent families (``SequenceModel.observation_temperature``):
latents at the request's temperature, tokens given them at that times the ratio; a checkpoint
setting like the default block size."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import V, tiny_model
from tests.test_data import DATA, needs_data
from vssm import model

LATENT = ("vssm", "tvae", "vrnn")


def _sample(m: model.SequenceModel, seeds: list[int], n: int, **kw) -> tuple[torch.Tensor, torch.Tensor]:
    tokens, _, scores = m.generate_scored(m.start(torch.zeros(len(seeds), 0, dtype=torch.long), seeds), n, **kw)
    return tokens, scores


@pytest.mark.parametrize("family", LATENT)
def test_ratio_zero_draws_the_most_likely_token_given_the_latents(family):
    m = tiny_model(family, max_position=40)
    m.observation_temperature = 0.0
    for block in (None, 4) if family == "vssm" else (None,):
        tokens, scores = _sample(m, list(range(6)), 30, block_size=block)
        # scores are the decoder's p(x_t | latents) the token was drawn from: the token is its mode
        assert torch.equal(tokens, scores.argmax(-1)), block
        # the latents are still drawn: seeds give different distributions to take the mode of
        assert not torch.allclose(scores[0], scores[1])


@pytest.mark.parametrize("family", LATENT)
def test_ratio_one_is_the_model_s_own_sampling_and_ratios_scale_the_tokens_only(family):
    m = tiny_model(family, max_position=40)
    base = _sample(m, [0, 1, 2], 30, temperature=0.7)[0]
    m.observation_temperature = 1.0
    assert torch.equal(_sample(m, [0, 1, 2], 30, temperature=0.7)[0], base)
    # ratio r at temperature t draws the tokens the ratio-1 model draws at t * r when latents are
    # not random (temperature 0 makes them the mode for both): the ratio reaches the tokens only
    m.observation_temperature = 0.5
    half = _sample(m, [0, 1, 2], 30, temperature=0.0)[0]
    m.observation_temperature = 1.0
    assert torch.equal(half, _sample(m, [0, 1, 2], 30, temperature=0.0)[0])


def test_resumed_and_batched_equal_alone_at_a_ratio():
    m = tiny_model("vssm", max_position=60)
    m.observation_temperature = 0.3
    state = m.start(torch.tensor([[1, 0, 1]]), 5)
    whole, _ = m.generate(state, 40, temperature=0.9, block_size=6)
    parts, s = [], state
    for a in (7, 13, 20):
        t, s = m.generate(model.GenState.from_bytes(s.to_bytes()), a, temperature=0.9, block_size=6)
        parts.append(t)
    assert torch.equal(torch.cat(parts, 1), whole)
    states = model.GenState.cat(
        [m.start(torch.tensor([[1, 0, 1]]), 5), m.start(torch.zeros(1, 0, dtype=torch.long), 9)]
    )
    both, _ = m.generate(states, 20, temperature=torch.tensor([0.9, 0.4]), block_size=6)
    assert torch.equal(
        both[0], m.generate(m.start(torch.tensor([[1, 0, 1]]), 5), 20, temperature=0.9, block_size=6)[0][0]
    )
    alone = m.generate(m.start(torch.zeros(1, 0, dtype=torch.long), 9), 20, temperature=0.4, block_size=6)[0][0]
    assert torch.equal(both[1], alone)


def test_the_ratio_is_kept_in_the_checkpoint_and_refused_where_it_means_nothing(tmp_path):
    m = tiny_model("vssm", max_position=30)
    path = model.save_checkpoint(m, tmp_path / "m.safetensors", extra={"dataset": "mnist", "train_steps": "7"})
    assert "observation_temperature" not in model.read_metadata(path)  # 1: nothing written
    model.set_default_block_size(path, 6)
    model.set_observation_temperature(path, 0.25)
    loaded = model.load_checkpoint(path)
    assert loaded.observation_temperature == 0.25 and loaded.default_block_size == 6
    assert loaded.fingerprint == m.fingerprint and model.read_metadata(path)["train_steps"] == "7"
    model.set_default_block_size(path, None)  # one setting rewritten keeps the other
    assert model.load_checkpoint(path).observation_temperature == 0.25
    for bad in (-0.1, 1.5):
        with pytest.raises(model.CheckpointError, match=r"in \[0, 1\]"):
            model.set_observation_temperature(path, bad)
    ar = model.save_checkpoint(tiny_model("ar-ssm"), tmp_path / "ar.safetensors")
    with pytest.raises(model.CheckpointError, match="no latents"):
        model.set_observation_temperature(ar, 0.0)
    model.set_observation_temperature(ar, 1.0)  # the one value that means nothing is allowed
    cli = [sys.executable, "-m", "vssm.model", "set-observation-temperature"]
    done = subprocess.run([*cli, str(path), "0"], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert model.load_checkpoint(path).observation_temperature == 0.0
    done = subprocess.run([*cli, str(ar), "0.5"], capture_output=True, text=True, check=False)
    assert done.returncode != 0 and "no latents" in done.stderr


def test_tokens_range_at_ratio_zero():
    m = tiny_model("vssm", max_position=30)
    m.observation_temperature = 0.0
    tokens, _ = m.generate(m.start(torch.zeros(2, 0, dtype=torch.long), [0, 1]), 30)
    assert tokens.min() >= 0 and tokens.max() < V


def test_a_curve_judges_the_served_samples_and_the_model_s_own_beside_them():
    from vssm.model.evaluate import block_curve

    m = tiny_model("vssm", max_position=12)
    x = torch.randint(0, V, (6, 12), generator=torch.Generator().manual_seed(1))
    seen: list[torch.Tensor] = []

    def judge(samples: torch.Tensor) -> dict:
        seen.append(samples)
        return {"ink": float(samples.float().mean())}

    m.observation_temperature = 0.0
    rows = block_curve(m, x, [3, 12], samples=2, batch_size=4, judge=judge, judge_samples=5, judge_only=True)
    # judged samples alone: no bound, no times (they join rows measured before)
    assert [sorted(r) for r in rows] == [["block_size", "samples", "samples_observation_temperature_1"]] * 2
    assert rows[0]["samples"]["observation_temperature"] == 0.0 and m.observation_temperature == 0.0
    empty = torch.zeros(5, 0, dtype=torch.long)
    served = m.generate(m.start(empty, list(range(5))), 12, block_size=3)[0]
    assert torch.equal(seen[0], served)  # the served setting first, then the model's own draws
    m.observation_temperature = 1.0
    assert torch.equal(seen[1], m.generate(m.start(empty, list(range(5))), 12, block_size=3)[0])
    rows = block_curve(m, x, [12], samples=2, batch_size=4, judge=judge, judge_samples=5, judge_only=True)
    assert sorted(rows[0]) == ["block_size", "samples"]  # at 1 there is nothing to put beside


@needs_data
def test_judge_only_rejudges_a_measured_curve_and_measures_nothing_else(tmp_path, monkeypatch):
    import json

    from vssm.model import evaluate
    from vssm.model.cli import build_parser

    m = tiny_model("vssm", dtype=torch.float32, max_position=784, vocab_size=2)
    path = model.save_checkpoint(m, tmp_path / "m.safetensors", extra={"dataset": "mnist"})
    model.set_observation_temperature(path, 0.0)
    row = {"block_size": 392, "sequences": 3, "nll": {"nats_per_sequence": 123.0}, "samples": {"images": 9}}
    earlier = {"fingerprint": m.fingerprint, "nll": {"nats_per_sequence": 456.0}, "block_curve": [row]}
    out = tmp_path / "m.json"
    out.write_text(json.dumps(earlier))

    def measured(*args, **kwargs):
        raise AssertionError("--judge-only must not score the test set")

    monkeypatch.setattr(evaluate, "evaluate", measured)
    judge = Path(__file__).resolve().parents[1] / "checkpoints" / "judges" / "mnist-judge.safetensors"
    parser, _ = build_parser()
    argv = ["eval", str(path), "--judge-only", "--block-sizes", "392", "--judge-samples", "4"]
    evaluate.evaluate_cli(parser.parse_args([*argv, "--judge", str(judge), "--data-dir", str(DATA), "--out", str(out)]))
    result = json.loads(out.read_text())
    (new,) = result["block_curve"]
    assert new["nll"] == row["nll"] and result["nll"] == earlier["nll"]  # kept
    assert new["samples"]["images"] == 4 and new["samples"]["observation_temperature"] == 0.0
    assert new["samples_observation_temperature_1"]["images"] == 4
    assert result["observation_temperature"] == 0.0
    with pytest.raises(SystemExit, match="no curve row at block sizes"):
        evaluate.evaluate_cli(parser.parse_args([*argv[:4], "28", "--judge", str(judge), "--out", str(out)]))


def test_judge_reference_figures_put_a_model_s_own_samples_beside_the_served_ones(tmp_path):
    from vssm.model.judge import load_judge, reference_figures

    root = Path(__file__).resolve().parents[1]
    judge = load_judge(root / "checkpoints" / "judges" / "mnist-judge.safetensors")
    served = tiny_model("vssm", dtype=torch.float32, max_position=784, vocab_size=2)
    served.observation_temperature = 0.0
    paths = [
        model.save_checkpoint(served, tmp_path / "served.safetensors"),
        model.save_checkpoint(
            tiny_model("vssm", dtype=torch.float32, max_position=784, vocab_size=2), tmp_path / "own.safetensors"
        ),
    ]
    ar = model.save_checkpoint(
        tiny_model("ar-ssm", dtype=torch.float32, max_position=784, vocab_size=2), tmp_path / "ar.safetensors"
    )
    test = torch.randint(0, 2, (4, 784), generator=torch.Generator().manual_seed(0))
    ref = reference_figures(judge, test, paths, ar, n=4)
    at_zero, at_one = ref["models"]["served"], ref["models"]["own"]
    assert at_zero["observation_temperature"] == 0.0 and at_one["observation_temperature"] == 1.0
    assert "observation_temperature_1" not in at_one
    beside = at_zero["observation_temperature_1"]
    # the same weights: the served model's own samples are the 1-setting model's samples
    assert beside["ar_judge_nll"] == pytest.approx(at_one["ar_judge_nll"], rel=1e-6)
    assert beside["ink_fraction"] == pytest.approx(at_one["ink_fraction"]) and beside["images"] == 4


@pytest.mark.parametrize("family", LATENT)
def test_a_call_overrides_the_model_s_setting_row_by_row(family):
    m = tiny_model(family, max_position=40)
    empty = torch.zeros(3, 0, dtype=torch.long)
    blocks = (None, 4) if family == "vssm" else (None,)
    for block in blocks:
        # a call at 0 on a model set to 1 is a model set to 0
        tokens, _, scores = m.generate_scored(
            m.start(empty, [0, 1, 2]), 30, block_size=block, observation_temperature=0.0
        )
        assert torch.equal(tokens, scores.argmax(-1))
        m.observation_temperature = 0.0
        assert torch.equal(m.generate(m.start(empty, [0, 1, 2]), 30, block_size=block)[0], tokens)
        # and the other way round: 1 on a model set to 0 samples its own distribution
        own = m.generate(m.start(empty, [0, 1, 2]), 30, block_size=block, observation_temperature=1.0)[0]
        m.observation_temperature = 1.0
        assert torch.equal(own, m.generate(m.start(empty, [0, 1, 2]), 30, block_size=block)[0])
        # one value per row == each row alone
        ratios = torch.tensor([0.0, 1.0, 0.5])
        mixed = m.generate(m.start(empty, [0, 1, 2]), 30, block_size=block, observation_temperature=ratios)[0]
        for row, r in enumerate(ratios.tolist()):
            alone = m.generate(m.start(empty[:1], [row]), 30, block_size=block, observation_temperature=r)[0]
            assert torch.equal(mixed[row : row + 1], alone), (block, row)


def test_a_call_s_observation_temperature_is_checked_and_ignored_where_there_are_no_latents():
    m = tiny_model("vssm", max_position=20)
    state = m.start(torch.zeros(2, 0, dtype=torch.long), [0, 1])
    for bad in (-0.5, 1.5, float("nan"), torch.tensor([0.0, 2.0]), torch.tensor([0.0, 0.5, 1.0])):
        with pytest.raises(ValueError, match="observation_temperature"):
            m.generate(state, 5, observation_temperature=bad)
    ar = tiny_model("ar-ssm")
    s = ar.start(torch.zeros(2, 0, dtype=torch.long), [0, 1])
    assert torch.equal(ar.generate(s, 8, observation_temperature=0.0)[0], ar.generate(s, 8)[0])


@pytest.mark.parametrize("family", ["vssm", "ar-ssm"])
def test_times_only_retimes_generation_and_keeps_everything_else(tmp_path, monkeypatch, family):
    """After a change of code or machine the curve's times (what /v1/models reports to clients
    choosing a block size) are measured again; bounds and judged samples stay as they were."""
    import json

    from vssm.model import evaluate
    from vssm.model.cli import build_parser

    m = tiny_model(family, dtype=torch.float32, max_position=12, vocab_size=2)
    path = model.save_checkpoint(m, tmp_path / "m.safetensors", extra={"dataset": "mnist"})
    old = {"length": 12, "batch_1": 99.0, "batch_32": 99.0}
    rows = [
        {"block_size": c, "nll": {"nats_per_sequence": c}, "samples": {"images": 3}, "generation_seconds": old}
        for c in (1, 4)
    ]
    earlier = {"fingerprint": m.fingerprint, "nll": {"nats_per_sequence": 7.0}, "generation_seconds": old}
    earlier["block_curve"] = rows
    out = tmp_path / "m.json"
    out.write_text(json.dumps(earlier))
    calls = []

    def timed(mod, length, batch, repeats=3, block_size=None):
        calls.append((length, batch, block_size))
        return 0.001 * batch

    monkeypatch.setattr(evaluate, "generation_seconds", timed)
    parser, _ = build_parser()
    evaluate.evaluate_cli(parser.parse_args(["eval", str(path), "--times-only", "--out", str(out)]))
    result = json.loads(out.read_text())
    blocks = [1, 4] if family == "vssm" else [None, None]  # other families sample one way at any block size
    assert calls == [(12, 1, None), (12, 32, None)] + [(12, b, c) for c in blocks for b in (1, 32)]
    assert result["generation_seconds"] == {"length": 12, "batch_1": 0.001, "batch_32": 0.032}
    for new, before in zip(result["block_curve"], rows, strict=True):
        assert new["generation_seconds"]["batch_32"] == 0.032
        assert {k: v for k, v in new.items() if k != "generation_seconds"} == {
            k: v for k, v in before.items() if k != "generation_seconds"
        }
    assert result["nll"] == earlier["nll"] and result["timing"]["seconds"] >= 0
    # the CPU the times are of, as the results page names it (scripts/results_page.py)
    machine = result["timing"]["machine"]
    assert {"cpu", "cpu_id", "kernel_vector_bits"} <= machine.keys() and machine["threads"] >= 1
    out.write_text(json.dumps({**earlier, "fingerprint": "another"}))
    with pytest.raises(SystemExit, match="other weights"):
        evaluate.evaluate_cli(parser.parse_args(["eval", str(path), "--times-only", "--out", str(out)]))
    missing = ["eval", str(path), "--times-only", "--out", str(tmp_path / "none.json")]
    with pytest.raises(SystemExit, match="existing"):
        evaluate.evaluate_cli(parser.parse_args(missing))
