"""Request and response bodies (docs/api.md).  Limits live here as ``Field`` constraints."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

MAX_SEED = 2**63 - 1
Prompt = (
    Annotated[str, Field(max_length=1_000_000)]
    | Annotated[list[Annotated[int, Field(ge=0)]], Field(max_length=1_000_000)]
)
Temperature = Annotated[float, Field(ge=0.0, le=5.0, allow_inf_nan=False)]  # NaN: "not a finite number"
Seed = Annotated[int, Field(ge=0, le=MAX_SEED)]
Tokens = Annotated[int, Field(ge=1, le=1_000_000)]
# positions per block of block sampling (docs/api.md, "Block size"); a size at or past the model's
# maximum position is one parallel pass, and so is null in responses.  Autoregressive families
# accept any and sample token by token.
BlockSize = Annotated[int, Field(ge=1, le=1_000_000)]
# latent families: tokens drawn given the latents at ``temperature`` times this (docs/api.md,
# "Observation temperature"); other families accept any and sample as they always do
ObservationTemperature = Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]
# ``stop``: the output ends before the first of these strings (text models; server/stops.py)
StopString = Annotated[str, Field(min_length=1, max_length=256)]
Stop = StopString | Annotated[list[StopString], Field(max_length=4)]
FinishReason = Literal["length", "stop"]  # "stop": a stop sequence ended the output


class _Request(BaseModel):
    # strict: the contract's types, no coercion ("2" is not a token count, "yes" not a bool, true not a token)
    model_config = ConfigDict(extra="forbid", strict=True)


# ----- models ---------------------------------------------------------------------------------------
class BlockPoint(BaseModel):
    """One measured point of a model's speed / quality curve (its eval JSON's ``block_curve`` row)."""

    block_size: int
    bound: Literal["iw", "exact"]  # "iw": an importance-weighted upper bound on the NLL; "exact": the NLL
    nats_per_sequence: float
    bits_per_token: float
    length: int  # tokens per generated sequence in the timings below
    ms_per_sequence_batch_1: float  # wall-clock to generate one sequence of ``length`` tokens alone ...
    ms_per_sequence_batch_32: float  # ... and per sequence in a batch of 32


class Modality(BaseModel):
    """What a model's tokens are (model/modality.py)."""

    kind: Literal["image", "text", "tokens"]  # pixels in raster order, bytes of text, or ids with no reading
    shape: list[int] | None = None  # image: rows, columns[, channels]
    encoding: str | None = None  # text: the bytes' encoding, one token per byte ("utf-8")


class TrainingInfo(BaseModel):
    dataset: str | None
    preset: str | None  # `vssm train --preset NAME` reproduces the checkpoint (model/recipes.py)
    steps: int | None
    seconds: float | None  # wall-clock seconds of the training loop
    cpu_seconds: float | None  # CPU seconds of it: what a shared machine really gave the run
    machine: str | None
    note: str | None  # how the run differs from running the preset once, if it does


class Metric(BaseModel):
    name: str  # e.g. "test_nll", "generation_ms_batch_1", "block_28_nll"
    value: float
    unit: str
    note: str | None  # how it was measured: the bound and its samples, the sequences, the block size


class ModelCardDetails(BaseModel):
    """A model card (model/card.py): the figures come from the checkpoint's metadata and eval JSON."""

    summary: str | None
    intended_use: str | None
    data: str | None
    training: TrainingInfo
    default_block_size: int | None
    observation_temperature: float  # tokens given latents at the request's temperature times this
    metrics: list[Metric]  # empty: no eval JSON for these weights
    limitations: list[str]


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "vssm-serve"
    family: str
    vocab_size: int
    max_position: int | None
    text: bool
    state_bytes: int
    fingerprint: str
    parameters: int
    default_block_size: int | None  # the block size when a request names none (null: one parallel pass)
    # latent families: tokens are drawn given the latents at the request's temperature times this
    # (0: the most likely token given them); 1 is the model's own distribution, the one its NLL is of
    observation_temperature: float
    block_curve: list[BlockPoint]  # measured with the checkpoint (empty: not measured)
    modality: Modality  # what the tokens are; ``text`` says whether the API speaks text for this model
    card: ModelCardDetails  # intended use, data, training budget, figures, limitations


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


