"""Typed response bodies (docs/api.md).  Unknown fields are kept, missing optional ones default."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

__all__ = [
    "BlockPoint",
    "Chunk",
    "Completion",
    "CompletionChoice",
    "Logprobs",
    "Metric",
    "Modality",
    "Model",
    "ModelCardDetails",
    "ModelList",
    "SessionDeleted",
    "SessionInfo",
    "Usage",
]


class _Base(BaseModel):
    model_config = ConfigDict(extra="allow", protected_namespaces=())


class BlockPoint(_Base):
    """One measured point of a model's speed / quality curve: sampling at ``block_size``, the NLL
    (``bound``: "iw", an importance-weighted upper bound, or "exact") and the time to generate a
    sequence of ``length`` tokens, alone and per sequence in a batch of 32."""

    block_size: int
    bound: str | None = None
    nats_per_sequence: float | None = None
    bits_per_token: float | None = None
    length: int | None = None
    ms_per_sequence_batch_1: float | None = None
    ms_per_sequence_batch_32: float | None = None


class Modality(_Base):
    """What a model's tokens are: ``kind`` "image" (``shape``), "text" (``encoding``) or "tokens"."""

    kind: str = "tokens"
    shape: list[int] | None = None
    encoding: str | None = None


class Metric(_Base):
    """One figure of a model card, e.g. ``test_nll`` in nats per sequence; ``note`` says how it was measured."""

    name: str
    value: float
    unit: str | None = None
    note: str | None = None


class ModelCardDetails(_Base):
    """A model card: intended use, data, training budget (``training``), figures, limitations."""

    summary: str | None = None
    intended_use: str | None = None
    data: str | None = None
    training: dict[str, Any] = {}  # dataset, preset, steps, seconds, cpu_seconds, machine, note
    default_block_size: int | None = None
    observation_temperature: float = 1.0
    metrics: list[Metric] = []
    limitations: list[str] = []


class Model(_Base):
    """A loaded model: ``GET /v1/models/{id}``."""

    id: str
    object: str = "model"
    created: int | None = None
    owned_by: str | None = None
    family: str | None = None
    vocab_size: int | None = None
    max_position: int | None = None
    text: bool = False  # takes and returns ``text`` (byte-level model)
    state_bytes: int | None = None
    fingerprint: str | None = None
    parameters: int | None = None
    default_block_size: int | None = None  # used when a request names no block size (None: one parallel pass)
    # latent families: tokens given latents at the request's temperature times this (0: most likely)
    observation_temperature: float = 1.0
    block_curve: list[BlockPoint] = []  # measured with the checkpoint, by block size (empty: not measured)
    modality: Modality | None = None  # what the tokens are (servers before it: None)
    card: ModelCardDetails | None = None  # the model card (servers before it: None)


class ModelList(_Base):
    object: str = "list"
    data: list[Model] = []


class Logprobs(_Base):
    """A choice's log-probabilities (``logprobs`` on a completion), one entry per token: its name (a
    text model's byte, ``bytes:\\xNN`` past ASCII; else the token id), its log-probability (None for
    an echoed prompt's), the most likely alternatives, and where its character starts in the text."""

    tokens: list[str] = []
    token_logprobs: list[float | None] = []
    top_logprobs: list[dict[str, float] | None] = []
    text_offset: list[int] = []


class CompletionChoice(_Base):
    index: int = 0
    text: str = ""
    tokens: list[int] = []
    finish_reason: str | None = None  # "length", or "stop" when a stop sequence ended it
    logprobs: Logprobs | None = None  # when the request asked for ``logprobs``


class Usage(_Base):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class Completion(_Base):
    """``POST /v1/completions``; in a stream, one per chunk with that chunk's tokens."""

    id: str = ""
    object: str = "text_completion"
    created: int | None = None
    model: str = ""
    choices: list[CompletionChoice] = []
    usage: Usage | None = None
    seed: int | None = None
    block_size: int | None = None  # the block size the tokens were sampled at (None: one parallel pass)
    observation_temperature: float | None = None  # the observation temperature they were sampled at

    @property
    def tokens(self) -> list[int]:
        """Choice 0's tokens."""
        return self.choices[0].tokens if self.choices else []

    @property
    def text(self) -> str:
        """Choice 0's text (``""`` for token models)."""
        return self.choices[0].text if self.choices else ""

    @property
    def finish_reason(self) -> str | None:
        """Choice 0's finish reason (``None`` until the last chunk of a stream)."""
        return self.choices[0].finish_reason if self.choices else None


class Chunk(_Base):
    """Tokens generated by one session step: ``[start_position, position)``."""

    object: str = "session.chunk"
    session_id: str = ""
    start_position: int = 0
    position: int = 0
    tokens: list[int] = []
    text: str = ""
    finish_reason: str | None = None
    block_size: int | None = None  # the block size this chunk was sampled at (None: one parallel pass)
    observation_temperature: float | None = None  # the observation temperature this chunk was sampled at
    replayed: bool = False  # the server returned an already committed chunk (retry after a lost response)


class SessionInfo(_Base):
    """The ``Session`` body returned by create, get, append and fork."""

    id: str
    object: str = "session"
    model: str = ""
    position: int = 0
    seed: int | None = None
    block_size: int | None = None  # generate's block size when a call names none (None: one parallel pass)
    observation_temperature: float | None = None  # generate's observation temperature when a call names none
    created_at: float | None = None
    expires_at: float | None = None
    ttl_seconds: int | None = None
    state_bytes: int | None = None
    fingerprint: str | None = None
    chunk: Chunk | None = None  # present when the call generated tokens (create with max_tokens)


class SessionDeleted(_Base):
    id: str
    object: str = "session.deleted"
    deleted: bool = True
