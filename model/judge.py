"""Sample-quality judges, measured not eyeballed: a digit classifier, an autoregressive judge, word shares.

Glossary of axis letters:
    N  images or sequences judged      T  tokens per sequence (784 for MNIST, any for text)
    R, W  image rows, columns (28, 28)      C  channels of a convolution      K  classes (10 digits)

MNIST samples are judged three ways: :func:`image_metrics` (how many a digit classifier trained on
the training split calls a digit with probability >= 0.9, how evenly the digits spread, how much
ink), and :func:`ar_judge_nll` (the NLL an autoregressive checkpoint gives them, beside the NLL it
gives test images).  Text samples: :func:`text_metrics` (the share of words found in the training
text) and :func:`ar_judge_bits_per_byte`.

``vssm judge-train`` trains the classifier (:func:`judge_train`), writes it as safetensors with
its config, test accuracy, command and weights' fingerprint in the metadata (:func:`save_judge`,
:func:`load_judge`; never pickled), and writes the reference figures beside it as JSON.

Why the classifier sees non-digits in training: a plain classifier's max probability only says
which class an image is closest to.  The same network trained on digits alone (``--salt 0
--outlier-weight 0``, test accuracy 98.9%) was sure (probability >= 0.9) of 95% of blobs of
independent pixels (each on with the test images' mean there), nearly all one digit, and of 14%
of uniform pixel noise, and of 62% of the bundled split VSSM's speckled blobs against 79% of the
AR-SSM's clean digits.  With outlier exposure (Hendrycks et al., 2019: the loss also pulls
shuffled-patch digits, pixel noise and independent-pixel blobs towards the uniform distribution)
and stray pixels added to the training digits, the bundled judge is sure of 0% of noise and blobs
and of 9% of the split VSSM's samples, against 80% of the AR-SSM's and 94.5% of test images; test
digits with 2.5% of their background set or 10% of the pixels around their strokes flipped stay
at 92% and 84% (the JSON's ``probes``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import platform
import re
import shlex
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .autoregressive import ARModel
from .base import SequenceModel, weights_hash
from .checkpoint import CheckpointError, load_checkpoint, read_metadata, read_tensors, write_safetensors
from .data import load_dataset

__all__ = [
    "CONFIDENCE",
    "JUDGE_FORMAT",
    "DigitClassifier",
    "JudgeConfig",
    "JudgeTrainConfig",
    "accuracy",
    "ar_judge_bits_per_byte",
    "ar_judge_nll",
    "image_metrics",
    "judge_train",
    "load_judge",
    "probe_figures",
    "sample_sequences",
    "save_judge",
    "text_metrics",
    "training_vocabulary",
    "weights_fingerprint",
    "words",
]

log = logging.getLogger(__name__)

JUDGE_FORMAT = 1  # version of the judge file's layout (metadata key "judge_format")
CONFIDENCE = 0.9  # a sample is "confidently a digit" when the classifier's max probability reaches this
SIDE = 28  # MNIST images are SIDE x SIDE, raster order
CLASSES = 10


@dataclass(frozen=True)
class JudgeConfig:
    channels1: int = 16  # channels of the first 3x3 convolution (28x28, then max-pooled to 14x14)
    channels2: int = 32  # channels of the second 3x3 convolution (14x14, then max-pooled to 7x7)
    hidden: int = 64  # width of the fully connected layer before the 10 logits
    dropout: float = 0.25  # dropout before the last layer, in training only

    def __post_init__(self) -> None:
        for name in ("channels1", "channels2", "hidden"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not isinstance(self.dropout, (int, float)) or not 0.0 <= float(self.dropout) < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {self.dropout!r}")


class DigitClassifier(nn.Module):
    """A small CNN over binarised 28x28 MNIST: tokens ``(N, 784)`` of 0/1 -> logits ``(N, 10)``."""

    def __init__(self, config: JudgeConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or JudgeConfig()
        self.conv1 = nn.Conv2d(1, config.channels1, 3, padding=1)
        self.conv2 = nn.Conv2d(config.channels1, config.channels2, 3, padding=1)
        self.fc = nn.Linear(config.channels2 * (SIDE // 4) ** 2, config.hidden)
        self.drop = nn.Dropout(config.dropout)
        self.out = nn.Linear(config.hidden, CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(N, K)`` of images ``(N, T)`` (tokens, T = 784) or ``(N, 1, R, W)``."""
        h = x.to(self.conv1.weight.dtype).reshape(-1, 1, SIDE, SIDE)  # (N, 1, R, W)
        h = F.max_pool2d(F.relu(self.conv1(h)), 2)  # (N, C1, R/2, W/2)
        h = F.max_pool2d(F.relu(self.conv2(h)), 2)  # (N, C2, R/4, W/4)
        h = F.relu(self.fc(h.flatten(1)))  # (N, hidden)
        return self.out(self.drop(h))  # (N, K)


