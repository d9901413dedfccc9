"""Resources (``client.models``, ``client.completions``, ``client.sessions``) and ``Session`` handles.

Session steps (generate, append) with an ``expected_position`` are safe to retry after a lost
response: the server replays a generated chunk that was already committed, and an append that was
already committed is recognised from the session's position, and a retry that finds the session
busy (the lost attempt still committing) is sent once more, to be answered with the replay.
Without ``expected_position`` they are retried only when the server provably did nothing.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from ._base import drop_none, parse, prompt_value
from ._exceptions import ConflictError, SessionNotFoundError
from ._models import Chunk, Completion, Model, ModelList, SessionDeleted, SessionInfo
from ._streaming import AsyncStream, Stream

if TYPE_CHECKING:
    from ._client import AsyncClient, Client

__all__ = [
    "AsyncCompletions",
    "AsyncModels",
    "AsyncSession",
    "AsyncSessions",
    "Completions",
    "Models",
    "Session",
    "Sessions",
]

log = logging.getLogger("vssm_client")

Prompt = str | Sequence[int]
Stop = str | Sequence[str]  # stop sequences: the output ends before the first (text models, up to 4)


def _session_path(session_id: str, action: str = "") -> str:
    return f"/v1/sessions/{quote(session_id, safe='')}" + (f"/{action}" if action else "")


def _completion_body(
    model: str,
    prompt: Prompt | None,
    max_tokens: int | None,
    temperature: float | None,
    n: int | None,
    seed: int | None,
    stream: bool,
    chunk_size: int | None,
    extra_body: dict[str, Any] | None,
    block_size: int | None = None,
    stop: Stop | None = None,
    echo: bool | None = None,
    logprobs: int | None = None,
    observation_temperature: float | None = None,
) -> dict[str, Any]:
    body = drop_none(
        model=model,
        prompt=prompt_value(prompt),
        max_tokens=max_tokens,
        temperature=temperature,
        n=n,
        seed=seed,
        block_size=block_size,
        observation_temperature=observation_temperature,
        stream=stream or None,
        chunk_size=chunk_size,
        stop=_stop_value(stop),
        echo=echo,
        logprobs=logprobs,
    )
    return {**body, **(extra_body or {})}


def _generate_body(
    max_tokens: int,
    temperature: float | None,
    expected_position: int | None,
    stream: bool,
    chunk_size: int | None,
    block_size: int | None = None,
    stop: Stop | None = None,
    observation_temperature: float | None = None,
) -> dict[str, Any]:
    return drop_none(
        max_tokens=max_tokens,
        temperature=temperature,
        block_size=block_size,
        observation_temperature=observation_temperature,
        expected_position=expected_position,
        stream=stream or None,
        chunk_size=chunk_size,
        stop=_stop_value(stop),
    )


def _stop_value(stop: Stop | None) -> str | list[str] | None:
    return stop if stop is None or isinstance(stop, str) else list(stop)


def _prompt_length(prompt: Prompt) -> int:
    """Tokens a prompt adds: text models are byte-level, so text counts its UTF-8 bytes."""
    return len(prompt.encode("utf-8")) if isinstance(prompt, str) else len(prompt)


def _once(idempotency_key: str | None) -> dict[str, str]:
    """The ``Idempotency-Key`` header of one create or fork call, the same on each of its retries."""
    return {"Idempotency-Key": idempotency_key or f"vssm-{uuid.uuid4().hex}"}


def _busy_with_our_own_attempt(err: ConflictError, expected_position: int | None) -> bool:
    """Whether a 409 ``session_busy`` may come from our own lost attempt, still committing when its retry
    arrived: once it has, the same request is answered with its replayed chunk."""
    return err._after_lost_response and err.code == "session_busy" and expected_position is not None


def _append_was_committed(err: ConflictError, expected_position: int | None) -> bool:
    """Whether a 409 may be our own earlier, lost, append: worth checking the session's position."""
    return err._after_lost_response and err.code == "position_mismatch" and expected_position is not None


# ----- models ------------------------------------------------------------------------------------------
class Models:
    def __init__(self, client: Client) -> None:
        self._client = client

    def list(self) -> list[Model]:
        """``GET /v1/models``: the loaded models."""
        return parse(self._client._request("GET", "/v1/models"), ModelList).data

    def get(self, model: str) -> Model:
        """``GET /v1/models/{id}``."""
        return parse(self._client._request("GET", f"/v1/models/{quote(model, safe='')}"), Model)


