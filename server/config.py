"""Server settings: flags override ``VSSM_*`` environment variables, which override defaults.

List and mapping settings read either JSON (``VSSM_API_KEYS='["a", "b"]'``) or the plain forms
``a,b`` and ``model=limit,model2=limit``; API keys can also come from a file
(``VSSM_API_KEYS_FILE``, one key per line or comma-separated), as secrets managers and compose
provide them, so they need not appear in any process's command line.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEFAULT_CHECKPOINTS = Path(__file__).resolve().parents[1] / "checkpoints"


def split_list(v: object) -> object:
    """``a,b`` or a JSON list -> a list of stripped, non-empty strings; anything else unchanged."""
    if not isinstance(v, str):
        return v
    v = v.strip()
    if v.startswith("["):
        return json.loads(v)
    return [p.strip() for p in v.replace("\n", ",").split(",") if p.strip()]


def split_mapping(v: object) -> object:
    """``k=v,k2=v2`` or a JSON object -> a dict; anything else unchanged."""
    if not isinstance(v, str):
        return v
    v = v.strip()
    if v.startswith("{"):
        return json.loads(v)
    pairs = [p.partition("=") for p in split_list(v)]  # type: ignore[union-attr]
    bad = [k for k, eq, _ in pairs if not eq]
    if bad:
        raise ValueError(f"expected key=value pairs, got {bad[0]!r}")
    return {k.strip(): val.strip() for k, _, val in pairs}


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="VSSM_", env_file=None, extra="ignore")

    host: str = "127.0.0.1"  # interface to bind
    port: int = Field(8000, ge=0, le=65535)  # TCP port (0: any free port)
    checkpoints: Path = DEFAULT_CHECKPOINTS  # directory of *.safetensors checkpoints to serve
    redis_url: str | None = None  # redis://..., rediss://... or redis+cluster://...; None: in-process store
    device: str = "auto"  # auto (CUDA when present) | cpu | cuda | cuda:N
    # NoDecode: pydantic-settings would parse the variable as JSON before any validator sees "a,b"
    api_keys: Annotated[list[str], NoDecode] = Field(default_factory=list)  # Bearer keys; empty: no authentication
    api_keys_file: Path | None = None  # more keys, one per line (or comma-separated), added to api_keys
    session_ttl_seconds: int = Field(3600, ge=1)  # default session lifetime, refreshed on use
    max_ttl_seconds: int = Field(86400, ge=1)  # the longest ttl_seconds a client may ask for
    max_tokens: int = Field(4096, ge=1)  # per-request generation limit
    max_n: int = Field(64, ge=1)  # completions per request
    # tokens one request may prompt or append (400 prompt_too_long above), read in windows at a
    # fixed peak memory; the time it takes grows with it (about 0.1 ms a token and row on one core)
    max_prompt_tokens: int = Field(65536, ge=1)
    # per-model overrides of max_prompt_tokens: "shakespeare-vssm=200000,..." or JSON
    max_prompt_tokens_by_model: Annotated[dict[str, Annotated[int, Field(ge=1)]], NoDecode] = Field(
        default_factory=dict
    )
    # quotas (429): live sessions per API key (per client address without keys), and the sum of
    # their ttl_seconds; 0: no limit
    max_sessions_per_key: int = Field(1000, ge=0)
    max_total_ttl_per_key: int = Field(1000 * 3600, ge=0)
    max_body_bytes: int = Field(1 << 20, ge=1024)  # request body limit (413 above)
    max_in_flight: int = Field(256, ge=1)  # admitted requests doing model work at once (429 above)
    batch_window_ms: float = Field(0.0, ge=0)  # extra wait for company; 0: batch what queued during the last call
    max_batch_size: int = Field(64, ge=1)  # rows per model call
    batching: bool = True  # dynamic batching on/off (off: every request runs alone)
    keepalive_seconds: float = Field(15.0, gt=0)  # SSE keep-alive comment interval
    store_timeout_seconds: float = Field(2.0, gt=0)  # per Redis command
    # states this replica keeps of the sessions it served (Redis only): a session's next call here reads
    # its metadata alone; 0 reads every state from Redis
    state_cache_mb: float = Field(64.0, ge=0)
    # a session's Redis read and write refresh its quota entry in the same script (Redis only; a Cluster
    # never does): off for a sharding proxy behind a redis:// URL, where one script may not span two slots
    redis_fold_quotas: bool = True
    torch_threads: int = Field(0, ge=0)  # torch intra-op threads (0: torch default)
    log_level: str = "info"  # logging level

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_list(cls, v: object) -> object:
        return split_list(v)

    @field_validator("max_prompt_tokens_by_model", mode="before")
    @classmethod
    def _split_mapping(cls, v: object) -> object:
        return split_mapping(v)

    @model_validator(mode="after")
    def _read_keys_file(self) -> Settings:
        if self.api_keys_file is not None:
            keys = split_list(self.api_keys_file.read_text())
            assert isinstance(keys, list)
            self.api_keys = list(dict.fromkeys([*self.api_keys, *keys]))  # in order, without repeats
        return self

    def prompt_limit(self, model_id: str) -> int:
        """The most tokens one request may prompt or append to ``model_id``."""
        return self.max_prompt_tokens_by_model.get(model_id, self.max_prompt_tokens)

    def to_environment(self) -> dict[str, str]:
        """These settings as ``VSSM_*`` variables that rebuild them (lists and mappings as JSON).

        Worker processes read their settings from the environment, which only this user can read;
        a command line is visible to every local user, so keys never go there.  Keys read from a
        file are already in ``api_keys``, so the file is not passed on."""
        env = {}
        for name, value in self.model_dump(exclude={"api_keys_file"}).items():
            if value is not None:
                env[f"VSSM_{name.upper()}"] = json.dumps(value) if isinstance(value, (list, dict)) else str(value)
        return env
