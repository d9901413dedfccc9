"""What a model's tokens are: image pixels of a given shape, text bytes, or plain token ids.

Recorded in a checkpoint's metadata (``modality``, JSON) by ``vssm train`` and read by everything
that must turn tokens into something else: the server (text in and out, or token lists), ``vssm
sample`` (a PNG grid or a text file) and the model card.  Checkpoints saved before the field
existed get it derived once, in the loader, from the dataset they record (:func:`of_dataset`).

An image's pixels are a model's tokens in raster order, or in another named order (``order``):
``"polyphase4"`` is coarse to fine, the 16 phases of the 4 x 4 polyphase split of the image, each
phase a raster over its sub-grid, the stride-4 grid first, then the stride-2 additions, then the
rest (``PHASES``).  A block of a phase's size is then one sub-grid of pixels 4 apart, drawn given
every coarser phase: pixels that depend little on each other once those are known, which is what
block sampling assumes within a block (docs/design.md, "Blocks").  Tokens cross the API in the
model's order; :meth:`Modality.to_raster` and :meth:`Modality.to_model` convert.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["KINDS", "ORDERS", "PHASES", "Modality", "of_dataset"]

KINDS = ("image", "text", "tokens")
ORDERS = ("raster", "polyphase2", "polyphase4")
# (row, column) offsets of the 4 x 4 polyphase split, coarse to fine: the stride-4 grid, the stride-2
# additions (the centres first), then the stride-1 additions (the centres first, then the edges)
PHASES = (
    (0, 0),
    (2, 2), (0, 2), (2, 0),
    (1, 1), (1, 3), (3, 1), (3, 3),
    (0, 1), (0, 3), (2, 1), (2, 3), (1, 0), (1, 2), (3, 0), (3, 2),
)  # fmt: skip
PHASES_2 = ((0, 0), (1, 1), (0, 1), (1, 0))  # "polyphase2": the 2 x 2 split, the same way round


@dataclass(frozen=True)
class Modality:
    kind: str  # "image": pixels in ``order``; "text": bytes of encoded text; "tokens": ids with no reading
    shape: tuple[int, ...] | None = None  # image: (rows, columns[, channels]); one token per pixel value
    encoding: str | None = None  # text: the encoding of the byte stream, one token per byte ("utf-8")
    order: str = "raster"  # image: the order of the pixels in the token sequence (ORDERS)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"modality kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if (self.kind == "image") != (self.shape is not None):
            raise ValueError("an image modality needs a shape, and only an image has one")
        if self.shape is not None and not all(isinstance(d, int) and d > 0 for d in self.shape):
            raise ValueError(f"image shape must be positive integers, got {self.shape!r}")
        if (self.kind == "text") != (self.encoding is not None):
            raise ValueError("a text modality needs an encoding, and only text has one")
        if self.order not in ORDERS:
            raise ValueError(f"pixel order must be one of {', '.join(ORDERS)}, got {self.order!r}")
        if self.order != "raster" and (
            self.shape is None or len(self.shape) != 2 or self.shape[0] % 4 or self.shape[1] % 4
        ):
            raise ValueError(f"{self.order} needs a one-channel image whose sides are multiples of 4")

    @property
    def is_text(self) -> bool:
        return self.kind == "text"

    def permutation(self) -> Tensor | None:
        """``perm`` (T,): the model's token k is raster pixel ``perm[k]``; None for raster order."""
        if self.order == "raster":
            return None
        assert self.shape is not None
        rows, cols = self.shape
        raster = torch.arange(rows * cols).view(rows, cols)
        stride, phases = (4, PHASES) if self.order == "polyphase4" else (2, PHASES_2)
        return torch.cat([raster[a::stride, b::stride].flatten() for a, b in phases])  # (T,)

    def to_model(self, x: Tensor) -> Tensor:
        """(..., T) tokens in raster order -> the model's order."""
        perm = self.permutation()
        return x if perm is None else x[..., perm.to(x.device)]

    def to_raster(self, x: Tensor) -> Tensor:
        """(..., T) tokens in the model's order -> raster order."""
        perm = self.permutation()
        return x if perm is None else x[..., torch.argsort(perm).to(x.device)]

    def with_order(self, order: str) -> Modality:
        return Modality(self.kind, self.shape, self.encoding, order)

    def to_json(self) -> str:
        d: dict[str, object] = {"kind": self.kind}
        if self.shape is not None:
            d["shape"] = list(self.shape)
        if self.encoding is not None:
            d["encoding"] = self.encoding
        if self.order != "raster":  # raster checkpoints keep the metadata they always had
            d["order"] = self.order
        return json.dumps(d, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Modality:
        """ValueError when ``text`` is not a modality's JSON."""
        try:
            d = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"modality is not JSON ({exc})") from exc
        if not isinstance(d, dict) or set(d) - {"kind", "shape", "encoding", "order"}:
            raise ValueError(f"modality must be an object with kind, shape, encoding, order; got {text!r}")
        shape = d.get("shape")
        return cls(
            d.get("kind", ""),
            tuple(shape) if isinstance(shape, list) else shape,
            d.get("encoding"),
            d.get("order", "raster"),
        )


# What each dataset's tokens are (model/data.py): the loader's answer for checkpoints that predate
# the metadata field, and the trainer's for new ones.
_DATASETS = {
    "mnist": Modality("image", shape=(28, 28)),
    "mnist8": Modality("image", shape=(28, 28)),
    "cifar10": Modality("image", shape=(32, 32, 3)),
    "shakespeare": Modality("text", encoding="utf-8"),
}


def of_dataset(name: str | None) -> Modality:
    """The modality of a dataset's tokens; plain tokens for an unknown or missing dataset."""
    return _DATASETS.get(name or "", Modality("tokens"))