# ----- image metrics --------------------------------------------------------------------------------


@torch.no_grad()
def _probabilities(classifier: Callable[[Tensor], Tensor], images: Tensor, batch_size: int) -> Tensor:
    """Class probabilities ``(N, K)`` from a classifier returning logits, in eval mode, batched."""
    was_training = isinstance(classifier, nn.Module) and classifier.training
    if isinstance(classifier, nn.Module):
        classifier.eval()  # dropout off: a judge must give the same verdict twice
    try:
        param = next(iter(classifier.parameters()), None) if isinstance(classifier, nn.Module) else None
        device = param.device if param is not None else images.device
        parts = [
            torch.softmax(classifier(images[i : i + batch_size].to(device)).float(), -1).cpu()
            for i in range(0, len(images), batch_size)
        ]
    finally:
        if was_training:
            classifier.train()
    return torch.cat(parts) if parts else torch.zeros(0, CLASSES)


def _check_images(images: Tensor) -> Tensor:
    images = torch.as_tensor(images)
    if images.ndim != 2 or images.shape[1] != SIDE * SIDE:
        raise ValueError(f"images must be (N, {SIDE * SIDE}) tokens, got shape {tuple(images.shape)}")
    if images.numel() and not bool(((images == 0) | (images == 1)).all()):
        raise ValueError("images must be binarised: every token 0 or 1")
    return images


def histogram_entropy(counts: Tensor) -> float:
    """Entropy in nats of a histogram of counts ``(K,)``; 0 log 0 = 0, an empty histogram has 0."""
    total = float(counts.sum())
    if total == 0:
        return 0.0
    p = counts.double() / total
    p = p[p > 0]
    return float(-(p * p.log()).sum())


def image_metrics(
    classifier: Callable[[Tensor], Tensor], images: Tensor, batch_size: int = 500, threshold: float = CONFIDENCE
) -> dict[str, Any]:
    """How digit-like a batch of binarised images ``(N, 784)`` is, by a classifier returning logits.

    ``confident_share``: share of images whose max class probability is >= ``threshold``;
    ``class_entropy_nats``: entropy of the histogram of predicted classes (argmax; log 10 = 2.303
    when every digit is equally frequent, 0 when all are one digit); ``ink_fraction``: mean share
    of 1 pixels (test images: about 0.13); ``class_histogram``: predicted-class counts, digit 0 first.
    """
    images = _check_images(images)
    probs = _probabilities(classifier, images, batch_size)  # (N, K)
    if probs.ndim != 2 or probs.shape != (len(images), CLASSES):
        raise ValueError(f"the classifier must return logits (N, {CLASSES}), got {tuple(probs.shape)}")
    top, predicted = probs.max(-1) if len(probs) else (torch.zeros(0), torch.zeros(0, dtype=torch.long))
    counts = torch.bincount(predicted, minlength=CLASSES)  # (K,)
    n = len(images)
    return {
        "images": n,
        "confident_share": float((top >= threshold).float().mean()) if n else 0.0,
        "confidence_threshold": threshold,
        "mean_max_probability": float(top.mean()) if n else 0.0,
        "class_entropy_nats": histogram_entropy(counts),
        "ink_fraction": float(images.float().mean()) if n else 0.0,
        "class_histogram": counts.tolist(),
    }


def accuracy(classifier: Callable[[Tensor], Tensor], images: Tensor, labels: Tensor, batch_size: int = 500) -> float:
    """Share of ``images`` ``(N, 784)`` whose predicted class equals ``labels`` ``(N,)``."""
    probs = _probabilities(classifier, _check_images(images), batch_size)
    return float((probs.argmax(-1) == labels.cpu()).float().mean())


