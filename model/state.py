"""Generation state: an immutable value that any replica can resume from.

A state is a flat dict of batch-first tensors (row b of every tensor belongs to sequence b) plus
the family and the weights' fingerprint.  Every family stores at least ``position`` (tokens
consumed so far, ``(B,)``) and ``seed`` (``(B,)``).  Serialised form: safetensors bytes (no
pickle), complex tensors stored as their real view.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, replace
from functools import cached_property

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import Tensor

__all__ = ["STATE_FORMAT", "GenState", "StateError"]

STATE_FORMAT = "vssm-state/1"


class StateError(ValueError):
    """A state that cannot be used: corrupt bytes, another model's state, another format."""


@dataclass(frozen=True)
class GenState:
    family: str  # model family that produced the state
    fingerprint: str  # hash of the weights that produced it; refused by any other weights
    tensors: dict[str, Tensor]  # batch-first tensors, including "position" and "seed"

    @property
    def position(self) -> Tensor:
        return self.tensors["position"]

    @cached_property
    def position_list(self) -> list[int]:
        """``position`` as Python ints, read once per state (a state is a value: its position never changes).
        A generation call's checks read these, where each tensor op they replace cost 20-60 us when the
        call followed other work (docs/experiments/rounds-and-serving.md, twenty-ninth session)."""
        return self.position.tolist()

    @property
    def seed(self) -> Tensor:
        return self.tensors["seed"]

    @property
    def batch_size(self) -> int:
        return int(self.position.shape[0])

    def __getitem__(self, name: str) -> Tensor:
        return self.tensors[name]

    def evolve(self, **tensors: Tensor) -> GenState:
        """A new state with some tensors replaced (the old one is untouched)."""
        # the constructor, not dataclasses.replace: every generate call of every family makes one
        return type(self)(self.family, self.fingerprint, {**self.tensors, **tensors})

    def rows(self, index: Tensor | list[int] | slice) -> GenState:
        """The state of a subset of rows."""
        return type(self)(self.family, self.fingerprint, {k: v[index] for k, v in self.tensors.items()})

    @staticmethod
    def cat(states: list[GenState]) -> GenState:
        """Stack states of one model row-wise; ragged dims (a KV cache's length) are zero-padded."""
        first = states[0]
        for s in states[1:]:
            if (s.family, s.fingerprint) != (first.family, first.fingerprint):
                raise StateError("cannot batch states of different models")
        out = {}
        for name in first.tensors:
            parts = [s.tensors[name] for s in states]
            shape = [max(p.shape[d] for p in parts) for d in range(parts[0].ndim)]
            padded = []
            for p in parts:
                pad: list[int] = []
                for d in reversed(range(1, p.ndim)):
                    pad += [0, shape[d] - p.shape[d]]
                padded.append(F.pad(p, pad) if any(pad) else p)
            out[name] = torch.cat(padded, dim=0)
        return GenState(first.family, first.fingerprint, out)

    def to(self, device: torch.device | str) -> GenState:
        return replace(self, tensors={k: v.to(device) for k, v in self.tensors.items()})

    def to_bytes(self) -> bytes:
        """safetensors bytes of the state: written here (:func:`_write`) where every dtype is one
        safetensors names, else by the library."""
        complex_names = sorted(k for k, v in self.tensors.items() if v.is_complex())
        flat = {
            k: (torch.view_as_real(v) if v.is_complex() else v).detach().contiguous().cpu()
            for k, v in self.tensors.items()
        }
        meta = {
            "format": STATE_FORMAT,
            "family": self.family,
            "fingerprint": self.fingerprint,
            "complex": json.dumps(complex_names),
        }
        if sys.byteorder == "little" and all(t.dtype in _DTYPES for t in flat.values()):  # the format's order
            return _write(flat, meta)
        seen: set[int] = set()
        for k, t in flat.items():  # the library refuses tensors sharing memory
            if t.data_ptr() in seen:  # e.g. the VSSM's `gen` is `par` right after an append
                flat[k] = t.clone()
            seen.add(t.data_ptr())
        return st_save(flat, metadata=meta)

    @classmethod
    def from_bytes(cls, blob: bytes, device: torch.device | str | None = None) -> GenState:
        try:
            flat = st_load(blob)
            meta = _metadata(blob)
        except (SafetensorError, ValueError, json.JSONDecodeError) as exc:
            raise StateError(f"state bytes are not a valid safetensors blob: {exc}") from exc
        if meta.get("format") != STATE_FORMAT:
            raise StateError(f"unsupported state format {meta.get('format')!r} (expected {STATE_FORMAT!r})")
        complex_names = set(json.loads(meta.get("complex", "[]")))
        tensors = {k: (torch.view_as_complex(v) if k in complex_names else v) for k, v in flat.items()}
        if "position" not in tensors or "seed" not in tensors:
            raise StateError("state lacks its position or seed")
        state = cls(meta["family"], meta["fingerprint"], tensors)
        return state.to(device) if device is not None else state

    @property
    def nbytes(self) -> int:
        return sum(v.numel() * v.element_size() for v in self.tensors.values())


# safetensors' names of the dtypes a state is written with here; other dtypes go through the library
_DTYPES = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}


def _write(flat: dict[str, Tensor], meta: dict[str, str]) -> bytes:
    """safetensors bytes of contiguous CPU tensors: 8 bytes of header length, the JSON header (padded
    with spaces to 8 bytes), then the tensors' bytes, widest dtype first so that every range is aligned
    (docs/design.md, "Generation state").  The library's ``save`` checks for shared memory and copies
    twice: a 230 KB state's ``to_bytes`` took 210 us through it and 56 here
    (docs/experiments/rounds-and-serving.md, twenty-fifth session); tests read these bytes with the library."""
    header: dict[str, object] = {}
    parts: list[object] = []
    at = 0
    for k, t in sorted(flat.items(), key=lambda kv: -kv[1].element_size()):  # widest first: every offset aligned
        n = t.numel() * t.element_size()
        header[k] = {"dtype": _DTYPES[t.dtype], "shape": list(t.shape), "data_offsets": [at, at + n]}
        if n:
            parts.append(t.reshape(-1).view(torch.uint8).numpy())  # (n,) the tensor's bytes, no copy
        at += n
    header["__metadata__"] = meta
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    return b"".join([len(h).to_bytes(8, "little"), h, *parts])  # type: ignore[list-item]


def _metadata(blob: bytes) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors blob (the header is 8 bytes of length, then JSON)."""
    n = int.from_bytes(blob[:8], "little")
    if n <= 0 or n > len(blob) - 8:
        raise ValueError("bad header length")
    meta = json.loads(blob[8 : 8 + n]).get("__metadata__", {}) or {}
    if not isinstance(meta, dict):
        raise ValueError("the header's __metadata__ is not a JSON object")
    return meta
