"""`python -m model train | eval | sample` end to end on tiny slices of the real data."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from tests.test_data import DATA, needs_data
from vssm.model import load_checkpoint
from vssm.model.evaluate import EVAL_SCHEMA_KEYS
from vssm.model.train import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [needs_data, pytest.mark.slow]  # end to end: subprocesses and training runs


def run(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "VSSM_DATA_DIR": str(DATA), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def train_args(out: Path, family: str, dataset: str = "mnist", steps: int = 3) -> list[str]:
    flags = {
        "dataset": dataset,
        "family": family,
        "size": "tiny",
        "out": out,
        "max-steps": steps,
        "batch-size": 4,
        "seq-len": 32,
        "limit": 200,
        "val-every": 2,
        "ckpt-every": 2,
        "val-sequences": 8,
        "threads": 1,
    }
    return ["-m", "vssm.model", "train", *(x for k, v in flags.items() for x in (f"--{k}", str(v)))]


def train(out: Path, family: str, dataset: str = "mnist", steps: int = 3) -> subprocess.CompletedProcess:
    return run(*train_args(out, family, dataset, steps))


@pytest.mark.parametrize("family", ["vssm", "ar-ssm", "ar-transformer", "ar-gru", "tvae", "vrnn"])
def test_train_each_family_and_resume(tmp_path, family):
    out = tmp_path / family
    proc = train(out, family)
    model = load_checkpoint(out / "model.safetensors")
    assert model.family == family and model.max_position == 784
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [2, 3] or [r["step"] for r in lines] == [2]
    assert "val_nll" in lines[0] and lines[0]["val_nll"] > 0
    if family == "vssm":
        assert {"train_rec", "train_kl", "train_pkl"} <= set(lines[0])
        assert "kl=" in proc.stderr and "pkl=" in proc.stderr  # the progress bar shows the terms
    proc = train(out, family, "mnist", 5)
    assert "resuming" in proc.stderr and "at step 3" in proc.stderr
    steps = [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps[-1] == 5 and 4 in steps


def test_text_training_and_text_samples(tmp_path):
    out = tmp_path / "text"
    train(out, "vssm", "shakespeare", 2)
    model = load_checkpoint(out / "model.safetensors")
    assert model.vocab_size == 256 and model.max_position is None
    run(
        "-m",
        "model",
        "sample",
        str(out / "model.safetensors"),
        "--out",
        str(tmp_path / "s-t0.5"),
        "--temperature",
        "0.5",
        "--length",
        "20",
        "--n",
        "2",
        "--prompt",
        "ROMEO:",
    )
    text = (tmp_path / "s-t0.5.txt").read_text()  # a dot in the prefix is kept
    assert text.startswith("ROMEO:") and "---" in text


def test_eval_json_schema_and_sample_pngs(tmp_path):
    out = tmp_path / "v"
    train(out, "vssm", "mnist", 2)
    ckpt = out / "model.safetensors"
    run(
        "-m",
        "model",
        "eval",
        str(ckpt),
        "--limit",
        "6",
        "--samples",
        "4",
        "--prompted-samples",
        "2",
        "--batch-size",
        "3",
        "--out",
        str(tmp_path / "eval.json"),
    )
    result = json.loads((tmp_path / "eval.json").read_text())
    assert set(EVAL_SCHEMA_KEYS) <= set(result)
    assert result["test"] == {"sequences": 6, "tokens_per_sequence": 784}
    nll = result["nll"]
    assert nll["bound"] == "iw" and nll["samples"] == 4 and nll["nats_per_sequence"] > 0
    # one set of 4 draws gives the bound for k = 1, 2, 4; grouping draws can only tighten it (Jensen)
    curve = nll["iw_curve"]
    assert list(curve) == ["1", "2", "4"]
    assert curve["4"] == nll["nats_per_sequence"] and curve["1"] == nll["elbo"]["nats_per_sequence"]
    assert curve["1"] >= curve["2"] >= curve["4"]
    assert result["prompted_nll"]["0.5"]["samples"] == 2
    assert nll["kl_nats_per_sequence"] >= 0 and nll["elbo"]["nats_per_sequence"] > 0
    assert set(result["prompted_nll"]) == {"0.25", "0.5", "0.75"}
    assert result["prompted_nll"]["0.5"]["prompt_tokens"] == 392 and result["prompted_nll"]["0.5"]["sequences"] == 6
    assert result["generation_seconds"]["batch_1"] > 0
    assert result["parameters"]["generation"] < result["parameters"]["total"]
    assert result["training"]["machine"].endswith(" CPUs")  # the budget's machine, from the checkpoint

    # shards of a long evaluation: each sequence's draws are its own, so two halves pool to the whole
    halves = []
    for offset in (0, 3):
        path = tmp_path / f"shard{offset}.json"
        run("-m", "vssm.model", "eval", str(ckpt), "--offset", str(offset), "--limit", "3", "--samples", "4",
            "--prompted-limit", "1", "--batch-size", "2", "--out", str(path))  # fmt: skip
        halves.append(json.loads(path.read_text()))
    assert halves[1]["test"] == {"sequences": 3, "tokens_per_sequence": 784, "offset": 3}
    for k in ("1", "4"):
        pooled = (halves[0]["nll"]["iw_curve"][k] + halves[1]["nll"]["iw_curve"][k]) / 2
        assert pooled == pytest.approx(curve[k], rel=1e-5)

    run("-m", "vssm.model", "sample", str(ckpt), "--out", str(tmp_path / "grid.png"), "--n", "4", "--prompt-rows", "10")
    run(
        "-m",
        "vssm.model",
        "sample",
        str(ckpt),
        "--out",
        str(tmp_path / "grid-t0.3"),
        "--n",
        "2",
        "--temperature",
        "0.3",
    )
    names = ("grid-unconditional.png", "grid-prompted.png", "grid-t0.3-unconditional.png", "grid-t0.3-prompted.png")
    for name in names:
        with Image.open(tmp_path / name) as img:
            img.load()
            assert img.size[0] > 28 and img.mode == "RGB"


@pytest.mark.parametrize("family", ["tvae", "vrnn"])
def test_eval_and_sample_the_latent_baselines(tmp_path, family):
    """`vssm eval` reports their importance-weighted bounds as it does the VSSM's; `vssm sample` draws them."""
    out = tmp_path / family
    train(out, family, "mnist", 1)
    ckpt, path = out / "model.safetensors", tmp_path / "eval.json"
    run("-m", "vssm.model", "eval", str(ckpt), "--limit", "3", "--samples", "2", "--prompted-limit", "2",
        "--batch-size", "4", "--block-sizes", "1,784", "--block-limit", "2", "--block-samples", "2",
        "--out", str(path))  # fmt: skip
    result = json.loads(path.read_text())
    assert set(EVAL_SCHEMA_KEYS) <= set(result) and result["family"] == family
    nll = result["nll"]
    assert nll["bound"] == "iw" and list(nll["iw_curve"]) == ["1", "2"] and nll["kl_nats_per_sequence"] >= 0
    assert nll["iw_curve"]["2"] <= nll["iw_curve"]["1"] == nll["elbo"]["nats_per_sequence"]
    assert result["prompted_nll"]["0.5"]["samples"] == 2
    (row,) = result["block_curve"]  # one row: the family samples the same way at every block size
    assert row["block_size"] == (784 if family == "tvae" else 1) and row["nll"]["bound"] == "iw"
    params = result["parameters"]
    assert (params["generation"] < params["total"]) == (family == "tvae")  # the VRNN serves every parameter
    run("-m", "vssm.model", "sample", str(ckpt), "--out", str(tmp_path / "grid.png"), "--n", "2", "--prompt-rows", "10")
    for name in ("grid-unconditional.png", "grid-prompted.png"):
        with Image.open(tmp_path / name) as img:
            assert img.size[0] > 28


def test_two_process_data_parallel_training(tmp_path):
    out = tmp_path / "ddp"
    proc = run(
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        *train_args(out, "ar-ssm"),
        "--device",
        "cpu",
        timeout=300,
    )
    ranks = dict(re.findall(r"rank (\d) of 2 finished at step 3, weights ([0-9a-f]+)", proc.stderr))
    assert set(ranks) == {"0", "1"}, proc.stderr[-2000:]
    assert ranks["0"] == ranks["1"]  # gradients were averaged: both replicas hold the same weights
    assert load_checkpoint(out / "model.safetensors").fingerprint == ranks["0"]


def test_train_config_fields_all_have_cli_flags():
    proc = run("-m", "vssm.model", "train", "--help")
    for name in TrainConfig.__dataclass_fields__:
        assert "--" + name.replace("_", "-") in proc.stdout
    # each flag's help is its config field's comment (argparse wraps lines: compare without spaces)
    flat = "".join(proc.stdout.split())
    for comment in ("peak learning rate (SSM dynamics use min(lr, ssm_lr))", "stop after this many steps"):
        assert "".join(comment.split()) in flat
