"""Datasets read from a directory: binarised MNIST (IDX), tiny Shakespeare bytes, CIFAR-10 subset.

Glossary of axis letters:
    S  sequences in a split      T  sequence length (784 for MNIST, a window for text)

Loaders never reach the network unless asked (``download=True``); a download is verified
against the SHA-256 sums that ship with the data, and an offline machine gets a clear error.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import shutil
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

__all__ = ["DATASETS", "DataError", "Dataset", "default_data_dir", "load_dataset"]

log = logging.getLogger(__name__)

SHA256 = {
    "mnist/t10k-images-idx3-ubyte.gz": "167310007f03058885c7e95e6c0b19c20de5c7fd3031f4cbdadc9014a523d80b",
    "mnist/t10k-labels-idx1-ubyte.gz": "fc607395669ec21321ea83e4b82c0544b7e8e63ff5b34337c06bc0a17cc0da3c",
    "mnist/train-images-idx3-ubyte.gz": "db8f937d487057fb14a9f0fbe97f0bc8d311ab41b750d41e1ff37c43b9e55e19",
    "mnist/train-labels-idx1-ubyte.gz": "ec02e7948609e5754d47881c09b8afdd8dfa60600b9e5388c8c54a67069ec772",
    "tinyshakespeare/input.txt": "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
    "cifar10_subset/cifar10_subset.npz": "1835890e7b7bc5e23aef6a353cd5828ece20d8a98c1095ad55904b267bc85431",
}
MIRRORS = {
    "mnist/": [
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "https://storage.googleapis.com/cvdf-datasets/mnist/",
    ],
    "tinyshakespeare/": ["https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/"],
}


class DataError(RuntimeError):
    """Data files missing, corrupt or unobtainable."""


def default_data_dir() -> Path:
    """``$VSSM_DATA_DIR``, else ``../shared/data`` beside the project, else ``./data``."""
    if os.environ.get("VSSM_DATA_DIR"):
        return Path(os.environ["VSSM_DATA_DIR"])
    shared = Path(__file__).resolve().parents[2] / "shared" / "data"
    return shared if shared.is_dir() else Path("data")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fetch(root: Path, rel: str, download: bool = False) -> Path:
    """Path of ``root/rel``; if missing and ``download``, fetch it from a mirror and verify it."""
    path = root / rel
    if path.exists():
        return path
    if not download:
        raise DataError(f"{path} not found; point --data-dir / VSSM_DATA_DIR at the data, or pass --download")
    prefix = next((p for p in MIRRORS if rel.startswith(p)), None)
    if prefix is None:
        raise DataError(f"{path} not found and no public mirror is known for it")
    path.parent.mkdir(parents=True, exist_ok=True)
    errors = []
    for base in MIRRORS[prefix]:
        url = base + rel[len(prefix) :]
        tmp = path.with_suffix(path.suffix + ".part")
        try:
            log.info("downloading %s", url)
            with urllib.request.urlopen(url, timeout=30) as r, tmp.open("wb") as f:
                shutil.copyfileobj(r, f)
        except OSError as exc:
            errors.append(f"{url}: {exc}")
            continue
        digest = _sha256(tmp)
        if digest != SHA256[rel]:
            tmp.unlink()
            errors.append(f"{url}: SHA-256 {digest} != expected {SHA256[rel]}")
            continue
        tmp.replace(path)
        return path
    raise DataError(f"could not download {rel} (offline?): " + "; ".join(errors))


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    magic = int.from_bytes(raw[:4], "big")
    if magic >> 8 != 0x08:  # unsigned byte data
        raise DataError(f"{path}: not an IDX file of unsigned bytes (magic {magic:#x})")
    ndim = magic & 0xFF
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise DataError(f"{path}: truncated ({data.size} bytes for shape {shape})")
    return data.reshape(shape)


@dataclass
class Dataset:
    name: str  # dataset id, e.g. "mnist"
    vocab_size: int  # V
    max_position: int | None  # T of every sequence, or None for a stream of text
    train: Tensor  # (S, T) sequences, or (n,) a token stream
    valid: Tensor  # held out from train, for periodic validation
    test: Tensor  # the test split
    image_shape: tuple[int, ...] | None = None  # (28, 28) for MNIST: how to render a sequence

    @property
    def is_text(self) -> bool:
        return self.max_position is None


def _mnist(root: Path, download: bool, limit: int | None, bits: int) -> Dataset:
    def images(split: str) -> np.ndarray:
        return _read_idx(fetch(root, f"mnist/{split}-images-idx3-ubyte.gz", download))

    train, test = images("train"), images("t10k")
    if limit is not None:
        train, test = train[:limit], test[:limit]

    def seq(x: np.ndarray) -> Tensor:
        flat = torch.from_numpy(x.reshape(len(x), -1).astype(np.int64))
        return (flat >= 128).long() if bits == 1 else flat

    n_valid = max(1, len(train) // 12)  # the last 5,000 of 60,000
    name = "mnist" if bits == 1 else "mnist8"
    return Dataset(
        name,
        2 if bits == 1 else 256,
        784,
        seq(train[:-n_valid]),
        seq(train[-n_valid:]),
        seq(test),
        image_shape=(28, 28),
    )


def _shakespeare(root: Path, download: bool, limit: int | None) -> Dataset:
    data = torch.from_numpy(
        np.frombuffer(fetch(root, "tinyshakespeare/input.txt", download).read_bytes(), dtype=np.uint8).astype(np.int64)
    )
    n_test = len(data) // 10  # the last 10% held out
    train, test = data[:-n_test], data[-n_test:]
    n_valid = len(train) // 20
    train, valid = train[:-n_valid], train[-n_valid:]
    if limit is not None:
        train, valid, test = train[:limit], valid[:limit], test[:limit]
    return Dataset("shakespeare", 256, None, train, valid, test)


def _cifar(root: Path, download: bool, limit: int | None) -> Dataset:
    path = fetch(root, "cifar10_subset/cifar10_subset.npz", download=False)
    with np.load(path) as z:
        xtr, xte = z["x_train"], z["x_test"]
    if limit is not None:
        xtr, xte = xtr[:limit], xte[:limit]

    def seq(x: np.ndarray) -> Tensor:  # raster order over (row, column, channel)
        return torch.from_numpy(x.reshape(len(x), -1).astype(np.int64))

    n_valid = max(1, len(xtr) // 10)
    return Dataset(
        "cifar10", 256, 32 * 32 * 3, seq(xtr[:-n_valid]), seq(xtr[-n_valid:]), seq(xte), image_shape=(32, 32, 3)
    )


DATASETS = ("mnist", "mnist8", "shakespeare", "cifar10")


def load_dataset(
    name: str, root: str | Path | None = None, download: bool = False, limit: int | None = None
) -> Dataset:
    """Load ``name`` from ``root`` (default :func:`default_data_dir`); ``limit`` keeps a prefix (tests)."""
    root = Path(root) if root is not None else default_data_dir()
    if name == "mnist":
        return _mnist(root, download, limit, bits=1)
    if name == "mnist8":
        return _mnist(root, download, limit, bits=8)
    if name == "shakespeare":
        return _shakespeare(root, download, limit)
    if name == "cifar10":
        return _cifar(root, download, limit)
    raise DataError(f"unknown dataset {name!r} (known: {', '.join(DATASETS)})")


def batches(ds_split: Tensor, batch_size: int, seq_len: int, generator: torch.Generator) -> Tensor:
    """One random training batch ``(B, T)``: rows of a sequence split, or windows of a stream."""
    if ds_split.ndim == 2:
        idx = torch.randint(0, ds_split.shape[0], (batch_size,), generator=generator)
        return ds_split[idx]
    start = torch.randint(0, len(ds_split) - seq_len, (batch_size,), generator=generator)
    return torch.stack([ds_split[s : s + seq_len] for s in start.tolist()])


def eval_sequences(split: Tensor, seq_len: int) -> Tensor:
    """Evaluation rows ``(S, T)``: the split itself, or a stream cut into non-overlapping windows."""
    if split.ndim == 2:
        return split
    n = len(split) // seq_len
    return split[: n * seq_len].view(n, seq_len)