class AsyncModels:
    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    async def list(self) -> list[Model]:
        """``GET /v1/models``: the loaded models."""
        return parse(await self._client._request("GET", "/v1/models"), ModelList).data

    async def get(self, model: str) -> Model:
        """``GET /v1/models/{id}``."""
        return parse(await self._client._request("GET", f"/v1/models/{quote(model, safe='')}"), Model)


# ----- completions -------------------------------------------------------------------------------------
class Completions:
    def __init__(self, client: Client) -> None:
        self._client = client

    def create(
        self,
        *,
        model: str,
        prompt: Prompt | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
        n: int | None = None,
        seed: int | None = None,
        block_size: int | None = None,
        observation_temperature: float | None = None,
        stop: Stop | None = None,
        echo: bool | None = None,
        logprobs: int | None = None,
        extra_body: dict[str, Any] | None = None,
    ) -> Completion:
        """``POST /v1/completions``: ``prompt`` is text (text models) or token ids; unset fields use server defaults
        (``block_size``: the model's ``default_block_size``).  ``stop``: the output ends before the first
        of these strings (``finish_reason`` ``"stop"``); ``echo``: the prompt in front; ``logprobs``
        (0..5): each token's log-probability and that many alternatives (``choices[i].logprobs``)."""
        body = _completion_body(
            model,
            prompt,
            max_tokens,
            temperature,
            n,
            seed,
            False,
            None,
            extra_body,
            block_size,
            stop,
            echo,
            logprobs,
            observation_temperature,
        )
        return parse(self._client._request("POST", "/v1/completions", body=body), Completion)

    def stream(
        self,
        *,
        model: str,
        prompt: Prompt | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
        n: int | None = None,
        seed: int | None = None,
        block_size: int | None = None,
        observation_temperature: float | None = None,
        chunk_size: int | None = None,
        stop: Stop | None = None,
        echo: bool | None = None,
        logprobs: int | None = None,
        extra_body: dict[str, Any] | None = None,
    ) -> Stream[Completion]:
        """Like ``create`` but yields one ``Completion`` per ``chunk_size`` tokens."""
        body = _completion_body(
            model,
            prompt,
            max_tokens,
            temperature,
            n,
            seed,
            True,
            chunk_size,
            extra_body,
            block_size,
            stop,
            echo,
            logprobs,
            observation_temperature,
        )
        return Stream(lambda: self._client._request("POST", "/v1/completions", body=body, stream=True), Completion)


class AsyncCompletions:
    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    async def create(
        self,
        *,
        model: str,
        prompt: Prompt | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
        n: int | None = None,
        seed: int | None = None,
        block_size: int | None = None,
        observation_temperature: float | None = None,
        stop: Stop | None = None,
        echo: bool | None = None,
        logprobs: int | None = None,
        extra_body: dict[str, Any] | None = None,
    ) -> Completion:
        """``POST /v1/completions``: ``prompt`` is text (text models) or token ids; unset fields use server defaults
        (``block_size``: the model's ``default_block_size``).  ``stop``: the output ends before the first
        of these strings (``finish_reason`` ``"stop"``); ``echo``: the prompt in front; ``logprobs``
        (0..5): each token's log-probability and that many alternatives (``choices[i].logprobs``)."""
        body = _completion_body(
            model,
            prompt,
            max_tokens,
            temperature,
            n,
            seed,
            False,
            None,
            extra_body,
            block_size,
            stop,
            echo,
            logprobs,
            observation_temperature,
        )
        return parse(await self._client._request("POST", "/v1/completions", body=body), Completion)

    def stream(
        self,
        *,
        model: str,
        prompt: Prompt | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
        n: int | None = None,
        seed: int | None = None,
        block_size: int | None = None,
        observation_temperature: float | None = None,
        chunk_size: int | None = None,
        stop: Stop | None = None,
        echo: bool | None = None,
        logprobs: int | None = None,
        extra_body: dict[str, Any] | None = None,
    ) -> AsyncStream[Completion]:
        """Like ``create`` but an async iterator of one ``Completion`` per ``chunk_size`` tokens."""
        body = _completion_body(
            model,
            prompt,
            max_tokens,
            temperature,
            n,
            seed,
            True,
            chunk_size,
            extra_body,
            block_size,
            stop,
            echo,
            logprobs,
            observation_temperature,
        )
        return AsyncStream(lambda: self._client._request("POST", "/v1/completions", body=body, stream=True), Completion)


