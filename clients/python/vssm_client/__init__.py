"""Python client for VSSM serve: one-shot completions and resumable generation sessions.

Quick start (more in README.md)::

    from vssm_client import Client

    with Client(base_url="http://127.0.0.1:8000") as client:
        s = client.sessions.create(model="mnist-vssm", prompt=[0] * 392, seed=7)
        chunk = s.generate(max_tokens=64)
"""

from ._client import AsyncClient, Client
from ._exceptions import (
    APIConnectionError,
    APIError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    ConflictError,
    InternalServerError,
    NotFoundError,
    RateLimitError,
    ServiceUnavailableError,
    SessionNotFoundError,
)
from ._models import (
    BlockPoint,
    Chunk,
    Completion,
    CompletionChoice,
    Logprobs,
    Metric,
    Modality,
    Model,
    ModelCardDetails,
    SessionDeleted,
    SessionInfo,
    Usage,
)
from ._resources import AsyncSession, Session
from ._streaming import AsyncStream, Stream
from ._version import __version__

__all__ = [
    "APIConnectionError",
    "APIError",
    "APIStatusError",
    "APITimeoutError",
    "AsyncClient",
    "AsyncSession",
    "AsyncStream",
    "AuthenticationError",
    "BadRequestError",
    "BlockPoint",
    "Chunk",
    "Client",
    "Completion",
    "CompletionChoice",
    "ConflictError",
    "InternalServerError",
    "Logprobs",
    "Metric",
    "Modality",
    "Model",
    "ModelCardDetails",
    "NotFoundError",
    "RateLimitError",
    "ServiceUnavailableError",
    "Session",
    "SessionDeleted",
    "SessionInfo",
    "SessionNotFoundError",
    "Stream",
    "Usage",
    "__version__",
]