# ----- completions (OpenAI shape) ---------------------------------------------------------------------
class CompletionCreate(BaseModel):
    # OpenAI clients send fields we do not use (top_p, user, ...); strict as _Request
    model_config = ConfigDict(extra="ignore", strict=True)

    model: str = Field(min_length=1, max_length=200)
    prompt: Prompt = ""
    max_tokens: Tokens = 16
    temperature: Temperature = 1.0
    n: int = Field(1, ge=1, le=1024)
    seed: Seed | None = None
    block_size: BlockSize | None = None
    observation_temperature: ObservationTemperature | None = None  # null: the model's
    stream: bool = False
    chunk_size: Tokens | None = None
    stop: Stop | None = None
    echo: bool = False  # the prompt in front of each choice's text and tokens
    logprobs: int | None = Field(None, ge=0, le=5)  # each token's log-probability and this many alternatives


class Logprobs(BaseModel):
    """OpenAI's completions ``logprobs``: one entry per token of the choice (server/logprobs.py)."""

    tokens: list[str]  # a text model's byte as a character (``bytes:\\xNN`` past ASCII), else the token id
    token_logprobs: list[float | None]  # null for an echoed prompt's tokens
    top_logprobs: list[dict[str, float] | None]  # the ``logprobs`` most likely tokens at each position
    text_offset: list[int]  # characters of the choice's text before the token (token models: its index)


class CompletionChoice(BaseModel):
    index: int
    text: str
    tokens: list[int]
    finish_reason: FinishReason | None
    logprobs: Logprobs | None = None


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None
    seed: int
    block_size: int | None = None  # the block size the tokens were sampled at (null: one parallel pass)
    observation_temperature: float  # the observation temperature the tokens were sampled at


# ----- sessions -----------------------------------------------------------------------------------------
class SessionCreate(_Request):
    model: str = Field(min_length=1, max_length=200)
    prompt: Prompt = ""
    seed: Seed | None = None
    ttl_seconds: int | None = Field(None, ge=1)
    max_tokens: Tokens | None = None
    temperature: Temperature = 1.0
    block_size: BlockSize | None = None
    observation_temperature: ObservationTemperature | None = None  # kept by the session (null: the model's)


class SessionGenerate(_Request):
    max_tokens: Tokens
    temperature: Temperature = 1.0
    block_size: BlockSize | None = None  # this call only; the session's own block size stays
    observation_temperature: ObservationTemperature | None = None  # this call only, as block_size
    expected_position: int | None = Field(None, ge=0)
    stream: bool = False
    chunk_size: Tokens | None = None
    stop: Stop | None = None  # the session stays exactly where the returned tokens end


class SessionAppend(_Request):
    prompt: Prompt
    expected_position: int | None = Field(None, ge=0)


class SessionFork(_Request):
    ttl_seconds: int | None = Field(None, ge=1)
    seed: Seed | None = None  # the branch's random draws from its position on (default: the parent's)


class Chunk(BaseModel):
    object: Literal["session.chunk"] = "session.chunk"
    session_id: str
    start_position: int
    position: int
    tokens: list[int]
    text: str
    finish_reason: FinishReason | None
    block_size: int | None = None  # the block size this chunk was sampled at (null: one parallel pass)
    observation_temperature: float | None = None  # the observation temperature this chunk was sampled at
    replayed: bool = False


class Session(BaseModel):
    id: str
    object: Literal["session"] = "session"
    model: str
    position: int
    seed: int
    block_size: int | None = None  # generate's block size when a call names none (null: one parallel pass)
    observation_temperature: float | None = None  # generate's when a call names none
    created_at: float
    expires_at: float
    ttl_seconds: int
    state_bytes: int
    fingerprint: str
    chunk: Chunk | None = None


class SessionDeleted(BaseModel):
    id: str
    object: Literal["session.deleted"] = "session.deleted"
    deleted: bool = True


# ----- errors and operations ----------------------------------------------------------------------------
class ErrorDetail(BaseModel):
    message: str
    type: str
    code: str | None
    param: str | None


class ErrorResponse(BaseModel):
    """The one error envelope (docs/api.md, "Errors")."""

    error: ErrorDetail


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Ready(BaseModel):
    status: Literal["ready"] = "ready"
    models: list[str]
    store: str
