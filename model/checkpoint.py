"""Self-describing checkpoints: one safetensors file, weights + config + format version.

Nothing is ever unpickled.  Loading checks, and names in its error, every way a file can be wrong:
not safetensors, a newer format, an unknown family, a config field that is unknown, missing or
invalid, a missing / unexpected / misshapen tensor, and weights whose hash differs from the one
recorded at save time.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .autoregressive import ARGRU, ARSSM
from .base import SequenceModel
from .modality import Modality, of_dataset
from .transformer import ARTransformer
from .tvae import TVAE
from .vrnn import VRNN
from .vssm import VSSM

__all__ = [
    "FAMILIES",
    "FORMAT_VERSION",
    "CheckpointError",
    "build_model",
    "load_checkpoint",
    "observation_temperature",
    "save_checkpoint",
    "set_default_block_size",
    "set_observation_temperature",
]

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
FAMILIES: dict[str, type[SequenceModel]] = {cls.family: cls for cls in (VSSM, ARSSM, ARTransformer, ARGRU, TVAE, VRNN)}

# Config fields of experimental options since removed from the model (docs/experiments/README.md,
# "Removed options"), each with the value that meant "off".  Checkpoints saved before the removal
# record them (every bundled VSSM does, at those values) and load unchanged; a checkpoint that
# used one of them needs the removed code, and is refused by name.
REMOVED_CONFIG: dict[str, dict[str, Any]] = {
    "vssm": {"block": "glu", "dec_estimates": 0, "posterior_blocks": False, "decoder_ar": False, "par_head": 0}
}


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded; the message says which part is wrong."""


def build_model(family: str, config: dict[str, Any] | None = None) -> SequenceModel:
    """A fresh model of ``family`` from a config dict (missing fields take their defaults)."""
    if family not in FAMILIES:
        raise CheckpointError(f"unknown model family {family!r} (known: {', '.join(sorted(FAMILIES))})")
    cls = FAMILIES[family]
    return cls(_config(cls, config or {}))


def current_config(family: str, raw: dict[str, Any]) -> dict[str, Any]:
    """``raw`` without the fields of removed options (:data:`REMOVED_CONFIG`) that are at their
    "off" value; CheckpointError if one is not, since no code here can run that model."""
    removed = REMOVED_CONFIG.get(family, {})
    used = {k: raw[k] for k in removed if k in raw and raw[k] != removed[k]}
    if used:
        names = ", ".join(f"{k}={v!r}" for k, v in sorted(used.items()))
        raise CheckpointError(
            f"bad config for {family}: it uses {names}, an experimental option removed from this version "
            "(docs/experiments/README.md lists them and where their results are)"
        )
    return {k: v for k, v in raw.items() if k not in removed}


def _config(cls: type[SequenceModel], raw: dict[str, Any]) -> Any:
    raw = current_config(cls.family, raw)
    fields = {f.name for f in dataclasses.fields(cls.config_class)}
    unknown = sorted(set(raw) - fields)
    if unknown:
        raise CheckpointError(f"bad config for {cls.family}: unknown field(s) {', '.join(unknown)}")
    try:
        return cls.config_class(**raw)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"bad config for {cls.family}: {exc}") from exc


def save_checkpoint(model: SequenceModel, path: str | Path, extra: dict[str, str] | None = None) -> Path:
    """Write ``model`` to ``path`` (``.safetensors``); ``extra`` adds string metadata (e.g. data)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    meta = {
        "format_version": str(FORMAT_VERSION),
        "family": model.family,
        "config": json.dumps(dataclasses.asdict(model.config), sort_keys=True),
        "fingerprint": model.fingerprint,
        **({"default_block_size": str(model.default_block_size)} if model.default_block_size else {}),
        **(
            {"observation_temperature": repr(model.observation_temperature)}
            if model.observation_temperature != 1.0
            else {}
        ),
        **({"modality": model.modality.to_json()} if model.modality.kind != "tokens" else {}),
        **(extra or {}),
    }
    return write_safetensors(tensors, meta, path)


def write_safetensors(tensors: dict[str, torch.Tensor], meta: dict[str, str], path: Path) -> Path:
    """Write ``tensors`` with string ``meta`` to ``path`` through a temporary file."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    save_file(tensors, str(tmp), metadata=meta)
    tmp.replace(path)  # atomic: a crash mid-write never leaves a truncated checkpoint behind
    return path