# ----- sessions ----------------------------------------------------------------------------------------
class _SessionState:
    """A session's last known metadata; ``position`` follows every chunk this handle receives."""

    info: SessionInfo

    def __init__(self, info: SessionInfo) -> None:
        self.info = info

    @property
    def id(self) -> str:
        return self.info.id

    @property
    def model(self) -> str:
        return self.info.model

    @property
    def position(self) -> int:
        return self.info.position

    @property
    def seed(self) -> int | None:
        return self.info.seed

    @property
    def block_size(self) -> int | None:
        """The block size ``generate`` and ``stream`` use when they name none (None: one parallel pass)."""
        return self.info.block_size

    @property
    def created_at(self) -> float | None:
        return self.info.created_at

    @property
    def expires_at(self) -> float | None:
        return self.info.expires_at

    @property
    def ttl_seconds(self) -> int | None:
        return self.info.ttl_seconds

    @property
    def state_bytes(self) -> int | None:
        return self.info.state_bytes

    @property
    def fingerprint(self) -> str | None:
        return self.info.fingerprint

    @property
    def chunk(self) -> Chunk | None:
        """The last chunk this handle received (from create with ``max_tokens``, generate or stream)."""
        return self.info.chunk

    def _advance(self, chunk: Chunk) -> None:
        self.info = self.info.model_copy(update={"position": chunk.position, "chunk": chunk})

    def __repr__(self) -> str:
        return f"{type(self).__name__}(id={self.id!r}, model={self.model!r}, position={self.position})"


class Session(_SessionState):
    """A handle on a server-side session.  Steps send ``expected_position=self.position``, so a stale
    handle gets ``ConflictError`` (``position_mismatch``): call ``refresh()`` to catch up.

    If ``stream()`` breaks after some chunks, ``position`` is that of the last chunk received, each one
    committed by the server: call ``generate``/``stream`` again to continue from there.
    """

    def __init__(self, client: Client, info: SessionInfo) -> None:
        super().__init__(info)
        self._client = client

    def generate(
        self,
        max_tokens: int,
        *,
        temperature: float | None = None,
        block_size: int | None = None,
        observation_temperature: float | None = None,
        stop: Stop | None = None,
    ) -> Chunk:
        """Generate the next ``max_tokens`` tokens; ``position`` advances to the chunk's end.
        ``block_size`` applies to this call only (default: the session's); ``stop`` ends the chunk (and
        the session) before the first of these strings."""
        chunk = self._client.sessions.generate(
            self.id,
            max_tokens=max_tokens,
            temperature=temperature,
            block_size=block_size,
            observation_temperature=observation_temperature,
            expected_position=self.position,
            stop=stop,
        )
        self._advance(chunk)
        return chunk

    def stream(
        self,
        max_tokens: int,
        *,
        chunk_size: int | None = None,
        temperature: float | None = None,
        block_size: int | None = None,
        observation_temperature: float | None = None,
        stop: Stop | None = None,
    ) -> Stream[Chunk]:
        """Generate ``max_tokens`` tokens as a stream of chunks; ``position`` advances with each one.
        At one block size, the chunks hold the tokens one ``generate`` call would."""
        return self._client.sessions._stream(
            self.id,
            max_tokens,
            chunk_size,
            temperature,
            self.position,
            on_chunk=self._advance,
            block_size=block_size,
            observation_temperature=observation_temperature,
            stop=stop,
        )

    def append(self, prompt: Prompt) -> Session:
        """Feed observed tokens (or text) without generating; returns ``self``, updated."""
        self.info = self._client.sessions.append(self.id, prompt, expected_position=self.position).info
        return self

    def fork(self, *, ttl_seconds: int | None = None, seed: int | None = None) -> Session:
        """A new session with a copy of this one's state (``seed``: its own random draws from here)."""
        return self._client.sessions.fork(self.id, ttl_seconds=ttl_seconds, seed=seed)

    def refresh(self) -> Session:
        """Reload from the server (also refreshes the TTL); returns ``self``."""
        self.info = self._client.sessions.get(self.id).info
        return self

    def delete(self) -> SessionDeleted:
        return self._client.sessions.delete(self.id)


