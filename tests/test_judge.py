"""Sample-quality judges: metrics on hand-made inputs, the judge's file and its refusals, the bundled judge."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from tests.conftest import tiny_model
from tests.test_data import DATA, needs_data
from vssm.model import CheckpointError, load_checkpoint, save_checkpoint
from vssm.model.cli import build_parser
from vssm.model.data import load_dataset
from vssm.model.judge import (
    DigitClassifier,
    JudgeConfig,
    JudgeTrainConfig,
    _labels,
    _outliers,
    _salted,
    _shifted,
    accuracy,
    ar_judge_bits_per_byte,
    ar_judge_nll,
    histogram_entropy,
    image_metrics,
    load_judge,
    probe_figures,
    sample_sequences,
    save_judge,
    text_metrics,
    train_classifier,
    weights_fingerprint,
    words,
)

ROOT = Path(__file__).resolve().parents[1]
BUNDLED = ROOT / "checkpoints" / "judges" / "mnist-judge.safetensors"
SMALL = JudgeConfig(channels1=2, channels2=3, hidden=4)


def stub(classes: list[int], confidence: float = 0.95):
    """A classifier returning logits whose softmax puts ``confidence`` on ``classes[i]`` for row i."""

    def classify(x: torch.Tensor) -> torch.Tensor:
        assert x.shape == (len(classes), 784), "the stub expects every image in one batch"
        p = torch.full((len(x), 10), (1 - confidence) / 9)
        p[torch.arange(len(x)), torch.tensor(classes)] = confidence
        return p.log()

    return classify


# ----- image metrics ------------------------------------------------------------------------------


def test_uniform_histogram_has_entropy_log_10_and_one_class_has_0():
    assert histogram_entropy(torch.ones(10)) == pytest.approx(math.log(10))
    assert histogram_entropy(torch.tensor([0, 0, 7, 0])) == 0.0
    assert histogram_entropy(torch.zeros(10)) == 0.0
    assert histogram_entropy(torch.tensor([1, 1, 0, 0])) == pytest.approx(math.log(2))


def test_image_metrics_of_a_stub_whose_outputs_we_control():
    images = torch.zeros(10, 784, dtype=torch.long)
    images[:, :196] = 1  # a quarter of every image is ink
    m = image_metrics(stub(list(range(10)), confidence=0.95), images, batch_size=10)
    assert m["images"] == 10 and m["class_histogram"] == [1] * 10
    assert m["confident_share"] == 1.0 and m["mean_max_probability"] == pytest.approx(0.95)
    assert m["class_entropy_nats"] == pytest.approx(math.log(10))
    assert m["ink_fraction"] == pytest.approx(0.25)

    unsure = image_metrics(stub([3] * 10, confidence=0.5), images, batch_size=10)
    assert unsure["confident_share"] == 0.0 and unsure["class_entropy_nats"] == 0.0
    assert unsure["class_histogram"] == [0, 0, 0, 10, 0, 0, 0, 0, 0, 0]


def test_confident_share_counts_the_threshold_itself():
    images = torch.zeros(4, 784, dtype=torch.long)
    probs = torch.tensor([0.9, 0.89, 0.99, 0.5])

    def classify(x):
        p = torch.full((4, 10), 0.0)
        p[:, 0] = probs
        p[:, 1] = 1 - probs
        return p.clamp_min(1e-12).log()

    assert image_metrics(classify, images)["confident_share"] == pytest.approx(0.5)


def test_image_metrics_refuses_images_that_are_not_binarised_784_tokens():
    with pytest.raises(ValueError, match="784"):
        image_metrics(stub([0]), torch.zeros(1, 783, dtype=torch.long))
    with pytest.raises(ValueError, match="binarised"):
        image_metrics(stub([0]), torch.full((1, 784), 2))


def test_image_metrics_leaves_a_training_classifier_in_training_mode_and_is_deterministic():
    torch.manual_seed(0)
    c = DigitClassifier(JudgeConfig(dropout=0.5)).train()
    images = (torch.rand(8, 784) < 0.2).long()
    assert image_metrics(c, images) == image_metrics(c, images)  # dropout is off while judging
    assert c.training


def test_shift_translates_whole_images_and_zero_is_the_identity():
    x = torch.zeros(64, 28, 28)
    x[:, 10:14, 12:15] = 1
    g = torch.Generator().manual_seed(0)
    assert torch.equal(_shifted(x, 0, g), x)
    y = _shifted(x, 2, g)
    assert torch.equal(y.sum((1, 2)), x.sum((1, 2)))  # the block stays inside: every pixel kept
    moved = {tuple((t.nonzero()[0] - torch.tensor([10, 12])).tolist()) for t in y}
    assert moved <= {(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)} and len(moved) > 5


def test_outliers_are_shuffled_patches_noise_and_independent_pixels():
    g = torch.Generator().manual_seed(0)
    x = torch.arange(6 * 784, dtype=torch.float32).reshape(6, 28, 28)
    out = _outliers(x, torch.full((28, 28), 0.5), g)
    assert out.shape == x.shape
    for i in range(2):  # the first third: the same pixels, whole 7x7 patches moved
        assert torch.equal(out[i].flatten().sort().values, x[i].flatten())
        assert not torch.equal(out[i], x[i])
        assert any(
            torch.equal(out[i, :7, :7], x[i, 7 * a : 7 * a + 7, 7 * b : 7 * b + 7]) for a in range(4) for b in range(4)
        )
    assert set(out[2:].unique().tolist()) <= {0.0, 1.0}
    assert 0.4 < float(out[4:].mean()) < 0.6  # independent pixels at the given mean


def test_salt_only_adds_pixels():
    g = torch.Generator().manual_seed(0)
    x = torch.zeros(50, 28, 28)
    x[:, 5:20, 10] = 1
    y = _salted(x, 0.1, g)
    assert bool((y >= x).all()) and 0 < float((y - x).mean()) < 0.1
    assert torch.equal(_salted(x, 0.0, g), x)


def test_probes_are_the_images_they_claim_to_be():
    images = torch.zeros(200, 784, dtype=torch.long)
    images[:, 300:400] = 1

    def always_zero(x):  # a classifier sure that everything is a 0
        logits = torch.zeros(len(x), 10)
        logits[:, 0] = 20.0
        return logits

    p = probe_figures(always_zero, images)
    assert p["images"] == 200
    for name in ("pixel_noise", "independent_pixels", "test_with_stray_pixels", "test_with_flipped_stroke_pixels"):
        assert p[name]["confident_share"] == 1.0 and p[name]["class_histogram"][0] == 200
    assert p["pixel_noise"]["ink_fraction"] == pytest.approx(100 / 784, abs=0.01)
    assert p["independent_pixels"]["ink_fraction"] == pytest.approx(100 / 784, abs=0.01)
    assert 100 / 784 < p["test_with_stray_pixels"]["ink_fraction"] < 100 / 784 + 0.03


@pytest.mark.slow
def test_training_loop_keeps_the_best_held_out_weights():
    torch.manual_seed(0)
    labels = torch.arange(64) % 2  # class 1: ink in the top half; class 0: in the bottom half
    images = torch.zeros(64, 784, dtype=torch.long)
    images[labels == 1, 100:300] = 1
    images[labels == 0, 500:700] = 1
    cfg = JudgeTrainConfig(epochs=3, patience=5, batch_size=16, budget_minutes=0)
    c, record = train_classifier(images, images[:16], labels, labels[:16], cfg, SMALL)
    assert not c.training and record["steps"] == 12 and len(record["history"]) == 3
    assert record["valid_accuracy"] == max(h["valid_accuracy"] for h in record["history"])
    assert accuracy(c, images[:16], labels[:16]) == record["valid_accuracy"]  # the best epoch's weights


# ----- the autoregressive judge ---------------------------------------------------------------------


def test_ar_judge_nll_is_the_mean_of_nll_whatever_the_batch():
    m = tiny_model("ar-ssm", vocab_size=2)
    x = torch.randint(0, 2, (7, 12), generator=torch.Generator().manual_seed(0))
    expected = float(m.nll(x).double().mean())
    assert ar_judge_nll(m, x, batch_size=3) == pytest.approx(expected, rel=1e-12)
    assert ar_judge_nll(m, x, batch_size=100) == pytest.approx(expected, rel=1e-12)


def test_a_block_curves_reference_is_the_ar_models_nll_of_the_same_rows(tmp_path):
    """The curve's bounds are on the first rows of the test set: the reference it is compared with is
    the autoregressive model's exact NLL of those rows, whatever the batch."""
    from vssm.model.evaluate import reference_nll

    m = tiny_model("ar-ssm", vocab_size=2)
    path = save_checkpoint(m, tmp_path / "ar.safetensors")
    x = torch.randint(0, 2, (7, 12), generator=torch.Generator().manual_seed(1))
    expected = float(load_checkpoint(path).nll(x).mean())
    for batch in (2, 100):
        ref = reference_nll(str(path), x, batch)
        assert ref["nats_per_sequence"] == pytest.approx(expected, rel=1e-6) and ref["sequences"] == 7
        assert ref["bits_per_token"] == pytest.approx(expected / math.log(2) / 12, rel=1e-6)
    assert reference_nll(str(path), x[:3], 2)["nats_per_sequence"] != pytest.approx(expected, rel=1e-6)


