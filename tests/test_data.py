"""Data loaders on small slices of the real files (``../shared/data``), and their failure modes."""

from __future__ import annotations

import gzip
import io
from pathlib import Path

import numpy as np
import pytest
import torch

from vssm.model import data
from vssm.model.data import DataError, batches, eval_sequences, load_dataset

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"offline datasets not found at {DATA}")


@needs_data
def test_mnist_is_binarised_raster_order():
    ds = load_dataset("mnist", DATA, limit=240)
    assert ds.vocab_size == 2 and ds.max_position == 784 and ds.image_shape == (28, 28)
    assert ds.train.shape == (220, 784) and ds.valid.shape == (20, 784) and ds.test.shape == (240, 784)
    with gzip.open(DATA / "mnist" / "t10k-images-idx3-ubyte.gz") as f:
        raw = np.frombuffer(f.read(), dtype=np.uint8, offset=16)[: 784 * 3].reshape(3, 784)
    assert torch.equal(ds.test[:3], torch.from_numpy((raw >= 128).astype(np.int64)))
    assert set(ds.test.unique().tolist()) == {0, 1}


@pytest.mark.slow
@needs_data
def test_full_mnist_sizes():
    ds = load_dataset("mnist", DATA)
    assert len(ds.train) + len(ds.valid) == 60_000 and len(ds.test) == 10_000


@needs_data
def test_shakespeare_bytes_and_held_out_tail():
    ds = load_dataset("shakespeare", DATA)
    text = (DATA / "tinyshakespeare" / "input.txt").read_bytes()
    assert ds.vocab_size == 256 and ds.max_position is None and ds.is_text
    assert len(ds.test) == len(text) // 10
    assert bytes(ds.test[:50].tolist()) == text[len(text) - len(text) // 10 :][:50]
    assert len(ds.train) + len(ds.valid) + len(ds.test) == len(text)
    windows = eval_sequences(ds.test, 256)
    assert windows.shape == (len(ds.test) // 256, 256)
    b = batches(ds.train, 4, 32, torch.Generator().manual_seed(0))
    assert b.shape == (4, 32)


@needs_data
def test_cifar_subset_raster_order():
    ds = load_dataset("cifar10", DATA, limit=50)
    assert ds.train.shape[1] == 3072 and ds.vocab_size == 256


def test_missing_files_say_what_to_do(tmp_path):
    with pytest.raises(DataError, match="--data-dir"):
        load_dataset("mnist", tmp_path)


def test_unknown_dataset(tmp_path):
    with pytest.raises(DataError, match="unknown dataset"):
        load_dataset("imagenet", tmp_path)


def test_download_offline_is_a_clear_error(tmp_path, monkeypatch):
    def offline(*a, **k):
        raise OSError("Network is unreachable")

    monkeypatch.setattr(data.urllib.request, "urlopen", offline)
    with pytest.raises(DataError, match="offline"):
        load_dataset("shakespeare", tmp_path, download=True)


def test_download_with_a_wrong_checksum_is_rejected(tmp_path, monkeypatch):
    class Response(io.BytesIO):
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(data.urllib.request, "urlopen", lambda url, timeout: Response(b"not shakespeare"))
    with pytest.raises(DataError, match="SHA-256"):
        load_dataset("shakespeare", tmp_path, download=True)
    assert not (tmp_path / "tinyshakespeare" / "input.txt").exists()


def test_idx_reader_rejects_other_files(tmp_path):
    bad = tmp_path / "x.idx"
    bad.write_bytes(b"\x00\x00\x0d\x01\x00\x00\x00\x01\x00")
    with pytest.raises(DataError, match="IDX"):
        data._read_idx(bad)
