"""``/v1/sessions``: resumable generation over states kept in the store.

Every write after creation is a compare-and-set on the record's version: a request reads the
record, computes, and commits only if nobody committed in between (else 409 ``session_busy``).
``expected_position`` makes retries safe: a retry of a generate call whose response was lost is
answered from the record's ``last_op`` instead of generating twice.

Block size: a session keeps the one it was created with (the model's default when none was named),
so its tokens do not change if the served default does; a generate call may name another for itself.
Stored and passed to the model as an int, 0 for one parallel pass; null at the API.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import re
import secrets
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import replace
from typing import Annotated

import torch
from fastapi import APIRouter, Header, Response, status

from vssm.model import GenState, StateError
from vssm.model.state import is_format_1

from ..deps import Context, ContextDep, HolderDep, OwnerDep, RegistryDep
from ..errors import APIError, bad_request, conflict, not_found
from ..openapi import errors, json_or_stream
from ..registry import Registry
from ..schemas import (
    Chunk,
    FinishReason,
    Session,
    SessionAppend,
    SessionCreate,
    SessionDeleted,
    SessionFork,
    SessionGenerate,
)
from ..sse import stream_response
from ..stops import scan, stop_sequences
from ..store import SessionRecord
from .completions import DEFAULT_CHUNK, STOP_WINDOW, check_prompt, check_tokens

router = APIRouter(prefix="/v1/sessions", tags=["sessions"])


def new_id() -> str:
    return "sess_" + secrets.token_hex(16)  # 128 random bits


def public(rec: SessionRecord, chunk: Chunk | None = None) -> Session:
    return Session(
        id=rec.id,
        model=rec.model,
        position=rec.position,
        seed=rec.seed,
        block_size=rec.block_size or None,
        observation_temperature=rec.observation_temperature,
        created_at=rec.created_at,
        expires_at=rec.expires_at,
        ttl_seconds=rec.ttl_seconds,
        state_bytes=len(rec.state),
        fingerprint=rec.fingerprint,
        chunk=chunk,
    )


# ``Idempotency-Key``: a retried create or fork with the same key returns the first one's session
# instead of making another (the client sends one per call, so a lost response leaves no orphan).
IdempotencyKey = Annotated[str | None, Header(alias="Idempotency-Key", min_length=1, max_length=200)]


async def _once(
    ctx: Context,
    owner: str,
    holder: str,
    op: str,
    key: str | None,
    request: str,
    ttl: int,
    make: Callable[[], Awaitable[Session]],
) -> Session:
    """Run ``make`` once per (caller, ``op``, idempotency ``key``): a repeat of the same request gets
    the first response back; the same key on another request is a 409 ``idempotency_key_reused``."""
    if key is None:
        return await make()
    claim = hashlib.sha256(f"{owner}\0{op}\0{key}".encode()).hexdigest()
    digest = hashlib.sha256(request.encode()).hexdigest()

    def replay(found: str) -> Session:
        prior = json.loads(found)
        if prior["request"] != digest:
            raise conflict("idempotency_key_reused", f"Idempotency-Key {key!r} was used for another request")
        return Session.model_validate(prior["response"])

    found = await ctx.store_call("recall", ctx.store.recall(claim))
    if found is not None:
        return replay(found)
    made = await make()
    value = json.dumps({"request": digest, "response": made.model_dump(mode="json")})
    found = await ctx.store_call("claim", ctx.store.claim(claim, value, ttl))
    if found is None:
        return made
    # a concurrent request with the same key claimed it first: keep its session, drop ours
    await ctx.store_call("delete", ctx.store.delete(made.id))
    await ctx.release(holder, made.id)
    return replay(found)


def _ttl(ctx: Context, ttl: int | None) -> int:
    ttl = ttl or ctx.settings.session_ttl_seconds
    if ttl > ctx.settings.max_ttl_seconds:
        raise bad_request(
            "ttl_exceeded",
            f"ttl_seconds {ttl} is above this server's limit {ctx.settings.max_ttl_seconds}",
            "ttl_seconds",
        )
    return ttl


SESSION_ID = re.compile(r"sess_[0-9a-f]{32}")


async def _read(ctx: Context, sid: str, holder: str) -> SessionRecord | None:
    """The stored session, its TTL refreshed, and its quota entry where the store folds that into the read
    and the session counts against ``holder`` (``quota_fresh``); None if it does not exist."""
    return await ctx.store_call("get", ctx.store.get(sid, holder if ctx.quotas else ""))


async def _load(ctx: Context, sid: str, owner: str, holder: str) -> SessionRecord:
    rec, touching = await _load_for_write(ctx, sid, owner, holder)
    if touching is not None:
        await touching  # the read refreshed its TTL: so does its quota
    return rec


async def _load_for_write(
    ctx: Context, sid: str, owner: str, holder: str
) -> tuple[SessionRecord, asyncio.Task[None] | None]:
    """The caller's session, and the refresh of its quota entry (the read refreshed its TTL).  Where the
    session counts against the caller's ``holder``, a store that can refreshes it in the read itself
    (``quota_fresh``: one round trip, none beside the model call); else the refresh runs beside whatever
    the caller does next: a caller that commits hands it to :func:`_commit`, which waits for it; one that
    does not lets it finish on its own (:meth:`Context.touch_soon`)."""
    if not SESSION_ID.fullmatch(sid):  # not an id we make: no store call, and no echo of what may be huge
        raise not_found("session_not_found", "no session has this id")
    rec = await _read(ctx, sid, holder)
    if rec is None or rec.owner != owner:  # another key's session is indistinguishable from none
        ctx.metrics.sessions.labels("expired").inc()
        raise not_found("session_not_found", f"session {sid} does not exist or has expired")
    touching = ctx.touch_owed(rec)
    served = ctx.registry.models.get(rec.model) if ctx.registry is not None else None
    if rec.block_size is None and served is not None:  # made before sessions recorded it: pin the default now
        rec = replace(rec, block_size=served.block_size())
    if rec.observation_temperature is None and served is not None:  # the same, for the observation temperature
        rec = replace(rec, observation_temperature=served.observation_temperature())
    return rec, touching


def _incompatible(rec: SessionRecord, exc: StateError) -> APIError:
    return APIError(409, "state_incompatible", f"session {rec.id}: {exc}")


async def _commit(
    ctx: Context,
    rec: SessionRecord,
    expected_version: int,
    read_touch: asyncio.Task[None] | None = None,
    previous: bytes | None = None,
) -> SessionRecord:
    """Write ``rec`` if the session is still at ``expected_version``, and refresh its quota entry: in the
    write itself where the store can (``quota_fresh``), else as below.

    ``read_touch``: the refresh the read started beside the model call; it must have succeeded before
    anything is written (a store failure is a 503 before the commit, as it was before the model call).
    The refresh after the write is a task of its own: it is issued once the write is acknowledged,
    so the entry never expires before its session, and nobody waits for it (a failure is logged;
    the next read or write of the session refreshes the entry again).  Skipping it would let the entry
    expire before the session, and no refresh brings a pruned entry back: the session would stop counting.

    ``previous``: the state the write replaces; where an earlier release stored it (state format 1) and this
    write stores this release's, the session counts as upgraded (``vssm_sessions_total{event="upgraded"}``),
    once: counted at the write, not where the worker converts (a call may convert a state more than once).
    """
    if read_touch is not None:
        await asyncio.shield(read_touch)  # shielded: a client that disconnects must not cancel it
    ctx.metrics.state_bytes.observe(len(rec.state))
    done = await ctx.store_call("cas", ctx.store.compare_and_set(rec, expected_version, refresh_quota=ctx.quotas))
    if done is None:
        found = await _read(ctx, rec.id, rec.holder)
        if found is None:
            raise not_found("session_not_found", f"session {rec.id} was deleted or expired meanwhile")
        ctx.touch_owed(found)  # the read refreshed the session's TTL: so does its quota
        raise conflict("session_busy", f"session {rec.id} was changed by a concurrent request; re-read and retry")
    ctx.touch_owed(done)
    if previous is not None and is_format_1(previous) and not is_format_1(rec.state):
        ctx.metrics.sessions.labels("upgraded").inc()
    return done


def _check_position(rec: SessionRecord, expected: int | None) -> None:
    if expected is not None and rec.position != expected:
        raise conflict(
            "position_mismatch", f"session {rec.id} is at position {rec.position}, not the expected {expected}"
        )


@router.post("", status_code=status.HTTP_201_CREATED, responses=errors(400, 401, 404, 409, 413, 429, 503))
async def create_session(
    body: SessionCreate,
    ctx: ContextDep,
    registry: RegistryDep,
    owner: OwnerDep,
    holder: HolderDep,
    idempotency_key: IdempotencyKey = None,
) -> Session:
    ttl = _ttl(ctx, body.ttl_seconds)
    return await _once(
        ctx,
        owner,
        holder,
        "create",
        idempotency_key,
        body.model_dump_json(),
        ttl,
        lambda: _create(body, ctx, registry, owner, holder, ttl),
    )


async def _create(body: SessionCreate, ctx: Context, registry: Registry, owner: str, holder: str, ttl: int) -> Session:
    served = registry.get(body.model)
    prompt = served.encode(body.prompt)
    check_prompt(ctx, served, len(prompt))
    served.check_room(len(prompt), 0, "prompt")
    if body.max_tokens:
        check_tokens(ctx, served, len(prompt), body.max_tokens)
    seed = body.seed if body.seed is not None else secrets.randbits(63)
    block = served.block_size(body.block_size)
    ratio = served.observation_temperature(body.observation_temperature)
    batcher = ctx.batcher(served.id)
    sid = new_id()
    await ctx.reserve(holder, sid, ttl)  # before any model work: a refused request costs nothing
    try:
        out: list[int] | None = None
        async with ctx.admit():
            state = await batcher.begin(prompt, [seed])
            if body.max_tokens:
                tokens, state = await batcher.generate(state, body.max_tokens, body.temperature, True, block, ratio)
                assert state is not None
                out = tokens[0].tolist()
            state_bytes = await batcher.serialize(state)
        rec = SessionRecord(
            id=sid,
            model=served.id,
            fingerprint=served.fingerprint,
            position=int(state.position[0]),
            seed=seed,
            owner=owner,
            created_at=time.time(),
            ttl_seconds=ttl,
            state=state_bytes,
            holder=holder,
            block_size=block,
            observation_temperature=ratio,
        )
        if out is not None:
            text, rec.text_carry = served.decode_chunk(out, [])
        ctx.metrics.state_bytes.observe(len(rec.state))
        rec = await ctx.store_call("create", ctx.store.create(rec))
    except BaseException:
        await _release_quietly(ctx, holder, sid)
        raise
    ctx.metrics.sessions.labels("created").inc()
    c = None
    if out is not None:
        c = Chunk(
            session_id=rec.id,
            start_position=len(prompt),
            position=rec.position,
            tokens=out,
            text=text,
            finish_reason="length",
            block_size=block or None,
            observation_temperature=ratio,
        )
    return public(rec, c)


async def _release_quietly(ctx: Context, holder: str, sid: str) -> None:
    """Give back the quota of a session that was never made (left held, it expires with its TTL)."""
    with contextlib.suppress(APIError):
        await ctx.release(holder, sid)


@router.get("/{sid}", responses=errors(401, 404, 503))
async def get_session(sid: str, ctx: ContextDep, owner: OwnerDep, holder: HolderDep) -> Session:
    return public(await _load(ctx, sid, owner, holder))


@router.delete("/{sid}", responses=errors(401, 404, 503))
async def delete_session(sid: str, ctx: ContextDep, owner: OwnerDep, holder: HolderDep) -> SessionDeleted:
    rec = await _load(ctx, sid, owner, holder)
    if not await ctx.store_call("delete", ctx.store.delete(sid)):
        raise not_found("session_not_found", f"session {sid} does not exist or has expired")
    await ctx.release(rec.holder, sid)
    ctx.metrics.sessions.labels("deleted").inc()
    return SessionDeleted(id=sid)


@router.post("/{sid}/fork", status_code=status.HTTP_201_CREATED, responses=errors(400, 401, 404, 409, 413, 429, 503))
async def fork_session(
    sid: str,
    ctx: ContextDep,
    owner: OwnerDep,
    holder: HolderDep,
    body: SessionFork | None = None,
    idempotency_key: IdempotencyKey = None,
) -> Session:
    rec = await _load(ctx, sid, owner, holder)
    ttl = _ttl(ctx, body.ttl_seconds) if body and body.ttl_seconds else rec.ttl_seconds
    state, seed = rec.state, rec.seed
    if body and body.seed is not None:
        # a copy that draws other random numbers from here on: every family keeps its rows' seeds
        # in the state, and randomness is keyed by (seed, position), so the branch is a sample of
        # the same process that differs from the parent's from its position on
        try:
            parent = GenState.from_bytes(rec.state)
        except StateError as exc:
            raise _incompatible(rec, exc) from exc
        state, seed = parent.evolve(seed=torch.full_like(parent.seed, body.seed)).to_bytes(), body.seed

    async def fork() -> Session:
        child = replace(
            rec,
            id=new_id(),
            created_at=time.time(),
            ttl_seconds=ttl,
            version=0,
            last_op=None,
            holder=holder,
            state=state,
            seed=seed,
            quota_fresh=False,  # the parent's read, not the child's
        )
        await ctx.reserve(holder, child.id, ttl)
        try:
            child = await ctx.store_call("create", ctx.store.create(child))
        except BaseException:
            await _release_quietly(ctx, holder, child.id)
            raise
        ctx.metrics.sessions.labels("forked").inc()
        return public(child)

    request = body.model_dump_json() if body else "{}"
    return await _once(ctx, owner, holder, f"fork {sid}", idempotency_key, request, ttl, fork)


@router.post("/{sid}/append", responses=errors(400, 401, 404, 409, 413, 429, 503))
async def append(
    sid: str, body: SessionAppend, ctx: ContextDep, registry: RegistryDep, owner: OwnerDep, holder: HolderDep
) -> Session:
    rec, touching = await _load_for_write(ctx, sid, owner, holder)
    served = registry.for_session(rec.model, rec.fingerprint)
    tokens = served.encode(body.prompt)
    last = rec.last_op or {}
    if (
        body.expected_position is not None
        and rec.position != body.expected_position
        and last.get("op") == "append"
        and last.get("start") == body.expected_position
        and last.get("tokens") == tokens
        and rec.position == body.expected_position + len(tokens)
    ):
        return public(rec)  # the retry of an append that already committed
    _check_position(rec, body.expected_position)
    check_prompt(ctx, served, len(tokens))
    served.check_room(rec.position, len(tokens), "prompt")
    if not tokens:
        return public(rec)
    async with ctx.admit():
        try:
            blob = await ctx.batcher(served.id).append_stored(rec.state, torch.tensor([tokens], dtype=torch.long))
        except StateError as exc:
            raise _incompatible(rec, exc) from exc
    new = replace(
        rec,
        state=blob,
        position=rec.position + len(tokens),
        last_op={"op": "append", "start": rec.position, "tokens": tokens},
        text_carry=[],  # observed tokens end the generated text; a held-back partial character stays out
    )
    ctx.metrics.sessions.labels("resumed").inc()
    return public(await _commit(ctx, new, rec.version, touching, previous=rec.state))


@router.post(
    "/{sid}/generate",
    response_model=None,
    responses={**json_or_stream(Chunk), **errors(400, 401, 404, 409, 413, 429, 503)},
)
async def generate(
    sid: str, body: SessionGenerate, ctx: ContextDep, registry: RegistryDep, owner: OwnerDep, holder: HolderDep
) -> Chunk | Response:
    rec, touching = await _load_for_write(ctx, sid, owner, holder)
    served = registry.for_session(rec.model, rec.fingerprint)
    block = served.block_size(body.block_size, rec.block_size)  # the call's, else the session's
    ratio = served.observation_temperature(body.observation_temperature, rec.observation_temperature)
    stops = stop_sequences(served, body.stop)
    stop_list = [s.decode() for s in stops]
    last = rec.last_op or {}
    tokens_before = last.get("tokens", [])
    # the last generate call, finished (older records have no finish_reason: they always ran to length)
    finished = last.get("finish_reason") or ("length" if len(tokens_before) == last.get("max_tokens") else None)
    replay = (
        body.expected_position is not None
        and rec.position != body.expected_position
        and last.get("op") == "generate"
        and last.get("start") == body.expected_position
        and last.get("max_tokens") == body.max_tokens
        and last.get("block_size", block) == block  # the same request: its tokens, not another block size's
        and last.get("observation_temperature", ratio) == ratio
        and last.get("stop", []) == stop_list
        and finished is not None
        and rec.position == body.expected_position + len(tokens_before)
    )
    if replay:
        chunk = Chunk(
            session_id=sid,
            start_position=last["start"],
            position=rec.position,
            tokens=tokens_before,
            text=served.decode_chunk(tokens_before, last.get("carry_in", []))[0],
            finish_reason=finished,
            block_size=block or None,
            observation_temperature=ratio,
            replayed=True,
        )
        if not body.stream:
            return chunk

        async def replayed() -> AsyncGenerator[Chunk, None]:
            yield chunk

        return await stream_response(replayed(), ctx.settings.keepalive_seconds, lambda c: True)
    _check_position(rec, body.expected_position)
    check_tokens(ctx, served, rec.position, body.max_tokens)
    ctx.metrics.sessions.labels("resumed").inc()
    batcher = ctx.batcher(served.id)
    start, carry_in = rec.position, rec.text_carry

    done: list[int] = []  # tokens released (and committed) by this call
    pending: list[int] = []  # generated after them, held back: they may begin a stop sequence
    ahead = rec.state  # the state after done + pending
    generated = 0

    async def advance(n: int) -> tuple[list[int], FinishReason | None]:
        """Generate ``n`` more tokens from ``ahead``; the tokens released, and how the call ends."""
        nonlocal ahead, pending, generated
        try:
            # blocks are aligned to absolute positions: streamed chunks cut them anywhere, the tokens stay
            tokens, ahead = await batcher.generate_stored(ahead, n, body.temperature, block, ratio)
        except StateError as exc:
            raise _incompatible(rec, exc) from exc
        generated += n
        pending += tokens[0].tolist()
        k, stopped = scan(pending, stops, generated == body.max_tokens)
        out, pending = pending[:k], ([] if stopped else pending[k:])
        return out, "stop" if stopped else ("length" if generated == body.max_tokens else None)

    async def commit(out: list[int], finish: FinishReason | None, exact: bool) -> Chunk:
        """Commit the state after ``out``, then return them: a chunk is committed before anyone sees it.

        ``exact``: ``ahead`` was made by one call of ``len(out)`` tokens from the committed state.
        Otherwise (tokens held back or dropped after a stop, or several windows) those tokens are
        generated again in one call from the committed state (the same tokens: chunks do not change
        tokens), so the stored state is, bit for bit, that of a session whose calls returned these chunks.
        """
        nonlocal rec
        blob = ahead
        if not exact:
            blob = rec.state
            if out:
                again, blob = await batcher.generate_stored(rec.state, len(out), body.temperature, block, ratio)
                if again[0].tolist() != out:
                    raise RuntimeError(f"session {sid}: tokens generated again differ from the first ones")
        done.extend(out)
        text, carry = served.decode_chunk(out, rec.text_carry)
        last_op = {
            "op": "generate",
            "start": start,
            "max_tokens": body.max_tokens,
            "tokens": list(done),  # a copy: the in-memory store keeps this dict as it is
            "carry_in": carry_in,
            "block_size": block,
            "observation_temperature": ratio,
            "stop": stop_list,
            "finish_reason": finish,
        }
        if out or rec.last_op != last_op:  # a call that ends with nothing still records how it ended
            new = replace(rec, state=blob, position=rec.position + len(out), last_op=last_op, text_carry=carry)
            rec = await _commit(ctx, new, rec.version, touching, previous=rec.state)
        return Chunk(
            session_id=sid,
            start_position=rec.position - len(out),
            position=rec.position,
            tokens=out,
            text=text,
            finish_reason=finish,
            block_size=block or None,
            observation_temperature=ratio,
        )

    if not body.stream:
        # with stop sequences, a window at a time: output that stops early spares the rest
        size = min(STOP_WINDOW, body.max_tokens) if stops else body.max_tokens
        out: list[int] = []
        finish: FinishReason | None = None
        async with ctx.admit():
            while finish is None:
                got, finish = await advance(min(size, body.max_tokens - generated))
                out += got
            return await commit(out, finish, exact=generated == len(out) <= size)

    slot = ctx.slot()  # refuse with 429 before the stream starts; released when it ends
    size = min(body.chunk_size or DEFAULT_CHUNK, body.max_tokens)
    t0 = time.perf_counter()

    async def streamed() -> AsyncGenerator[Chunk, None]:
        try:
            finish: FinishReason | None = None
            while finish is None:
                held = bool(pending)
                out, finish = await advance(min(size, body.max_tokens - generated))
                if out or finish is not None:
                    yield await commit(out, finish, exact=not held and not pending and finish != "stop")
        finally:
            slot.release()

    def first() -> None:
        ctx.metrics.first_chunk.labels("/v1/sessions/{sid}/generate").observe(time.perf_counter() - t0)

    return await stream_response(
        streamed(), ctx.settings.keepalive_seconds, lambda c: c.finish_reason is not None, first, slot.release
    )