class AsyncSession(_SessionState):
    """Asynchronous twin of ``Session``."""

    def __init__(self, client: AsyncClient, info: SessionInfo) -> None:
        super().__init__(info)
        self._client = client

    async def generate(
        self,
        max_tokens: int,
        *,
        temperature: float | None = None,
        block_size: int | None = None,
        observation_temperature: float | None = None,
        stop: Stop | None = None,
    ) -> Chunk:
        """Generate the next ``max_tokens`` tokens; ``position`` advances to the chunk's end.
        ``block_size`` applies to this call only (default: the session's); ``stop`` ends the chunk (and
        the session) before the first of these strings."""
        chunk = await self._client.sessions.generate(
            self.id,
            max_tokens=max_tokens,
            temperature=temperature,
            block_size=block_size,
            observation_temperature=observation_temperature,
            expected_position=self.position,
            stop=stop,
        )
        self._advance(chunk)
        return chunk

    def stream(
        self,
        max_tokens: int,
        *,
        chunk_size: int | None = None,
        temperature: float | None = None,
        block_size: int | None = None,
        observation_temperature: float | None = None,
        stop: Stop | None = None,
    ) -> AsyncStream[Chunk]:
        """Generate ``max_tokens`` tokens as an async stream of chunks; ``position`` advances with each one."""
        return self._client.sessions._stream(
            self.id,
            max_tokens,
            chunk_size,
            temperature,
            self.position,
            on_chunk=self._advance,
            block_size=block_size,
            observation_temperature=observation_temperature,
            stop=stop,
        )

    async def append(self, prompt: Prompt) -> AsyncSession:
        """Feed observed tokens (or text) without generating; returns ``self``, updated."""
        self.info = (await self._client.sessions.append(self.id, prompt, expected_position=self.position)).info
        return self

    async def fork(self, *, ttl_seconds: int | None = None, seed: int | None = None) -> AsyncSession:
        """A new session with a copy of this one's state (``seed``: its own random draws from here)."""
        return await self._client.sessions.fork(self.id, ttl_seconds=ttl_seconds, seed=seed)

    async def refresh(self) -> AsyncSession:
        """Reload from the server (also refreshes the TTL); returns ``self``."""
        self.info = (await self._client.sessions.get(self.id)).info
        return self

    async def delete(self) -> SessionDeleted:
        return await self._client.sessions.delete(self.id)


