"""Pixel orders (model/modality.py): the coarse-to-fine order is a bijection, recorded, trained on
and undone wherever tokens become pictures."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tests.conftest import tiny_model
from tests.test_data import DATA, needs_data
from vssm.model import load_checkpoint
from vssm.model.modality import PHASES, Modality, of_dataset

POLY = Modality("image", shape=(28, 28), order="polyphase4")


def test_polyphase_is_a_bijection_coarse_to_fine():
    perm = POLY.permutation()
    assert sorted(perm.tolist()) == list(range(784))
    rows, cols = perm // 28, perm % 28
    # the first 49 tokens are the stride-4 grid, raster over it; the first 196 the stride-2 grid
    assert (rows[:49] % 4 == 0).all() and (cols[:49] % 4 == 0).all()
    assert perm[:8].tolist() == [0, 4, 8, 12, 16, 20, 24, 112]
    assert (rows[:196] % 2 == 0).all() and (cols[:196] % 2 == 0).all()
    assert not ((rows[196:] % 2 == 0) & (cols[196:] % 2 == 0)).any()
    # every phase is one 7 x 7 sub-grid at its offset
    for k, (a, b) in enumerate(PHASES):
        assert set(zip(rows[49 * k : 49 * (k + 1)].tolist(), cols[49 * k : 49 * (k + 1)].tolist(), strict=True)) == {
            (a + 4 * i, b + 4 * j) for i in range(7) for j in range(7)
        }
    assert len(set(PHASES)) == 16


def test_orders_convert_both_ways():
    x = torch.randint(0, 2, (3, 5, 784))
    assert torch.equal(POLY.to_raster(POLY.to_model(x)), x)
    assert torch.equal(POLY.to_model(POLY.to_raster(x)), x)
    assert torch.equal(POLY.to_model(x)[..., 1], x[..., 4])  # token 1 is pixel (0, 4)
    raster = of_dataset("mnist")
    assert raster.permutation() is None and raster.to_model(x) is x and raster.to_raster(x) is x


def test_orders_in_json_and_refused_where_they_do_not_fit():
    assert Modality.from_json(POLY.to_json()) == POLY
    assert json.loads(POLY.to_json())["order"] == "polyphase4"
    # raster checkpoints keep the metadata they always had, and old metadata reads as raster
    assert "order" not in of_dataset("mnist").to_json()
    assert Modality.from_json('{"kind": "image", "shape": [28, 28]}').order == "raster"
    with pytest.raises(ValueError, match="pixel order must be one of"):
        Modality("image", shape=(28, 28), order="spiral")
    with pytest.raises(ValueError, match="multiples of 4"):
        Modality("image", shape=(30, 30), order="polyphase4")
    with pytest.raises(ValueError, match="one-channel image"):
        of_dataset("shakespeare").with_order("polyphase4")
    with pytest.raises(ValueError, match="one-channel image"):
        of_dataset("cifar10").with_order("polyphase4")


def test_pictures_are_drawn_in_raster_order():
    from vssm.model.render import _to_pixels, image_grid, sample_images

    m = tiny_model("ar-ssm", dtype=torch.float32)
    m.modality = POLY
    real = torch.randint(0, 2, (2, 784))
    grid, seqs = sample_images(m, (28, 28), 2, seed=0, temperature=1.0)
    assert seqs.shape == (2, 784)
    m.modality = of_dataset("mnist")
    raster_grid, raster_seqs = sample_images(m, (28, 28), 2, seed=0, temperature=1.0)
    assert torch.equal(seqs, raster_seqs)  # the same tokens: only the picture is reordered
    assert not np.array_equal(np.asarray(grid), np.asarray(raster_grid))
    # the polyphase picture of the tokens is the raster picture of to_raster(tokens)
    want = image_grid(_to_pixels(POLY.to_raster(seqs), (28, 28), m.vocab_size), cols=2)
    assert np.array_equal(np.asarray(grid), np.asarray(want))
    m.modality = POLY
    # prompted: the prompt is the coarsest phases of the real image, taken in the model's order
    _, completed = sample_images(m, (28, 28), 2, seed=0, temperature=1.0, real=real, prompt_rows=7)
    assert torch.equal(completed[:, :196], POLY.to_model(real)[:, :196])


@needs_data
def test_training_reads_the_pixels_in_the_recorded_order(tmp_path):
    from vssm.model.data import load_dataset
    from vssm.model.train import TrainConfig, train, validate

    ds = load_dataset("mnist", DATA, limit=64)
    cfg = TrainConfig(
        dataset="mnist",
        family="ar-ssm",
        size="tiny",
        out=str(tmp_path / "run"),
        max_steps=1,
        batch_size=4,
        val_every=1,
        val_sequences=4,
        threads=1,
        pixel_order="polyphase4",
    )
    path = train(cfg, ds)
    m = load_checkpoint(path)
    assert m.modality == POLY
    record = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    m = m.double()
    valid = ds.valid[:4]
    assert validate(m, POLY.to_model(valid), 4)["nll"] == pytest.approx(record["val_nll"], rel=1e-4)
    assert validate(m, valid, 4)["nll"] != pytest.approx(record["val_nll"], rel=1e-4)
