"""``POST /v1/completions``: one-shot generation, OpenAI-compatible (streaming included)."""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator

from fastapi import APIRouter, Request

from ..deps import Context, ContextDep, OwnerDep, RegistryDep
from ..errors import bad_request
from ..openapi import errors, json_or_stream
from ..registry import ServedModel
from ..schemas import MAX_SEED, Completion, CompletionChoice, CompletionCreate, Usage
from ..sse import sse_response, started, with_keepalive

router = APIRouter(prefix="/v1", tags=["completions"])

DEFAULT_CHUNK = 64


def check_tokens(ctx: Context, served: ServedModel, position: int, n: int) -> None:
    if n > ctx.settings.max_tokens:
        raise bad_request(
            "max_tokens_exceeded",
            f"max_tokens {n} is above this server's limit {ctx.settings.max_tokens}",
            "max_tokens",
        )
    served.check_room(position, n)


def check_prompt(ctx: Context, served: ServedModel, n: int) -> None:
    """One request's prompt or append: at most the server's limit for this model (memory no longer
    grows with it, but the time to read it does)."""
    limit = ctx.settings.prompt_limit(served.id)
    if n > limit:
        raise bad_request(
            "prompt_too_long",
            f"a prompt of {n} tokens is above this server's limit {limit} for model {served.id}",
            "prompt",
        )


@router.post(
    "/completions",
    response_model=None,
    responses={**json_or_stream(Completion), **errors(400, 401, 404, 413, 429, 503)},
)
async def create_completion(
    body: CompletionCreate, request: Request, ctx: ContextDep, registry: RegistryDep, owner: OwnerDep
):
    served = registry.get(body.model)
    prompt = served.encode(body.prompt)
    check_prompt(ctx, served, len(prompt))
    if body.n > ctx.settings.max_n:
        raise bad_request("n_exceeded", f"n {body.n} is above this server's limit {ctx.settings.max_n}", "n")
    check_tokens(ctx, served, len(prompt), body.max_tokens)
    seed = body.seed if body.seed is not None else secrets.randbits(63)
    seeds = [(seed + i) % (MAX_SEED + 1) for i in range(body.n)]
    block = served.block_size(body.block_size)  # 0: one parallel pass
    cid, created = "cmpl-" + secrets.token_hex(12), int(time.time())
    batcher = ctx.batcher(served.id)

    carry: list[list[int]] = [[] for _ in seeds]  # per choice: a partial UTF-8 character held back

    def completion(rows: list[list[int]], finished: bool, usage: Usage | None) -> Completion:
        choices = []
        for i, r in enumerate(rows):
            text, carry[i] = served.decode_chunk(r, carry[i], final=finished)
            choices.append(CompletionChoice(index=i, text=text, tokens=r, finish_reason="length" if finished else None))
        return Completion(
            id=cid, created=created, model=served.id, choices=choices, usage=usage, seed=seed, block_size=block or None
        )

    usage = Usage(
        prompt_tokens=len(prompt),
        completion_tokens=body.n * body.max_tokens,
        total_tokens=len(prompt) + body.n * body.max_tokens,
    )
    if not body.stream:
        async with ctx.admit():
            state = await batcher.begin(prompt, seeds)
            tokens, _ = await batcher.generate(state, body.max_tokens, body.temperature, False, block)
        return completion(tokens.tolist(), True, usage)

    chunk = min(body.chunk_size or DEFAULT_CHUNK, body.max_tokens)
    slot = ctx.slot()  # refuse with 429 before the stream starts; released when it ends
    t0 = time.perf_counter()

    async def chunks() -> AsyncIterator[Completion]:
        try:
            state = await batcher.begin(prompt, seeds)
            done = 0
            while done < body.max_tokens:
                n = min(chunk, body.max_tokens - done)
                last = done + n == body.max_tokens
                # blocks are aligned to absolute positions: chunks cut them anywhere, the tokens stay
                tokens, state = await batcher.generate(state, n, body.temperature, not last, block)
                done += n
                yield completion(tokens.tolist(), last, usage if last else None)
        finally:
            slot.release()

    def first() -> None:
        ctx.metrics.first_chunk.labels("/v1/completions").observe(time.perf_counter() - t0)

    events = await started(chunks())
    return sse_response(with_keepalive(events, ctx.settings.keepalive_seconds, first), slot.release)
