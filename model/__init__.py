"""VSSM serve's model package: pure PyTorch (no web, store or validation libraries).

Families share one resumable-generation contract (see :class:`model.base.SequenceModel`):
``VSSM`` and the autoregressive baselines ``ARSSM``, ``ARTransformer``, ``ARGRU``.
"""

from .autoregressive import ARGRU, ARSSM, ARGRUConfig, ARModel, ARSSMConfig
from .base import LossOutput, PositionLimitError, SequenceModel, TokenRangeError
from .checkpoint import (
    FAMILIES,
    FORMAT_VERSION,
    CheckpointError,
    build_model,
    load_checkpoint,
    read_metadata,
    save_checkpoint,
    set_default_block_size,
)
from .state import GenState, StateError
from .transformer import ARTransformer, ARTransformerConfig
from .vssm import VSSM, VSSMConfig, VSSMLoss

__all__ = [
    "ARGRU",
    "ARSSM",
    "FAMILIES",
    "FORMAT_VERSION",
    "VSSM",
    "ARGRUConfig",
    "ARModel",
    "ARSSMConfig",
    "ARTransformer",
    "ARTransformerConfig",
    "CheckpointError",
    "GenState",
    "LossOutput",
    "PositionLimitError",
    "SequenceModel",
    "StateError",
    "TokenRangeError",
    "VSSMConfig",
    "VSSMLoss",
    "build_model",
    "load_checkpoint",
    "read_metadata",
    "save_checkpoint",
    "set_default_block_size",
]