def read_metadata(path: str | Path) -> dict[str, str]:
    """The string metadata of a checkpoint file, without loading its tensors."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from exc


def read_tensors(path: str | Path, expected: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The tensors of ``path``, checked against ``expected`` (a module's state dict): every name
    present, none unexpected, every shape right; the error names what is wrong."""
    with safe_open(str(path), framework="pt") as f:
        present = set(f.keys())
        missing = sorted(set(expected) - present)
        if missing:
            raise CheckpointError(f"{path}: missing tensor(s): {', '.join(missing)}")
        unexpected = sorted(present - set(expected))
        if unexpected:
            raise CheckpointError(f"{path}: unexpected tensor(s): {', '.join(unexpected)}")
        tensors = {}
        for name, ref in expected.items():
            t = f.get_tensor(name)
            if tuple(t.shape) != tuple(ref.shape):
                raise CheckpointError(
                    f"{path}: tensor {name} has shape {tuple(t.shape)}, the config needs {tuple(ref.shape)}"
                )
            tensors[name] = t
    return tensors


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> SequenceModel:
    """Load, validate and return the model in eval mode on ``device`` (``"auto"``: CUDA if present)."""
    path = Path(path)
    if str(device) == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    meta = read_metadata(path)
    version = meta.get("format_version")
    if version is None or not version.isdigit():
        raise CheckpointError(f"{path}: no format_version in the metadata; not a VSSM-serve checkpoint")
    if int(version) > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: format version {version} is newer than this code supports ({FORMAT_VERSION}); upgrade vssm-serve"
        )
    try:
        raw_config = json.loads(meta.get("config", ""))
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: bad config: metadata 'config' is not JSON ({exc})") from exc
    if not isinstance(raw_config, dict):
        raise CheckpointError(f"{path}: bad config: expected a JSON object")
    model = build_model(meta.get("family", "<missing>"), raw_config)

    tensors = read_tensors(path, model.state_dict())
    dtype = next(iter(tensors.values())).dtype
    model.to(dtype).load_state_dict(tensors, strict=True)
    recorded = meta.get("fingerprint")
    if recorded and recorded != model.fingerprint:
        raise CheckpointError(
            f"{path}: weights hash {model.fingerprint} differs from the recorded {recorded}: corrupt file"
        )
    block = meta.get("default_block_size")
    if block is not None:
        if not block.isdigit() or int(block) < 1:
            raise CheckpointError(f"{path}: default_block_size must be a positive integer, got {block!r}")
        model.default_block_size = int(block)
    if "observation_temperature" in meta:
        try:
            model.observation_temperature = observation_temperature(model, float(meta["observation_temperature"]))
        except ValueError as exc:
            raise CheckpointError(f"{path}: {exc}") from exc
    model.modality = read_modality(path, meta)
    log.info("loaded %s (%s, %d parameters) from %s", model.family, model.fingerprint, model.num_parameters(), path)
    return model.to(device).eval()


def read_modality(path: str | Path, meta: dict[str, str]) -> Modality:
    """The modality a checkpoint records, or (saved before the field existed) its dataset's."""
    if "modality" not in meta:
        return of_dataset(meta.get("dataset"))
    try:
        return Modality.from_json(meta["modality"])
    except ValueError as exc:
        raise CheckpointError(f"{path}: bad modality: {exc}") from exc


def set_default_block_size(path: str | Path, block_size: int | None) -> None:
    """Record the block size ``path`` is served at when a request names none (None: one pass).

    The weights, their fingerprint and every other metadata field stay as they are: sessions made
    before keep working.  Chosen from the model's measured curve (``vssm eval --block-sizes``).
    """
    if block_size is not None and block_size < 1:
        raise CheckpointError(f"block_size must be >= 1 or None, got {block_size}")
    model = load_checkpoint(path)
    model.default_block_size = block_size
    _rewrite_settings(model, path)
    log.info("%s: default block size %s", path, block_size or "none (one pass)")


def set_observation_temperature(path: str | Path, ratio: float) -> None:
    """Record the temperature of tokens given latents, as a fraction of the request's
    (:attr:`SequenceModel.observation_temperature`); the weights stay as they are."""
    model = load_checkpoint(path)
    try:
        model.observation_temperature = observation_temperature(model, ratio)
    except ValueError as exc:
        raise CheckpointError(str(exc)) from exc
    _rewrite_settings(model, path)
    log.info("%s: observation temperature %g", path, ratio)


def observation_temperature(model: SequenceModel, ratio: float) -> float:
    """``ratio`` if ``model`` can be served at that observation temperature, else ValueError."""
    ratio = float(model._ratio(ratio, 1))  # the range every call is checked against
    if ratio != 1.0 and not callable(getattr(model, "log_weights", None)):
        raise ValueError(f"a {model.family} model has no latents: its tokens are drawn at the request's temperature")
    return ratio


def _rewrite_settings(model: SequenceModel, path: str | Path) -> None:
    """Save ``model``'s serving settings over ``path``, every other metadata field kept."""
    meta = read_metadata(path)
    own = {
        "format_version",
        "family",
        "config",
        "fingerprint",
        "default_block_size",
        "observation_temperature",
        "modality",
    }
    save_checkpoint(model, path, extra={k: v for k, v in meta.items() if k not in own})
