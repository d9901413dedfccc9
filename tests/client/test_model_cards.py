"""The SDK reads the model card and modality fields of ``GET /v1/models/{id}``, and servers without them."""

from __future__ import annotations

from vssm_client import Model


def test_model_reads_card_and_modality_and_tolerates_their_absence():
    body = {
        "id": "mnist-vssm-blocks",
        "modality": {"kind": "image", "shape": [28, 28], "encoding": None},
        "card": {
            "summary": "VSSM for binarised MNIST",
            "intended_use": "digits",
            "data": "Binarised MNIST",
            "training": {"preset": "mnist-vssm-blocks", "steps": 2500},
            "default_block_size": 28,
            "metrics": [{"name": "block_28_nll", "value": 82.6, "unit": "nats per sequence", "note": "IW-8"}],
            "limitations": ["small"],
        },
    }
    m = Model.model_validate(body)
    assert m.modality.kind == "image" and m.modality.shape == [28, 28]
    assert m.card.training["preset"] == "mnist-vssm-blocks" and m.card.metrics[0].value == 82.6
    old = Model.model_validate({"id": "x"})
    assert old.modality is None and old.card is None
