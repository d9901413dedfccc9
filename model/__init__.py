"""VSSM serve's model package: pure PyTorch (no web, store or validation libraries).

Families share one resumable-generation contract (see :class:`model.base.SequenceModel`):
``VSSM``, the autoregressive baselines ``ARSSM``, ``ARTransformer``, ``ARGRU``, and the latent-variable
baselines ``TVAE`` (the VSSM's recipe with transformers) and ``VRNN``.
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
    set_observation_temperature,
)
from .state import GenState, StateError
from .transformer import ARTransformer, ARTransformerConfig
from .tvae import TVAE, TVAEConfig
from .vrnn import VRNN, VRNNConfig
from .vssm import VSSM, VSSMConfig, VSSMLoss

__all__ = [
    "ARGRU",
    "ARSSM",
    "FAMILIES",
    "FORMAT_VERSION",
    "TVAE",
    "VRNN",
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
    "TVAEConfig",
    "TokenRangeError",
    "VRNNConfig",
    "VSSMConfig",
    "VSSMLoss",
    "build_model",
    "load_checkpoint",
    "read_metadata",
    "save_checkpoint",
    "set_default_block_size",
    "set_observation_temperature",
]
