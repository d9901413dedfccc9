"""The SDK's `stop`, `echo`, `logprobs` and fork `seed`, sync and async, against a real server."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
import torch

import vssm_client as vc
from tests.server.conftest import CHECKPOINTS, RedisServer, ServerProcess, reference
from vssm import model


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator[tuple[ServerProcess, list[int]]]:
    """A server with one text model, and the 40 tokens it generates after "ROMEO:" at seed 5."""
    d = tmp_path_factory.mktemp("ckpt")
    family, dataset, cfg = CHECKPOINTS["text-vssm"]
    torch.manual_seed(0)
    model.save_checkpoint(model.build_model(family, cfg), d / "text-vssm.safetensors", extra={"dataset": dataset})
    redis = RedisServer(tmp_path_factory.mktemp("redis")).start()
    srv = ServerProcess(d, redis.url).start()
    yield srv, reference(d, "text-vssm", list(b"ROMEO:"), 5, [40])[0]
    srv.stop()
    redis.stop()


def stop_in(tokens: list[int]) -> tuple[str, int]:
    """An ASCII pair the tokens contain past position 8, and where the output ends with it as stop."""
    i = next(i for i in range(8, len(tokens) - 1) if tokens[i] < 128 and tokens[i + 1] < 128)
    stop = bytes(tokens[i : i + 2]).decode()
    return stop, bytes(tokens).find(stop.encode())


@pytest.mark.slow
def test_completions_and_sessions_take_the_openai_fields(stack):
    srv, ref = stack
    stop, k = stop_in(ref)
    with vc.Client(base_url=srv.url) as client:
        out = client.completions.create(
            model="text-vssm", prompt="ROMEO:", max_tokens=40, seed=5, stop=[stop], echo=True, logprobs=2
        )
        assert out.finish_reason == "stop" and out.tokens == list(b"ROMEO:") + ref[:k]
        lp = out.choices[0].logprobs
        assert isinstance(lp, vc.Logprobs) and len(lp.tokens) == 6 + k and lp.token_logprobs[:6] == [None] * 6
        assert all(len(top) == 2 for top in lp.top_logprobs[6:] if top is not None)
        streamed = list(client.completions.stream(model="text-vssm", prompt="ROMEO:", max_tokens=40, seed=5, stop=stop))
        assert [t for c in streamed for t in c.tokens] == ref[:k] and streamed[-1].finish_reason == "stop"

        s = client.sessions.create(model="text-vssm", prompt="ROMEO:", seed=5)
        chunk = s.generate(max_tokens=40, stop=stop)
        assert chunk.tokens == ref[:k] and chunk.finish_reason == "stop" and s.position == 6 + k
        branch = s.fork(seed=77)
        assert branch.seed == 77 and branch.position == s.position
        more = list(s.stream(max_tokens=4, chunk_size=2, stop=["\x00\x00\x00"]))
        assert [t for c in more for t in c.tokens] == ref[k : k + 4] and s.position == 10 + k
        direct = client.sessions.generate(branch.id, max_tokens=3, stop="\x00\x00")
        assert len(direct.tokens) == 3 and direct.finish_reason == "length"


@pytest.mark.slow
def test_async_twins_take_them_too(stack):
    srv, ref = stack
    stop, k = stop_in(ref)

    async def main() -> None:
        async with vc.AsyncClient(base_url=srv.url) as client:
            out = await client.completions.create(
                model="text-vssm", prompt="ROMEO:", max_tokens=40, seed=5, stop=stop, logprobs=0
            )
            assert out.tokens == ref[:k] and out.choices[0].logprobs is not None
            assert out.choices[0].logprobs.top_logprobs == [{}] * k
            events = [
                e
                async for e in client.completions.stream(
                    model="text-vssm", prompt="ROMEO:", max_tokens=40, seed=5, stop=stop, echo=True, chunk_size=3
                )
            ]
            assert "".join(e.text for e in events) == "ROMEO:" + out.text
            s = await client.sessions.create(model="text-vssm", prompt="ROMEO:", seed=5)
            chunks = [c async for c in s.stream(max_tokens=40, chunk_size=5, stop=stop)]
            assert [t for c in chunks for t in c.tokens] == ref[:k] and s.position == 6 + k
            again = await s.generate(max_tokens=2, stop=stop)  # the next tokens are the stop sequence itself
            assert again.tokens == [] and again.finish_reason == "stop" and s.position == 6 + k
            assert (await s.generate(max_tokens=2, stop="\x00\x00")).tokens == ref[k : k + 2]
            branch = await s.fork(seed=8)
            assert branch.seed == 8
            direct = await client.sessions.generate(branch.id, max_tokens=2, stop=[stop])
            assert direct.start_position == 8 + k
            assert [c async for c in client.sessions.stream(branch.id, max_tokens=2, stop=stop)][-1].position == 12 + k

    asyncio.run(main())