class Sessions:
    """``client.sessions``: create or resume sessions, or drive them by id."""

    def __init__(self, client: Client) -> None:
        self._client = client

    def create(
        self,
        *,
        model: str,
        prompt: Prompt | None = None,
        seed: int | None = None,
        ttl_seconds: int | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
        block_size: int | None = None,
        observation_temperature: float | None = None,
        idempotency_key: str | None = None,
    ) -> Session:
        """``POST /v1/sessions``; with ``max_tokens`` the first chunk is generated too (``session.chunk``).
        The session keeps ``block_size`` (default: the model's) for every step that names none.

        Retries carry one ``Idempotency-Key`` (``idempotency_key``, or a fresh one per call), so a
        retry after a lost response returns the session the lost attempt made instead of a second one."""
        body = drop_none(
            model=model,
            prompt=prompt_value(prompt),
            seed=seed,
            ttl_seconds=ttl_seconds,
            max_tokens=max_tokens,
            temperature=temperature,
            block_size=block_size,
            observation_temperature=observation_temperature,
        )
        response = self._client._request("POST", "/v1/sessions", body=body, headers=_once(idempotency_key))
        return Session(self._client, parse(response, SessionInfo))

    def get(self, session_id: str) -> Session:
        """Resume a session by id (from any process or replica); refreshes its TTL."""
        return Session(self._client, parse(self._client._request("GET", _session_path(session_id)), SessionInfo))

    def generate(
        self,
        session_id: str,
        *,
        max_tokens: int,
        temperature: float | None = None,
        block_size: int | None = None,
        observation_temperature: float | None = None,
        expected_position: int | None = None,
        stop: Stop | None = None,
    ) -> Chunk:
        """``POST /v1/sessions/{id}/generate``; with ``expected_position`` a lost response is retried safely.
        ``block_size`` applies to this call only (default: the session's).  ``stop``: the chunk ends before
        the first of these strings, and the session right after the tokens returned."""
        body = _generate_body(
            max_tokens, temperature, expected_position, False, None, block_size, stop, observation_temperature
        )
        path = _session_path(session_id, "generate")
        try:
            response = self._client._request("POST", path, body=body, idempotent=expected_position is not None)
        except ConflictError as e:
            if not _busy_with_our_own_attempt(e, expected_position):
                raise
            log.info("generate on %s found the session busy after a lost response; asking for the replay", session_id)
            self._client._sleep(self._client._retry_delay(0, None))
            response = self._client._request("POST", path, body=body)
        return parse(response, Chunk)

    def stream(
        self,
        session_id: str,
        *,
        max_tokens: int,
        chunk_size: int | None = None,
        temperature: float | None = None,
        block_size: int | None = None,
        observation_temperature: float | None = None,
        expected_position: int | None = None,
        stop: Stop | None = None,
    ) -> Stream[Chunk]:
        """Streaming ``generate``: one committed ``Chunk`` per ``chunk_size`` tokens."""
        return self._stream(
            session_id,
            max_tokens,
            chunk_size,
            temperature,
            expected_position,
            block_size=block_size,
            stop=stop,
            observation_temperature=observation_temperature,
        )

    def _stream(
        self,
        session_id: str,
        max_tokens: int,
        chunk_size: int | None,
        temperature: float | None,
        expected_position: int | None,
        on_chunk: Callable[[Chunk], None] | None = None,
        block_size: int | None = None,
        observation_temperature: float | None = None,
        stop: Stop | None = None,
    ) -> Stream[Chunk]:
        body = _generate_body(
            max_tokens, temperature, expected_position, True, chunk_size, block_size, stop, observation_temperature
        )
        path = _session_path(session_id, "generate")
        idempotent = expected_position is not None
        return Stream(
            lambda: self._client._request("POST", path, body=body, idempotent=idempotent, stream=True),
            Chunk,
            on_chunk,
        )

    def append(self, session_id: str, prompt: Prompt, *, expected_position: int | None = None) -> Session:
        """``POST /v1/sessions/{id}/append``: observed tokens (or text), no generation."""
        body = drop_none(prompt=prompt_value(prompt), expected_position=expected_position)
        try:
            response = self._client._request(
                "POST", _session_path(session_id, "append"), body=body, idempotent=expected_position is not None
            )
        except ConflictError as e:
            if not _append_was_committed(e, expected_position):
                raise
            current = self.get(session_id)
            if expected_position is None or current.position != expected_position + _prompt_length(prompt):
                raise
            log.info("append to %s was committed by an attempt whose response was lost", session_id)
            return current
        return Session(self._client, parse(response, SessionInfo))

    def fork(
        self,
        session_id: str,
        *,
        ttl_seconds: int | None = None,
        seed: int | None = None,
        idempotency_key: str | None = None,
    ) -> Session:
        """``POST /v1/sessions/{id}/fork``: a new session with a copy of the state (made once, as ``create``).
        ``seed``: the branch draws its own random numbers from here (default: the parent's, the same tokens)."""
        body = drop_none(ttl_seconds=ttl_seconds, seed=seed)
        path = _session_path(session_id, "fork")
        response = self._client._request("POST", path, body=body, headers=_once(idempotency_key))
        return Session(self._client, parse(response, SessionInfo))

    def delete(self, session_id: str) -> SessionDeleted:
        """``DELETE /v1/sessions/{id}``; a retry that finds it gone after a lost response counts as done."""
        try:
            return parse(self._client._request("DELETE", _session_path(session_id)), SessionDeleted)
        except SessionNotFoundError as e:
            if not e._after_lost_response:
                raise
            return SessionDeleted(id=session_id)


