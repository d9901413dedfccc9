"""Generation state: an immutable value that any replica can resume from.

A state is a flat dict of batch-first tensors (row b of every tensor belongs to sequence b) plus
the family and the weights' fingerprint.  Every family stores at least ``position`` (tokens
consumed so far, ``(B,)``) and ``seed`` (``(B,)``).  Serialised form: safetensors bytes (no
pickle), complex tensors stored as their real view.
"""

from __future__ import annotations

import itertools
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import cached_property

import torch
import torch.nn.functional as F
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import Tensor

__all__ = ["FORMAT_1", "STATE_FORMAT", "GenState", "StateError", "is_format_1"]

STATE_FORMAT = "vssm-state/2"
FORMAT_1 = "vssm-state/1"
# format 1 held an SSM layer's state as h, where format 2 holds h / B_bar (model/ssm.py): such a state is read as
# format 1, and the model it belongs to converts it (SequenceModel.upgrade_state) before going on; the families
# without an SSM layer wrote the same bytes, and their format-1 states are read as format 2
_SSM_FAMILIES = frozenset({"vssm", "ar-ssm"})


def _format_of(meta: dict) -> str | None:
    """The format a state's bytes are read as, from their metadata; None for a format this code does not read."""
    fmt = meta.get("format")
    if fmt == FORMAT_1 and meta.get("family") not in _SSM_FAMILIES:
        return STATE_FORMAT
    return fmt if fmt in (STATE_FORMAT, FORMAT_1) else None


def is_format_1(blob: bytes) -> bool:
    """Whether a state's bytes name format 1 (an earlier release's), from the header alone: a search of its
    bytes (under a microsecond, where parsing it took 8: a session write asks it of every state it replaces)
    before a parse that confirms."""
    n = int.from_bytes(blob[:8], "little")
    if b'"' + FORMAT_1.encode() + b'"' not in blob[8 : 8 + n]:
        return False
    try:
        return _metadata(blob).get("format") == FORMAT_1
    except (ValueError, UnicodeDecodeError):
        return False


class StateError(ValueError):
    """A state that cannot be used: corrupt bytes, another model's state, another format."""


