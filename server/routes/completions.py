"""``POST /v1/completions``: one-shot generation, OpenAI-compatible (streaming included)."""

from __future__ import annotations

import contextlib
import secrets
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field

from fastapi import APIRouter, Request

from ..deps import Context, ContextDep, OwnerDep, RegistryDep
from ..errors import bad_request
from ..logprobs import Scored, TokenLogprobs, score_rows
from ..openapi import errors, json_or_stream
from ..registry import ServedModel
from ..schemas import MAX_SEED, Completion, CompletionChoice, CompletionCreate, FinishReason, Logprobs, Usage
from ..sse import stream_response
from ..stops import scan, stop_sequences

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
    stops = stop_sequences(served, body.stop)
    seed = body.seed if body.seed is not None else secrets.randbits(63)
    seeds = [(seed + i) % (MAX_SEED + 1) for i in range(body.n)]
    block = served.block_size(body.block_size)  # 0: one parallel pass
    ratio = served.observation_temperature(body.observation_temperature)
    cid, created = "cmpl-" + secrets.token_hex(12), int(time.time())
    batcher = ctx.batcher(served.id)
    scored = body.logprobs is not None
    choices = [_Choice(i, TokenLogprobs(served.text) if scored else None) for i in range(body.n)]
    echoed = served.decode_chunk(prompt, [], final=True)[0] if body.echo else ""

    def completion(parts: list[_Part], usage: Usage | None) -> Completion:
        out = []
        for c, tokens, scores in parts:
            text, c.carry = served.decode_chunk(tokens, c.carry, final=c.finish is not None)
            lp = None
            if body.echo and not c.echoed:  # the prompt goes in front of the choice's first part
                c.echoed, text, tokens = True, echoed + text, [*prompt, *tokens]
                scores = [None] * len(prompt) + scores  # a prompt is read, not scored
                if c.logprobs is not None:
                    lp = c.logprobs.part(prompt, scores[: len(prompt)], final=True)
                    rest = c.logprobs.part(tokens[len(prompt) :], scores[len(prompt) :])
                    lp = Logprobs(**{k: getattr(lp, k) + getattr(rest, k) for k in Logprobs.model_fields})
            elif c.logprobs is not None:
                lp = c.logprobs.part(tokens, scores)
            out.append(CompletionChoice(index=c.index, text=text, tokens=tokens, finish_reason=c.finish, logprobs=lp))
        return Completion(
            id=cid,
            created=created,
            model=served.id,
            choices=out,
            usage=usage,
            seed=seed,
            block_size=block or None,
            observation_temperature=ratio,
        )

    def usage() -> Usage:
        completion_tokens = sum(c.count for c in choices)
        return Usage(
            prompt_tokens=len(prompt), completion_tokens=completion_tokens, total_tokens=len(prompt) + completion_tokens
        )

    async def pieces(size: int) -> AsyncGenerator[list[_Part], None]:
        """Generate ``size`` tokens at a time until every choice has finished; yield each choice's
        released tokens (only choices that release tokens or finish; nothing when none does)."""
        state = await batcher.begin(prompt, seeds)
        done = 0
        while done < body.max_tokens and any(c.finish is None for c in choices):
            n = min(size, body.max_tokens - done)
            last = done + n == body.max_tokens
            # blocks are aligned to absolute positions: chunks cut them anywhere, the tokens stay
            if scored:
                tokens, state, log_p = await batcher.generate_scored(state, n, body.temperature, not last, block, ratio)
                rows = score_rows(tokens, log_p, body.logprobs or 0, served.text)
            else:
                tokens, state = await batcher.generate(state, n, body.temperature, not last, block, ratio)
                rows = [[None] * n for _ in choices]
            done += n
            parts = []
            for c, row, scores in zip(choices, tokens.tolist(), rows, strict=True):
                if c.finish is None:
                    part = c.feed(row, scores, stops, last)
                    if part[1] or c.finish is not None:
                        parts.append(part)
            if parts:
                yield parts

    if not body.stream:
        # with stop sequences, a window at a time: a choice that stops early spares the rest
        size = min(STOP_WINDOW, body.max_tokens) if stops else body.max_tokens
        got: dict[int, _Part] = {c.index: (c, [], []) for c in choices}
        async with ctx.admit():
            async for parts in pieces(size):
                for c, tokens, scores in parts:
                    got[c.index][1].extend(tokens)
                    got[c.index][2].extend(scores)
        return completion([got[c.index] for c in choices], usage())

    chunk = min(body.chunk_size or DEFAULT_CHUNK, body.max_tokens)
    slot = ctx.slot()  # refuse with 429 before the stream starts; released when it ends
    t0 = time.perf_counter()

    async def chunks() -> AsyncGenerator[Completion, None]:
        try:
            # closed with this one: a stream sent whole closes it at its last chunk, not at its end
            async with contextlib.aclosing(pieces(chunk)) as generated:
                async for parts in generated:
                    finished = all(c.finish is not None for c in choices)
                    yield completion(parts, usage() if finished else None)
        finally:
            slot.release()

    def first() -> None:
        ctx.metrics.first_chunk.labels("/v1/completions").observe(time.perf_counter() - t0)

    def final(c: Completion) -> bool:  # the producer's loop ends once every choice has finished
        return c.usage is not None

    return await stream_response(chunks(), ctx.settings.keepalive_seconds, final, first, slot.release)


STOP_WINDOW = 256  # tokens generated per step of a non-streamed completion with stop sequences


@dataclass
class _Choice:
    """One choice of a completion as it is generated: tokens held back, text carried, how it ended."""

    index: int
    logprobs: TokenLogprobs | None  # None: no logprobs asked for
    pending: list[int] = field(default_factory=list)  # generated, not released: they may begin a stop sequence
    pending_scores: list[Scored | None] = field(default_factory=list)  # theirs, when scored
    carry: list[int] = field(default_factory=list)  # a partial UTF-8 character held back from the text
    count: int = 0  # generated tokens released
    finish: FinishReason | None = None
    echoed: bool = False

    def feed(self, tokens: list[int], scores: list[Scored | None], stops: list[bytes], last: bool) -> _Part:
        """What this choice releases after ``tokens`` were generated (``last``: the request's last)."""
        self.pending += tokens
        self.pending_scores += scores
        k, stopped = scan(self.pending, stops, last)
        released, released_scores = self.pending[:k], self.pending_scores[:k]
        self.pending, self.pending_scores = ([], []) if stopped else (self.pending[k:], self.pending_scores[k:])
        self.count += k
        if stopped:
            self.finish = "stop"
        elif last:
            self.finish = "length"
        return self, released, released_scores


_Part = tuple[_Choice, list[int], list[Scored | None]]  # a choice, the tokens it releases, their scores