def test_ar_judge_refuses_a_vssm_and_empty_input():
    with pytest.raises(TypeError, match="autoregressive"):
        ar_judge_nll(tiny_model("vssm"), torch.zeros(1, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="non-empty"):
        ar_judge_nll(tiny_model("ar-gru"), torch.zeros(0, 4, dtype=torch.long))


def test_ar_judge_bits_per_byte_weights_every_byte_alike():
    m = tiny_model("ar-gru", vocab_size=256)
    samples = [b"to be", b"or not", b"to be", b""]
    nats = float(m.nll(torch.tensor([list(b"to be")] * 2)).sum() + m.nll(torch.tensor([list(b"or not")])).sum())
    assert ar_judge_bits_per_byte(m, samples) == pytest.approx(nats / 16 / math.log(2), rel=1e-9)


def test_samples_do_not_depend_on_the_batch():
    m = tiny_model("ar-ssm", vocab_size=2)
    a = sample_sequences(m, 5, length=9, seed=3, batch_size=2)
    b = sample_sequences(m, 5, length=9, seed=3, batch_size=5)
    assert a.shape == (5, 9) and torch.equal(a, b)


# ----- text -----------------------------------------------------------------------------------------


def test_words_split_on_whitespace_punctuation_and_digits_lowercased():
    expected = ["o", "er", "the", "hill", "the", "moon", "times", "twice"]
    assert words("O'er the hill,\nthe Moon: 3 times--twice!") == expected
    assert words(b"caf\xc3\xa9 ROMEO\xffand") == ["café", "romeo", "and"]  # a bad byte splits words
    assert words(b"  \n,.;") == []


def test_text_metrics_known_word_share():
    vocab = {"to", "be", "or", "not"}
    assert text_metrics([b"To be, or not to be."], vocab) == {"samples": 1, "words": 6, "known_word_share": 1.0}
    assert text_metrics([b"to xq", b"zzyzx BE"], vocab)["known_word_share"] == 0.5
    assert text_metrics([b"...", b""], vocab) == {"samples": 2, "words": 0, "known_word_share": 0.0}


@needs_data
def test_a_text_curve_judges_each_row_s_samples_and_the_test_windows_themselves(tmp_path):
    """`vssm eval --block-sizes --ar-judge` on a text VSSM: every row's samples get the known-word share
    and the AR judge's bits per byte, and so do the test windows (what a perfect sampler scores)."""
    from vssm.model.evaluate import evaluate_cli

    vssm = tiny_model("vssm", dtype=torch.float32, vocab_size=256, max_position=None)
    path = save_checkpoint(vssm, tmp_path / "v.safetensors", extra={"dataset": "shakespeare"})
    ar = save_checkpoint(tiny_model("ar-ssm", dtype=torch.float32, vocab_size=256), tmp_path / "ar.safetensors")
    out = tmp_path / "v.json"
    argv = ["eval", str(path), "--curve-only", "--block-sizes", "4,16", "--block-limit", "2", "--block-samples", "2"]
    argv += ["--judge-samples", "3", "--ar-judge", str(ar), "--seq-len", "16", "--data-dir", str(DATA)]
    evaluate_cli(build_parser()[0].parse_args([*argv, "--out", str(out)]))
    result = json.loads(out.read_text())
    assert [r["block_size"] for r in result["block_curve"]] == [4, 16]
    for r in result["block_curve"]:
        s = r["samples"]
        assert s["samples"] == 3 and 0.0 <= s["known_word_share"] <= 1.0 and s["ar_judge_bits_per_byte"] > 0
    test = result["judged_test_sequences"]
    assert test["samples"] == 3 and test["offset"] == 0
    windows = load_dataset("shakespeare", DATA).test[:48].tolist()  # the first three 16-byte windows
    texts = [bytes(windows[i : i + 16]) for i in range(0, 48, 16)]
    assert test["ar_judge_bits_per_byte"] == pytest.approx(ar_judge_bits_per_byte(load_checkpoint(ar), texts))
    # the reference is the AR judge's exact NLL of the curve's rows, in bits per byte too
    assert result["block_curve_reference"]["sequences"] == 2


# ----- the judge's file -----------------------------------------------------------------------------


def small_judge(tmp_path: Path) -> tuple[DigitClassifier, Path]:
    torch.manual_seed(0)
    c = DigitClassifier(SMALL).eval()
    return c, save_judge(c, tmp_path / "judge.safetensors", {"test_accuracy": "0.5000", "command": "vssm judge-train"})


def rewrite(path: Path, out: Path, *, tensors=None, meta=None) -> Path:
    with safe_open(str(path), framework="pt") as f:
        t = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not iterable)
        m = dict(f.metadata())
    save_file(tensors(t) if tensors else t, str(out), metadata=meta(m) if meta else m)
    return out