class AsyncSessions:
    """Asynchronous twin of ``Sessions``."""

    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    async def create(
        self,
        *,
        model: str,
        prompt: Prompt | None = None,
        seed: int | None = None,
        ttl_seconds: int | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
        block_size: int | None = None,
        observation_temperature: float | None = None,
        idempotency_key: str | None = None,
    ) -> AsyncSession:
        """``POST /v1/sessions``; with ``max_tokens`` the first chunk is generated too (``session.chunk``).
        The session keeps ``block_size`` (default: the model's) for every step that names none.

        Made once, as in ``Sessions.create``."""
        body = drop_none(
            model=model,
            prompt=prompt_value(prompt),
            seed=seed,
            ttl_seconds=ttl_seconds,
            max_tokens=max_tokens,
            temperature=temperature,
            block_size=block_size,
            observation_temperature=observation_temperature,
        )
        response = await self._client._request("POST", "/v1/sessions", body=body, headers=_once(idempotency_key))
        return AsyncSession(self._client, parse(response, SessionInfo))

    async def get(self, session_id: str) -> AsyncSession:
        """Resume a session by id (from any process or replica); refreshes its TTL."""
        response = await self._client._request("GET", _session_path(session_id))
        return AsyncSession(self._client, parse(response, SessionInfo))

    async def generate(
        self,
        session_id: str,
        *,
        max_tokens: int,
        temperature: float | None = None,
        block_size: int | None = None,
        observation_temperature: float | None = None,
        expected_position: int | None = None,
        stop: Stop | None = None,
    ) -> Chunk:
        """``POST /v1/sessions/{id}/generate``; with ``expected_position`` a lost response is retried safely.
        ``block_size`` applies to this call only (default: the session's).  ``stop``: the chunk ends before
        the first of these strings, and the session right after the tokens returned."""
        body = _generate_body(
            max_tokens, temperature, expected_position, False, None, block_size, stop, observation_temperature
        )
        path = _session_path(session_id, "generate")
        try:
            response = await self._client._request("POST", path, body=body, idempotent=expected_position is not None)
        except ConflictError as e:
            if not _busy_with_our_own_attempt(e, expected_position):
                raise
            log.info("generate on %s found the session busy after a lost response; asking for the replay", session_id)
            await self._client._sleep(self._client._retry_delay(0, None))
            response = await self._client._request("POST", path, body=body)
        return parse(response, Chunk)

    def stream(
        self,
        session_id: str,
        *,
        max_tokens: int,
        chunk_size: int | None = None,
        temperature: float | None = None,
        block_size: int | None = None,
        observation_temperature: float | None = None,
        expected_position: int | None = None,
        stop: Stop | None = None,
    ) -> AsyncStream[Chunk]:
        """Streaming ``generate``: one committed ``Chunk`` per ``chunk_size`` tokens."""
        return self._stream(
            session_id,
            max_tokens,
            chunk_size,
            temperature,
            expected_position,
            block_size=block_size,
            stop=stop,
            observation_temperature=observation_temperature,
        )

    def _stream(
        self,
        session_id: str,
        max_tokens: int,
        chunk_size: int | None,
        temperature: float | None,
        expected_position: int | None,
        on_chunk: Callable[[Chunk], None] | None = None,
        block_size: int | None = None,
        observation_temperature: float | None = None,
        stop: Stop | None = None,
    ) -> AsyncStream[Chunk]:
        body = _generate_body(
            max_tokens, temperature, expected_position, True, chunk_size, block_size, stop, observation_temperature
        )
        path = _session_path(session_id, "generate")
        idempotent = expected_position is not None
        return AsyncStream(
            lambda: self._client._request("POST", path, body=body, idempotent=idempotent, stream=True),
            Chunk,
            on_chunk,
        )

    async def append(self, session_id: str, prompt: Prompt, *, expected_position: int | None = None) -> AsyncSession:
        """``POST /v1/sessions/{id}/append``: observed tokens (or text), no generation."""
        body = drop_none(prompt=prompt_value(prompt), expected_position=expected_position)
        try:
            response = await self._client._request(
                "POST", _session_path(session_id, "append"), body=body, idempotent=expected_position is not None
            )
        except ConflictError as e:
            if not _append_was_committed(e, expected_position):
                raise
            current = await self.get(session_id)
            if expected_position is None or current.position != expected_position + _prompt_length(prompt):
                raise
            log.info("append to %s was committed by an attempt whose response was lost", session_id)
            return current
        return AsyncSession(self._client, parse(response, SessionInfo))

    async def fork(
        self,
        session_id: str,
        *,
        ttl_seconds: int | None = None,
        seed: int | None = None,
        idempotency_key: str | None = None,
    ) -> AsyncSession:
        """``POST /v1/sessions/{id}/fork``: a new session with a copy of the state (made once, as ``create``).
        ``seed``: the branch draws its own random numbers from here (default: the parent's, the same tokens)."""
        body = drop_none(ttl_seconds=ttl_seconds, seed=seed)
        path = _session_path(session_id, "fork")
        response = await self._client._request("POST", path, body=body, headers=_once(idempotency_key))
        return AsyncSession(self._client, parse(response, SessionInfo))

    async def delete(self, session_id: str) -> SessionDeleted:
        """``DELETE /v1/sessions/{id}``; a retry that finds it gone after a lost response counts as done."""
        try:
            return parse(await self._client._request("DELETE", _session_path(session_id)), SessionDeleted)
        except SessionNotFoundError as e:
            if not e._after_lost_response:
                raise
            return SessionDeleted(id=session_id)
