"""Server settings: flags override ``VSSM_*`` environment variables, which override defaults."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_CHECKPOINTS = Path(__file__).resolve().parents[1] / "checkpoints"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="VSSM_", env_file=None, extra="ignore")

    host: str = "127.0.0.1"  # interface to bind
    port: int = Field(8000, ge=0, le=65535)  # TCP port (0: any free port)
    checkpoints: Path = DEFAULT_CHECKPOINTS  # directory of *.safetensors checkpoints to serve
    redis_url: str | None = None  # redis://..., rediss://... or redis+cluster://...; None: in-process store
    device: str = "auto"  # auto (CUDA when present) | cpu | cuda | cuda:N
    api_keys: list[str] = Field(default_factory=list)  # Bearer keys; empty: no authentication
    session_ttl_seconds: int = Field(3600, ge=1)  # default session lifetime, refreshed on use
    max_ttl_seconds: int = Field(86400, ge=1)  # the longest ttl_seconds a client may ask for
    max_tokens: int = Field(4096, ge=1)  # per-request generation limit
    max_n: int = Field(64, ge=1)  # completions per request
    max_body_bytes: int = Field(1 << 20, ge=1024)  # request body limit (413 above)
    max_in_flight: int = Field(256, ge=1)  # admitted requests doing model work at once (429 above)
    batch_window_ms: float = Field(0.0, ge=0)  # extra wait for company; 0: batch what queued during the last call
    max_batch_size: int = Field(64, ge=1)  # rows per model call
    batching: bool = True  # dynamic batching on/off (off: every request runs alone)
    keepalive_seconds: float = Field(15.0, gt=0)  # SSE keep-alive comment interval
    store_timeout_seconds: float = Field(2.0, gt=0)  # per Redis command
    torch_threads: int = Field(0, ge=0)  # torch intra-op threads (0: torch default)
    log_level: str = "info"  # logging level

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, v: object) -> object:
        if isinstance(v, str):  # VSSM_API_KEYS=key1,key2
            return [k.strip() for k in v.split(",") if k.strip()]
        return v