# ----- the autoregressive judge ---------------------------------------------------------------------


def ar_judge_nll(ar_model: SequenceModel, sequences: Tensor, batch_size: int = 100) -> float:
    """Mean NLL in nats per sequence that an autoregressive model gives ``sequences`` ``(N, T)`` (exact)."""
    if not isinstance(ar_model, ARModel):
        raise TypeError(f"the AR judge must be an autoregressive model, got family {ar_model.family!r}")
    if sequences.ndim != 2 or len(sequences) == 0:
        raise ValueError(f"sequences must be a non-empty (N, T), got shape {tuple(sequences.shape)}")
    total = 0.0
    for i in range(0, len(sequences), batch_size):
        total += float(ar_model.nll(sequences[i : i + batch_size].to(ar_model.device)).double().sum())
    return total / len(sequences)


def ar_judge_bits_per_byte(ar_model: SequenceModel, samples: list[bytes], batch_size: int = 100) -> float:
    """Bits per byte that an autoregressive text model gives ``samples`` (any lengths; empty ones skipped)."""
    by_length: dict[int, list[bytes]] = {}
    for s in samples:
        if s:
            by_length.setdefault(len(s), []).append(s)
    if not by_length:
        raise ValueError("no non-empty samples to judge")
    nats = 0.0
    for group in by_length.values():
        x = torch.tensor([list(s) for s in group], dtype=torch.long)  # (N, T)
        nats += ar_judge_nll(ar_model, x, batch_size) * len(group)
    n_bytes = sum(length * len(group) for length, group in by_length.items())
    return nats / n_bytes / math.log(2)


# ----- text -----------------------------------------------------------------------------------------

_WORD = re.compile(r"[^\W\d_]+")  # runs of letters: whitespace, punctuation, digits and _ split words


def words(text: bytes | str) -> list[str]:
    """Lowercased words of ``text`` (bytes are read as UTF-8, bad bytes split words): ``"O'er!"`` -> o, er."""
    if isinstance(text, (bytes, bytearray)):
        text = bytes(text).decode("utf-8", errors="replace")
    return _WORD.findall(text.lower())


def training_vocabulary(data_dir: str | Path | None = None) -> set[str]:
    """Every word of tiny Shakespeare's training split (``load_dataset``'s ``train``: the models' bytes)."""
    ds = load_dataset("shakespeare", data_dir)
    return set(words(ds.train.to(torch.uint8).numpy().tobytes()))


def text_metrics(samples: Iterable[bytes], vocabulary: set[str]) -> dict[str, Any]:
    """``known_word_share``: share of the samples' words (see :func:`words`) found in ``vocabulary``.

    Counted over all words of all samples; 0.0 when the samples hold no word at all.
    """
    samples = list(samples)
    found = [w in vocabulary for s in samples for w in words(s)]
    return {
        "samples": len(samples),
        "words": len(found),
        "known_word_share": sum(found) / len(found) if found else 0.0,
    }


# ----- sampling the models to judge -----------------------------------------------------------------


def sample_sequences(
    model: SequenceModel,
    n: int,
    length: int | None = None,
    seed: int = 0,
    temperature: float = 1.0,
    block_size: int | None = None,
    batch_size: int = 100,
    observation_temperature: float | None = None,
) -> Tensor:
    """``n`` unprompted samples ``(n, length)`` with seeds ``seed .. seed + n - 1`` (the same whatever
    the batch); ``block_size`` and ``observation_temperature``: None for the model's own settings."""
    length = length or model.max_position
    if not length:
        raise ValueError("give a length for a model without a maximum position")
    parts = []
    for i in range(0, n, batch_size):
        rows = min(batch_size, n - i)
        state = model.start(torch.zeros(rows, 0, dtype=torch.long), list(range(seed + i, seed + i + rows)))
        tokens, _ = model.generate(
            state,
            length,
            temperature=temperature,
            resumable=False,
            block_size=block_size,
            observation_temperature=observation_temperature,
        )
        parts.append(tokens.cpu())
    return torch.cat(parts)


# ----- the judge's file -----------------------------------------------------------------------------


def weights_fingerprint(module: nn.Module) -> str:
    """SHA-256 (hex, 16 chars) of the weights, as the models' fingerprint (``model.base.weights_hash``)."""
    return weights_hash(module)