def test_judge_roundtrip(tmp_path):
    c, path = small_judge(tmp_path)
    loaded = load_judge(path)
    assert loaded.config == SMALL and not loaded.training
    assert weights_fingerprint(loaded) == weights_fingerprint(c)
    x = (torch.rand(5, 784, generator=torch.Generator().manual_seed(1)) < 0.3).long()
    torch.testing.assert_close(loaded(x), c(x), rtol=0, atol=0)
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    assert meta["test_accuracy"] == "0.5000" and meta["command"] == "vssm judge-train"
    assert json.loads(meta["config"]) == {"channels1": 2, "channels2": 3, "hidden": 4, "dropout": 0.25}


def test_corrupted_weights_are_refused(tmp_path):
    _, path = small_judge(tmp_path)
    raw = bytearray(path.read_bytes())
    raw[-8] ^= 0xFF  # a flipped byte in the last tensor's data
    bad = tmp_path / "flipped.safetensors"
    bad.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match=r"differs from the recorded .*corrupt file"):
        load_judge(bad)
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        load_judge(cut)


@pytest.mark.parametrize(
    ("edit", "error"),
    [
        ({"meta": lambda m: {k: v for k, v in m.items() if k != "judge_format"}}, "no judge_format"),
        ({"meta": lambda m: {**m, "judge_format": "9"}}, "judge format 9 is newer"),
        ({"meta": lambda m: {**m, "config": "{"}}, "not JSON"),
        ({"meta": lambda m: {**m, "config": '{"depth": 3}'}}, "unknown field.*depth"),
        ({"meta": lambda m: {**m, "config": '{"hidden": 0}'}}, "hidden must be a positive integer"),
        ({"tensors": lambda t: {k: v for k, v in t.items() if k != "fc.bias"}}, "missing tensor.*fc.bias"),
        ({"tensors": lambda t: {**t, "extra": torch.zeros(1)}}, "unexpected tensor.*extra"),
        ({"tensors": lambda t: {**t, "out.bias": torch.zeros(9)}}, r"out.bias has shape \(9,\)"),
        ({"meta": lambda m: {**m, "fingerprint": "0" * 16}}, "differs from the recorded 0000"),
    ],
)
def test_every_bad_judge_file_is_refused_by_name(tmp_path, edit, error):
    _, path = small_judge(tmp_path)
    with pytest.raises(CheckpointError, match=error):
        load_judge(rewrite(path, tmp_path / "bad.safetensors", **edit))