@dataclass(frozen=True)
class GenState:
    family: str  # model family that produced the state
    fingerprint: str  # hash of the weights that produced it; refused by any other weights
    tensors: dict[str, Tensor]  # batch-first tensors, including "position" and "seed"
    format: str = STATE_FORMAT  # what the tensors mean: FORMAT_1 until the model converts it (upgrade_state)

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
        return type(self)(self.family, self.fingerprint, {**self.tensors, **tensors}, self.format)

    def rows(self, index: Tensor | list[int] | slice) -> GenState:
        """The state of a subset of rows."""
        return type(self)(self.family, self.fingerprint, {k: v[index] for k, v in self.tensors.items()}, self.format)

    @staticmethod
    def cat(states: list[GenState]) -> GenState:
        """Stack states of one model row-wise; ragged dims (a KV cache's length) are zero-padded."""
        first = states[0]
        layout = {k: (v.dtype, v.ndim) for k, v in first.tensors.items()}
        if any(ndim == 0 for _, ndim in layout.values()):
            raise StateError("cannot batch a state with a tensor of no batch dimension")
        for s in states[1:]:
            if (s.family, s.fingerprint) != (first.family, first.fingerprint):
                raise StateError("cannot batch states of different models")
            if s.format != first.format:
                raise StateError(f"cannot batch states of formats {first.format!r} and {s.format!r}")
            if {k: (v.dtype, v.ndim) for k, v in s.tensors.items()} != layout:
                raise StateError("cannot batch states whose tensors differ in name, dtype or rank")
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
        return GenState(first.family, first.fingerprint, out, first.format)

    def to(self, device: torch.device | str) -> GenState:
        return replace(self, tensors={k: v.to(device) for k, v in self.tensors.items()})

    def to_bytes(self) -> bytes:
        """safetensors bytes of the state: written here (:func:`_write`) where every dtype is one
        safetensors names, else by the library."""
        flat, meta = self._flat()
        if _writable(flat):
            return _write(flat, meta)
        seen: set[int] = set()
        for k, t in flat.items():  # the library refuses tensors sharing memory
            if t.data_ptr() in seen:  # e.g. the VSSM's `gen` is `par` right after an append
                flat[k] = t.clone()
            seen.add(t.data_ptr())
        return st_save(flat, metadata=meta)

    def to_bytes_split(self, sizes: Sequence[int]) -> list[bytes]:
        """The bytes of consecutive groups of ``sizes`` rows, each exactly what ``rows(group).to_bytes()``
        writes, from one copy of each tensor.

        A batched server call returns one state per session; slicing and copying row by row took some
        80 PyTorch calls a row, each of which lets the event loop's thread take the GIL
        (docs/experiments/rounds-and-serving.md, thirty-second session).
        """
        if any(n < 0 for n in sizes) or sum(sizes) != self.batch_size:
            raise ValueError(f"row groups {list(sizes)} do not cover the state's {self.batch_size} rows")
        flat, meta = self._flat()
        B = self.batch_size
        if not _writable(flat) or any(t.ndim == 0 or t.shape[0] != B for t in flat.values()):
            starts = itertools.accumulate(sizes, initial=0)
            return [self.rows(slice(a, a + n)).to_bytes() for a, n in zip(starts, sizes, strict=False)]
        layout = _order(flat)
        row_bytes = [t.numel() // B * t.element_size() if B else 0 for _, t in layout]
        data = [memoryview(t.reshape(-1).view(torch.uint8).numpy()) if t.numel() else b"" for _, t in layout]
        heads: dict[int, bytes] = {}
        out = []
        row = 0
        for n in sizes:
            if n not in heads:
                heads[n] = _header(
                    [(k, t.dtype, [n, *t.shape[1:]], n * r) for (k, t), r in zip(layout, row_bytes, strict=True)], meta
                )
            parts = [d[row * r : (row + n) * r] for d, r in zip(data, row_bytes, strict=True) if r]
            out.append(b"".join([heads[n], *parts]))
            row += n
        return out

    def _flat(self) -> tuple[dict[str, Tensor], dict[str, str]]:
        """Contiguous CPU tensors (complex ones as their real view) and the metadata of the state's bytes."""
        complex_names = sorted(k for k, v in self.tensors.items() if v.is_complex())
        flat = {
            k: (torch.view_as_real(v) if v.is_complex() else v).detach().contiguous().cpu()
            for k, v in self.tensors.items()
        }
        meta = {
            "format": self.format,
            "family": self.family,
            "fingerprint": self.fingerprint,
            "complex": json.dumps(complex_names),
        }
        return flat, meta

    @classmethod
    def from_bytes(cls, blob: bytes, device: torch.device | str | None = None) -> GenState:
        try:
            flat = st_load(blob)
            meta = _metadata(blob)
        except Exception as exc:  # the library raises its own errors and, beneath them, KeyError or TypeError
            raise StateError(f"state bytes are not a valid safetensors blob: {exc}") from exc
        fmt = _format_of(meta)
        if fmt is None:
            raise StateError(
                f"unsupported state format {meta.get('format')!r} (this release reads {FORMAT_1!r}, {STATE_FORMAT!r})"
            )
        if not all(isinstance(meta.get(k), str) for k in ("family", "fingerprint")):
            raise StateError("state bytes do not name their family and fingerprint")
        try:
            complex_names = set(json.loads(meta.get("complex", "[]")))
            tensors = {k: (torch.view_as_complex(v) if k in complex_names else v) for k, v in flat.items()}
        except (ValueError, TypeError, RuntimeError) as exc:
            raise StateError(f"state bytes' complex tensors do not read: {exc}") from exc
        if "position" not in tensors or "seed" not in tensors:
            raise StateError("state lacks its position or seed")
        state = cls(meta["family"], meta["fingerprint"], tensors, fmt)
        return state.to(device) if device is not None else state

    @classmethod
    def from_bytes_many(
        cls, blobs: Sequence[bytes], device: torch.device | str | None = None
    ) -> tuple[GenState, list[int]]:
        """One state of every blob's rows in order, and each blob's row count: what
        ``cat([from_bytes(b) for b in blobs])`` gives, in a few PyTorch calls a tensor rather than a
        few a blob and tensor (see :meth:`to_bytes_split`).

        Blobs that this module wrote for states of one model with equal shapes are read here, each
        header checked as strictly as the library checks it; anything else (a KV cache's ragged
        length, another writer's layout, a bad blob) goes through :meth:`from_bytes` and
        :meth:`cat`, which raise :class:`StateError` for a blob that is not a state.
        """
        if not blobs:
            raise ValueError("no state bytes to read")
        try:
            read = _read_many(blobs)
        except Exception:  # whatever a malformed blob raises here, the slow path says what is wrong with it
            read = None
        if read is None:
            states = [cls.from_bytes(b) for b in blobs]
            state, sizes = (states[0] if len(states) == 1 else cls.cat(states)), [s.batch_size for s in states]
        else:
            meta, tensors, sizes = read
            state = cls(meta["family"], meta["fingerprint"], tensors, _format_of(meta))  # type: ignore[arg-type]
        return (state.to(device) if device is not None else state), sizes

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
_NAMED = {name: dtype for dtype, name in _DTYPES.items()}
_ENTRY = {"dtype", "shape", "data_offsets"}  # a tensor's header entry
_MAX_HEADER = 100_000_000  # bytes: the library refuses a longer header


def _writable(flat: dict[str, Tensor]) -> bool:
    """Whether :func:`_write` can write these tensors (the format is little-endian)."""
    return sys.byteorder == "little" and all(t.dtype in _DTYPES for t in flat.values())


def _order(flat: dict[str, Tensor]) -> list[tuple[str, Tensor]]:
    """The tensors in the order their bytes are written: widest dtype first, so that every range is aligned."""
    return sorted(flat.items(), key=lambda kv: -kv[1].element_size())


def _header(layout: list[tuple[str, torch.dtype, list[int], int]], meta: dict[str, str]) -> bytes:
    """8 bytes of header length and the JSON header (padded with spaces to 8 bytes) of tensors
    ``(name, dtype, shape, bytes)`` whose bytes follow one another in this order."""
    header: dict[str, object] = {}
    at = 0
    for k, dtype, shape, n in layout:
        header[k] = {"dtype": _DTYPES[dtype], "shape": shape, "data_offsets": [at, at + n]}
        at += n
    header["__metadata__"] = meta
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    return len(h).to_bytes(8, "little") + h


def _write(flat: dict[str, Tensor], meta: dict[str, str]) -> bytes:
    """safetensors bytes of contiguous CPU tensors: the header, then the tensors' bytes in
    :func:`_order` (docs/design.md, "Generation state").  The library's ``save`` checks for shared
    memory and copies twice: a 230 KB state's ``to_bytes`` took 210 us through it and 56 here
    (docs/experiments/rounds-and-serving.md, twenty-fifth session); tests read these bytes with the library."""
    layout = _order(flat)
    head = _header([(k, t.dtype, list(t.shape), t.numel() * t.element_size()) for k, t in layout], meta)
    parts = [t.reshape(-1).view(torch.uint8).numpy() for _, t in layout if t.numel()]  # (n,) each, no copy
    return b"".join([head, *parts])  # type: ignore[list-item]


def _unique(pairs: list[tuple[str, object]]) -> dict[str, object]:
    """A JSON object whose keys are unique: a repeated key (which the library reads, keeping one) is left
    to the library, so that which one counts is its choice."""
    out = dict(pairs)
    if len(out) != len(pairs):
        raise ValueError("a repeated key in the header")
    return out


def _refused(name: str) -> float:
    raise ValueError(f"{name} is not JSON")


def _natural(text: str) -> int:
    """A JSON integer of the header: offsets and sizes, never negative (the library refuses even -0)."""
    if text.startswith("-"):
        raise ValueError(f"a negative integer {text} in the header")
    return int(text)


def _read_many(blobs: Sequence[bytes]) -> tuple[dict[str, str], dict[str, Tensor], list[int]] | None:
    """The metadata, batched tensors and row counts of blobs that :func:`_write` wrote for states of
    one model with equal shapes but the batch's; None for anything else.  Each header is held to what
    the library checks (known dtypes, offsets that tile the data exactly, sizes that match shapes), so
    no blob is read here that :meth:`GenState.from_bytes` would refuse; raises ``ValueError``,
    ``KeyError`` or ``TypeError`` for a malformed one."""
    if sys.byteorder != "little":
        return None
    first: tuple | None = None
    where: list[tuple[memoryview, dict[str, tuple[int, int]], int]] = []
    for blob in blobs:
        n = int.from_bytes(blob[:8], "little")
        if len(blob) < 8 or n <= 0 or n > min(len(blob) - 8, _MAX_HEADER):
            return None
        # as the library reads a header: UTF-8 JSON, no repeated keys, no NaN, string metadata
        header = json.loads(
            blob[8 : 8 + n].decode("utf-8"), object_pairs_hook=_unique, parse_constant=_refused, parse_int=_natural
        )
        meta = header.pop("__metadata__") if isinstance(header, dict) else None
        if not isinstance(meta, dict) or _format_of(meta) is None:
            return None
        if not all(isinstance(v, str) for v in meta.values()) or not {"family", "fingerprint"} <= meta.keys():
            return None
        for k in (*header, *meta.keys(), *meta.values()):
            k.encode("utf-8")  # a lone surrogate (json's "\ud800") is not UTF-8: the library refuses it
        spans, rows, shapes, end = {}, set(), {}, 0
        for k, entry in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0]):
            if entry.keys() != _ENTRY:  # what this module writes; anything more goes to the library
                return None
            dtype, shape, (a, b) = _NAMED[entry["dtype"]], entry["shape"], entry["data_offsets"]
            if not shape or not all(type(d) is int and d >= 0 for d in (*shape, a, b)) or a != end:
                return None
            size = dtype.itemsize
            for d in shape:
                size *= d
            if b - a != size:
                return None
            spans[k], shapes[k], end = (a, b), (dtype, tuple(shape[1:])), b
            rows.add(shape[0])
        if end != len(blob) - 8 - n or len(rows) != 1:
            return None
        sig = (tuple(sorted(meta.items())), shapes)
        if first is None:
            first = sig
        elif sig != first:
            return None
        where.append((memoryview(blob)[8 + n :], spans, rows.pop()))
    assert first is not None
    meta = dict(first[0])
    complex_names = set(json.loads(meta.get("complex", "[]")))
    if "position" not in first[1] or "seed" not in first[1]:
        return None
    total = sum(r for _, _, r in where)
    tensors = {}
    for k, (dtype, rest) in first[1].items():
        buf = bytearray(sum(b - a for _, spans, _ in where for a, b in [spans[k]]))
        view, at = memoryview(buf), 0
        for data, spans, _ in where:
            a, b = spans[k]
            view[at : at + b - a] = data[a:b]
            at += b - a
        t = torch.frombuffer(buf, dtype=dtype) if buf else torch.empty(0, dtype=dtype)
        t = t.view(total, *rest)
        tensors[k] = torch.view_as_complex(t) if k in complex_names else t
    return meta, tensors, [r for _, _, r in where]


def _metadata(blob: bytes) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors blob (the header is 8 bytes of length, then JSON)."""
    n = int.from_bytes(blob[:8], "little")
    if n <= 0 or n > len(blob) - 8:
        raise ValueError("bad header length")
    meta = json.loads(blob[8 : 8 + n]).get("__metadata__", {}) or {}
    if not isinstance(meta, dict):
        raise ValueError("the header's __metadata__ is not a JSON object")
    return meta
