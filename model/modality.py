"""What a model's tokens are: image pixels of a given shape, text bytes, or plain token ids.

Recorded in a checkpoint's metadata (``modality``, JSON) by ``vssm train`` and read by everything
that must turn tokens into something else: the server (text in and out, or token lists), ``vssm
sample`` (a PNG grid or a text file) and the model card.  Checkpoints saved before the field
existed get it derived once, in the loader, from the dataset they record (:func:`of_dataset`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

__all__ = ["KINDS", "Modality", "of_dataset"]

KINDS = ("image", "text", "tokens")


@dataclass(frozen=True)
class Modality:
    kind: str  # "image": pixels in raster order; "text": bytes of encoded text; "tokens": ids with no reading
    shape: tuple[int, ...] | None = None  # image: (rows, columns[, channels]); one token per pixel value
    encoding: str | None = None  # text: the encoding of the byte stream, one token per byte ("utf-8")

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"modality kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if (self.kind == "image") != (self.shape is not None):
            raise ValueError("an image modality needs a shape, and only an image has one")
        if self.shape is not None and not all(isinstance(d, int) and d > 0 for d in self.shape):
            raise ValueError(f"image shape must be positive integers, got {self.shape!r}")
        if (self.kind == "text") != (self.encoding is not None):
            raise ValueError("a text modality needs an encoding, and only text has one")

    @property
    def is_text(self) -> bool:
        return self.kind == "text"

    def to_json(self) -> str:
        d: dict[str, object] = {"kind": self.kind}
        if self.shape is not None:
            d["shape"] = list(self.shape)
        if self.encoding is not None:
            d["encoding"] = self.encoding
        return json.dumps(d, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Modality:
        """ValueError when ``text`` is not a modality's JSON."""
        try:
            d = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"modality is not JSON ({exc})") from exc
        if not isinstance(d, dict) or set(d) - {"kind", "shape", "encoding"}:
            raise ValueError(f"modality must be an object with kind, shape, encoding; got {text!r}")
        shape = d.get("shape")
        return cls(d.get("kind", ""), tuple(shape) if isinstance(shape, list) else shape, d.get("encoding"))


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