def test_a_judge_is_not_a_model_and_a_model_is_not_a_judge(tmp_path):
    _, judge = small_judge(tmp_path)
    with pytest.raises(CheckpointError, match="no format_version"):
        load_checkpoint(judge)  # what `vssm serve` would say if a judge were put among the checkpoints
    model_path = save_checkpoint(tiny_model("ar-gru", dtype=torch.float32), tmp_path / "m.safetensors")
    with pytest.raises(CheckpointError, match="no judge_format"):
        load_judge(model_path)


def test_judge_train_is_a_subcommand():
    parser, _ = build_parser()
    args = parser.parse_args(["judge-train", "--out", "x.safetensors", "--epochs", "2", "--reference-samples", "0"])
    assert args.out == "x.safetensors" and args.epochs == 2 and args.reference_samples == 0
    assert args.func.__name__ == "_judge_train"


# ----- the bundled judge ----------------------------------------------------------------------------


def test_bundled_judge_matches_its_json():
    judge = load_judge(BUNDLED)
    result = json.loads(BUNDLED.with_suffix(".json").read_text())
    assert result["fingerprint"] == weights_fingerprint(judge) and result["test_accuracy"] >= 0.98
    assert BUNDLED.stat().st_size < 1024 * 1024
    assert {"test_images", "models"} <= set(result["reference"])
    assert "mnist-judge" not in result["reference"]["models"]


@needs_data
def test_bundled_judge_classifies_real_test_images():
    images = load_dataset("mnist", DATA, limit=100).test  # (100, 784)
    labels = _labels(DATA)[1][:100]
    judge = load_judge(BUNDLED)
    with torch.no_grad():
        predicted = judge(images).argmax(-1)
    assert int((predicted == labels).sum()) >= 98
    assert torch.equal(predicted[:10], labels[:10])
    m = image_metrics(judge, images)
    assert m["confident_share"] > 0.85 and m["class_entropy_nats"] > 2.1 and 0.08 < m["ink_fraction"] < 0.2