def save_judge(classifier: DigitClassifier, path: str | Path, extra: dict[str, str] | None = None) -> Path:
    """Write ``classifier`` to ``path`` (safetensors; ``extra`` adds string metadata), atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in classifier.state_dict().items()}
    meta = {
        "judge_format": str(JUDGE_FORMAT),
        "kind": "mnist-digit-classifier",
        "config": json.dumps(dataclasses.asdict(classifier.config), sort_keys=True),
        "fingerprint": weights_fingerprint(classifier),
        **(extra or {}),
    }
    return write_safetensors(tensors, meta, path)


def load_judge(path: str | Path, device: str | torch.device = "cpu") -> DigitClassifier:
    """Load and validate a judge file; every way it can be wrong is a :class:`CheckpointError` naming it."""
    path = Path(path)
    meta = read_metadata(path)  # CheckpointError when the file is not readable safetensors
    version = meta.get("judge_format")
    if version is None or not version.isdigit():
        raise CheckpointError(f"{path}: no judge_format in the metadata; not a judge written by `vssm judge-train`")
    if int(version) > JUDGE_FORMAT:
        raise CheckpointError(f"{path}: judge format {version} is newer than this code supports ({JUDGE_FORMAT})")
    try:
        raw = json.loads(meta.get("config", ""))
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: bad config: metadata 'config' is not JSON ({exc})") from exc
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path}: bad config: expected a JSON object")
    unknown = sorted(set(raw) - {f.name for f in dataclasses.fields(JudgeConfig)})
    if unknown:
        raise CheckpointError(f"{path}: bad config: unknown field(s) {', '.join(unknown)}")
    try:
        classifier = DigitClassifier(JudgeConfig(**raw))
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: bad config: {exc}") from exc
    tensors = read_tensors(path, classifier.state_dict())
    classifier.to(next(iter(tensors.values())).dtype).load_state_dict(tensors, strict=True)
    recorded, actual = meta.get("fingerprint"), weights_fingerprint(classifier)
    if recorded != actual:
        raise CheckpointError(f"{path}: weights hash {actual} differs from the recorded {recorded}: corrupt file")
    log.info("loaded judge %s (test accuracy %s) from %s", actual, meta.get("test_accuracy", "?"), path)
    return classifier.to(device).eval()


# ----- vssm judge-train -----------------------------------------------------------------------------


@dataclass
class JudgeTrainConfig:
    out: str = "checkpoints/judges/mnist-judge.safetensors"  # judge weights; the reference JSON goes beside (.json)
    data_dir: str | None = None  # dataset directory (default: $VSSM_DATA_DIR or ../shared/data)
    epochs: int = 6  # passes over the training images, at most
    patience: int = 2  # stop after this many epochs without a better held-out accuracy
    budget_minutes: float = 4.0  # stop training after this much wall-clock (0: no time limit)
    batch_size: int = 128  # images per step
    lr: float = 2e-3  # peak Adam learning rate (cosine decay to 5% over the planned steps)
    shift: int = 2  # training images are translated by up to this many pixels each way (0: no augmentation)
    salt: float = 0.02  # training digits get stray pixels: background pixels on at a rate in 0..salt per image
    outlier_weight: float = 0.5  # outlier exposure: weight of the loss pulling non-digits to uniform (0: off)
    outlier_share: float = 0.5  # outliers per step, as a share of the digits per step
    seed: int = 0  # weights and data order
    threads: int = 1  # torch threads (the machine is shared with training runs)
    min_accuracy: float = 0.98  # refuse to write a judge whose test accuracy is below this
    checkpoints: str = "checkpoints"  # directory whose mnist-*.safetensors are judged for the reference figures
    ar_judge: str = "checkpoints/mnist-ar-ssm.safetensors"  # autoregressive judge of the reference figures
    reference_samples: int = 1000  # test images and samples per checkpoint in the reference figures (0: none)


def _shifted(x: Tensor, shift: int, generator: torch.Generator) -> Tensor:
    """Images ``(N, R, W)`` each translated by a random whole number of pixels in ``-shift..shift`` (zero fill)."""
    if shift == 0:
        return x
    N = x.shape[0]
    padded = F.pad(x, (shift, shift, shift, shift))  # (N, R + 2s, W + 2s)
    dy, dx = torch.randint(0, 2 * shift + 1, (2, N), generator=generator)
    rows = (dy[:, None] + torch.arange(SIDE))[:, :, None]  # (N, R, 1)
    cols = (dx[:, None] + torch.arange(SIDE))[:, None, :]  # (N, 1, W)
    return padded[torch.arange(N)[:, None, None], rows, cols]


def _salted(x: Tensor, salt: float, generator: torch.Generator) -> Tensor:
    """Images ``(N, R, W)`` with stray pixels: each pixel on with a rate drawn from ``0..salt`` per image."""
    if salt <= 0:
        return x
    rate = torch.rand(x.shape[0], 1, 1, generator=generator) * salt
    return torch.maximum(x, (torch.rand(x.shape, generator=generator) < rate).to(x.dtype))


def _outliers(x: Tensor, mean_image: Tensor, generator: torch.Generator) -> Tensor:
    """Non-digits ``(N, R, W)`` made from a batch of digits ``x`` ``(N, R, W)``, a third of each kind.

    Outlier exposure (Hendrycks et al., 2019): the classifier learns to be unsure of them, so its
    max probability says "a digit" rather than "closer to one class than the others".  Kinds:
    the batch's digits with their 16 patches of 7x7 pixels shuffled (strokes, no digit); independent
    pixels, each on with one probability per image in 0.03..0.33; and independent pixels each on
    with the training images' mean at that pixel (a centred blob: what a model that knows only
    the pixel marginals draws).
    """
    N, k = x.shape[0], x.shape[0] // 3
    q = SIDE // 4
    patches = x[:k].reshape(k, 4, q, 4, q).transpose(2, 3).reshape(k, 16, q, q)  # (k, 16, q, q)
    order = torch.rand(k, 16, generator=generator).argsort(1)
    shuffled = patches[torch.arange(k)[:, None], order].reshape(k, 4, 4, q, q).transpose(2, 3).reshape(k, SIDE, SIDE)
    density = torch.rand(k, 1, 1, generator=generator) * 0.3 + 0.03
    noise = (torch.rand(k, SIDE, SIDE, generator=generator) < density).float()
    marginal = (torch.rand(N - 2 * k, SIDE, SIDE, generator=generator) < mean_image).float()
    return torch.cat([shuffled, noise, marginal])


def train_classifier(
    train: Tensor,
    valid: Tensor,
    train_labels: Tensor,
    valid_labels: Tensor,
    cfg: JudgeTrainConfig,
    config: JudgeConfig | None = None,
) -> tuple[DigitClassifier, dict[str, Any]]:
    """Train on ``train`` ``(N, 784)`` with early stopping on ``valid``; the best held-out weights, a record."""
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    classifier = DigitClassifier(config)
    opt = torch.optim.Adam(classifier.parameters(), lr=cfg.lr)
    steps_per_epoch = math.ceil(len(train) / cfg.batch_size)
    planned = cfg.epochs * steps_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(s, planned) / planned))
    )
    images = train.reshape(-1, SIDE, SIDE).float()  # (N, R, W)
    mean_image = images.mean(0)  # (R, W) share of training images with ink at each pixel
    best_acc, best_state, best_epoch, history = -1.0, None, 0, []
    t0, step = time.perf_counter(), 0
    budget = cfg.budget_minutes * 60 if cfg.budget_minutes > 0 else math.inf
    out_of_time = False
    for epoch in range(1, cfg.epochs + 1):
        classifier.train()
        order = torch.randperm(len(train), generator=gen)
        for i in range(0, len(train), cfg.batch_size):
            idx = order[i : i + cfg.batch_size]
            x = _shifted(images[idx], cfg.shift, gen)  # (B, R, W)
            loss = F.cross_entropy(classifier(_salted(x, cfg.salt, gen)), train_labels[idx])
            n_out = round(len(idx) * cfg.outlier_share)
            if cfg.outlier_weight > 0 and n_out > 0:  # cross-entropy of their predictions to the uniform distribution
                outliers = _outliers(x[:n_out], mean_image, gen)  # (n_out, R, W)
                loss = loss - cfg.outlier_weight * classifier(outliers).log_softmax(-1).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            if time.perf_counter() - t0 > budget:
                out_of_time = True
                break
        acc = accuracy(classifier, valid, valid_labels)
        history.append({"epoch": epoch, "steps": step, "valid_accuracy": acc, "seconds": time.perf_counter() - t0})
        log.info("epoch %d (%d steps, %.0f s): held-out accuracy %.4f", epoch, step, time.perf_counter() - t0, acc)
        if acc > best_acc:
            best_acc, best_epoch = acc, epoch
            best_state = {k: v.clone() for k, v in classifier.state_dict().items()}
        if out_of_time:
            log.info("training budget of %.1f minutes spent", cfg.budget_minutes)
            break
        if epoch - best_epoch >= cfg.patience:
            log.info("no better held-out accuracy for %d epochs: stopping", cfg.patience)
            break
    assert best_state is not None
    classifier.load_state_dict(best_state)
    record = {
        "train_images": len(train),
        "valid_images": len(valid),
        "steps": step,
        "best_epoch": best_epoch,
        "valid_accuracy": best_acc,
        "seconds": round(time.perf_counter() - t0, 1),
        "history": history,
    }
    return classifier.eval(), record


def _labels(data_dir: str | Path | None) -> tuple[Tensor, Tensor]:
    """MNIST training and test labels ``(60000,)``, ``(10000,)`` (``load_dataset`` reads only images)."""
    from .data import _read_idx, default_data_dir, fetch

    root = Path(data_dir) if data_dir is not None else default_data_dir()
    return tuple(  # type: ignore[return-value]
        torch.from_numpy(_read_idx(fetch(root, f"mnist/{split}-labels-idx1-ubyte.gz")).astype("int64"))
        for split in ("train", "t10k")
    )


def reference_figures(
    judge: DigitClassifier,
    test_images: Tensor,
    checkpoints: list[Path],
    ar_judge_path: Path,
    n: int,
) -> dict[str, Any]:
    """``image_metrics`` and AR-judge NLL of ``n`` test images and of ``n`` samples from each checkpoint."""
    ar = load_checkpoint(ar_judge_path)
    out: dict[str, Any] = {
        "samples": n,
        "temperature": 1.0,
        "seeds": f"0..{n - 1}",
        "ar_judge": {"checkpoint": str(ar_judge_path), "fingerprint": ar.fingerprint},
    }
    t0 = time.perf_counter()
    test = test_images[:n]
    test_nll = ar_judge_nll(ar, test)
    out["test_images"] = {
        "which": f"the first {len(test)} binarised test images",
        **image_metrics(judge, test),
        "ar_judge_nll": test_nll,
    }
    log.info("test images: %s (%.0f s)", _brief(out["test_images"]), time.perf_counter() - t0)
    out["probes"] = probe_figures(judge, test)
    log.info(
        "probes: %s",
        ", ".join(f"{k} {v['confident_share']:.3f}" for k, v in out["probes"].items() if isinstance(v, dict)),
    )
    models = {}
    for path in checkpoints:
        t0 = time.perf_counter()
        m = load_checkpoint(path)
        samples = sample_sequences(m, n, seed=0, temperature=1.0)
        gen_s = time.perf_counter() - t0
        nll = ar_judge_nll(ar, samples)
        models[path.stem] = {
            "checkpoint": str(path),
            "family": m.family,
            "fingerprint": m.fingerprint,
            "block_size": m.default_block_size,  # None: the model's one parallel pass (VSSM), token by token (AR)
            "observation_temperature": m.observation_temperature,  # tokens given latents (latent families)
            **image_metrics(judge, samples),
            "ar_judge_nll": nll,
            "ar_judge_nll_ratio": nll / test_nll,
            "sampling_seconds": round(gen_s, 1),
        }
        if m.observation_temperature != 1.0:  # served below 1: the same seeds from the model's own distribution
            own = sample_sequences(m, n, seed=0, temperature=1.0, observation_temperature=1.0)
            own_nll = ar_judge_nll(ar, own)
            models[path.stem]["observation_temperature_1"] = {
                **image_metrics(judge, own),
                "ar_judge_nll": own_nll,
                "ar_judge_nll_ratio": own_nll / test_nll,
            }
        log.info("%s: %s (%.0f s)", path.stem, _brief(models[path.stem]), time.perf_counter() - t0)
    out["models"] = models
    return out


def probe_figures(judge: Callable[[Tensor], Tensor], test_images: Tensor, seed: int = 0) -> dict[str, Any]:
    """``image_metrics`` of made-up images that say whether "confident" means "a digit".

    Non-digits that should score near 0: uniform pixel noise at the test images' ink fraction, and
    blobs of independent pixels (each on with the test images' mean there).  Test digits that
    should stay near the test images' score: with stray pixels (2.5% of the background set), and
    with 10% of the pixels around their strokes (the strokes dilated by one pixel) flipped.
    """
    images = _check_images(test_images)
    g = torch.Generator().manual_seed(seed)
    n = len(images)
    mean = images.float().mean(0)  # (T,)
    near = F.max_pool2d(images.float().reshape(n, 1, SIDE, SIDE), 3, 1, 1).reshape(n, -1).bool()  # (N, T)
    salted = images.clone()
    salted[(torch.rand(images.shape, generator=g) < 0.025) & ~near] = 1
    flipped = images.clone()
    flip = (torch.rand(images.shape, generator=g) < 0.1) & near
    flipped[flip] = 1 - flipped[flip]
    probes = {
        "pixel_noise": (torch.rand(images.shape, generator=g) < float(mean.mean())).long(),
        "independent_pixels": (torch.rand(images.shape, generator=g) < mean).long(),
        "test_with_stray_pixels": salted,
        "test_with_flipped_stroke_pixels": flipped,
    }
    return {"images": n, **{k: image_metrics(judge, v) for k, v in probes.items()}}


def _brief(m: dict[str, Any]) -> str:
    return (
        f"confident {m['confident_share']:.3f}, entropy {m['class_entropy_nats']:.3f} nats, "
        f"ink {m['ink_fraction']:.3f}, AR judge {m['ar_judge_nll']:.1f} nats"
    )


def judge_train(cfg: JudgeTrainConfig) -> dict[str, Any]:
    """``vssm judge-train``: train the digit classifier, write it and its reference figures (JSON)."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    t_start = time.perf_counter()
    out = Path(cfg.out)
    ds = load_dataset("mnist", cfg.data_dir)
    train_labels, test_labels = _labels(cfg.data_dir)
    n_train = len(ds.train)  # load_dataset holds out the last rows of the training file as ``valid``
    classifier, record = train_classifier(
        ds.train, ds.valid, train_labels[:n_train], train_labels[n_train : n_train + len(ds.valid)], cfg
    )
    test_acc = accuracy(classifier, ds.test, test_labels)
    log.info("test accuracy %.4f on %d binarised test images", test_acc, len(ds.test))
    if test_acc < cfg.min_accuracy:
        raise SystemExit(
            f"vssm judge-train: test accuracy {test_acc:.4f} < --min-accuracy {cfg.min_accuracy}; not written"
        )
    command = "vssm " + shlex.join(sys.argv[1:])
    save_judge(
        classifier,
        out,
        {
            "dataset": "mnist",
            "test_accuracy": f"{test_acc:.4f}",
            "valid_accuracy": f"{record['valid_accuracy']:.4f}",
            "train_seconds": str(record["seconds"]),
            "train_config": json.dumps(dataclasses.asdict(cfg), sort_keys=True),
            "command": command,
        },
    )
    log.info("wrote %s (%d bytes)", out, out.stat().st_size)
    result: dict[str, Any] = {
        "judge": str(out),
        "fingerprint": weights_fingerprint(classifier),
        "config": dataclasses.asdict(classifier.config),
        "parameters": sum(p.numel() for p in classifier.parameters()),
        "test_accuracy": test_acc,
        "test_images": len(ds.test),
        "training": record,
    }
    if cfg.reference_samples > 0:
        paths = sorted(
            p
            for p in Path(cfg.checkpoints).glob("mnist-*.safetensors")
            if p.resolve() != out.resolve() and read_metadata(p).get("dataset") == "mnist"
        )
        result["reference"] = reference_figures(classifier, ds.test, paths, Path(cfg.ar_judge), cfg.reference_samples)
    result["machine"] = {
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }
    result["command"] = command
    result["seconds"] = round(time.perf_counter() - t_start, 1)
    json_path = out.with_suffix(".json")
    tmp = json_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.replace(json_path)
    log.info("wrote %s (%.0f s in all)", json_path, result["seconds"])
    return result
