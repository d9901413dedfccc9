"""``block_size`` in the SDK: sent where given (never otherwise), echoed back, on the model cards, in
sync and async twins and on the command line (docs/api.md, "Block size")."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

import vssm_client as vc
from tests.client.fakes import BASE, CURVE, FakeServer, make_async_client, make_client
from vssm_client._cli import main


def test_model_cards_carry_the_default_and_the_curve() -> None:
    client, _ = make_client(FakeServer())
    m = client.models.get("mnist-vssm")
    assert m.default_block_size == 28 and all(isinstance(p, vc.BlockPoint) for p in m.block_curve)
    assert [p.model_dump() for p in m.block_curve] == CURVE
    fastest = min(m.block_curve, key=lambda p: p.ms_per_sequence_batch_1 or 0)
    assert (fastest.block_size, fastest.bound) == (784, "iw")
    text = client.models.list()[1]
    assert text.default_block_size is None and text.block_curve == []
    assert vc.Model(id="old-server").block_curve == []  # a server without the fields


def test_completions_send_block_size_only_when_given() -> None:
    server = FakeServer()
    client, _ = make_client(server)
    out = client.completions.create(model="mnist-vssm", max_tokens=4, seed=1, block_size=7)
    assert out.block_size == 7
    assert client.completions.create(model="mnist-vssm", max_tokens=4).block_size == 28  # the model's default
    chunks = list(client.completions.stream(model="mnist-vssm", max_tokens=5, block_size=3, chunk_size=2))
    assert [c.block_size for c in chunks] == [3, 3, 3]
    bodies = server.bodies("/completions")
    assert [b.get("block_size") for b in bodies] == [7, None, 3] and "block_size" not in bodies[1]


def test_a_session_keeps_its_block_size_and_a_step_may_override_it() -> None:
    server = FakeServer()
    client, _ = make_client(server)
    s = client.sessions.create(model="mnist-vssm", seed=3, block_size=4, max_tokens=2)
    assert s.block_size == 4 and s.chunk is not None and s.chunk.block_size == 4
    assert s.generate(max_tokens=3).block_size == 4
    assert s.generate(max_tokens=3, block_size=1).block_size == 1
    assert [c.block_size for c in s.stream(max_tokens=5, chunk_size=2, block_size=2)] == [2, 2, 2]
    assert client.sessions.generate(s.id, max_tokens=1, block_size=9).block_size == 9
    assert [c.block_size for c in client.sessions.stream(s.id, max_tokens=2, block_size=5)] == [5]
    assert s.refresh().block_size == 4 and s.fork().block_size == 4
    assert server.bodies("/sessions")[0]["block_size"] == 4
    sent = [b.get("block_size") for b in server.bodies("/generate")]
    assert sent == [None, 1, 2, 9, 5]
    # a lost response: the retry is the same request, block size included, and is answered by the replay
    server.lose_response = 1
    chunk = s.generate(max_tokens=2, block_size=6)
    assert chunk.replayed and chunk.block_size == 6 and server.bodies("/generate")[-1]["block_size"] == 6


def test_async_twins_send_and_echo_block_size() -> None:
    async def main() -> None:
        server = FakeServer()
        async with make_async_client(server)[0] as client:
            assert (await client.models.get("mnist-vssm")).default_block_size == 28
            out = await client.completions.create(model="mnist-vssm", max_tokens=3, block_size=2)
            streamed = [c async for c in client.completions.stream(model="mnist-vssm", max_tokens=3, block_size=5)]
            s = await client.sessions.create(model="shakespeare-vssm", block_size=8)
            c = await s.generate(max_tokens=2)
            o = await s.generate(max_tokens=2, block_size=1)
            events = [e async for e in s.stream(max_tokens=4, chunk_size=2, block_size=3)]
            direct = await client.sessions.generate(s.id, max_tokens=1, block_size=4)
            direct_stream = [e async for e in client.sessions.stream(s.id, max_tokens=1, block_size=6)]
        assert out.block_size == 2 and [e.block_size for e in streamed] == [5]
        assert s.block_size == 8 and (c.block_size, o.block_size) == (8, 1)
        assert [e.block_size for e in events] == [3, 3] and s.position == 8
        assert direct.block_size == 4 and direct_stream[0].block_size == 6
        assert [b.get("block_size") for b in server.bodies("/generate")] == [None, 1, 3, 4, 6]

    asyncio.run(main())


def run(server: FakeServer, capsys: pytest.CaptureFixture[str], *argv: str) -> dict:
    assert main(["--base-url", BASE, *argv], transport=httpx.MockTransport(server)) == 0
    return json.loads(capsys.readouterr().out.splitlines()[-1])


def test_the_command_line_takes_block_size(capsys: pytest.CaptureFixture[str]) -> None:
    server = FakeServer()
    assert run(server, capsys, "complete", "--model", "mnist-vssm", "--block-size", "14")["block_size"] == 14
    assert run(server, capsys, "models", "mnist-vssm")["block_curve"] == CURVE
    s = run(server, capsys, "session", "create", "--model", "mnist-vssm", "--block-size", "7")
    assert s["block_size"] == 7
    assert run(server, capsys, "session", "generate", s["id"], "--max-tokens", "2")["block_size"] == 7
    chunk = run(server, capsys, "session", "generate", s["id"], "--max-tokens", "2", "--block-size", "1")
    assert chunk["block_size"] == 1
    chunk = run(server, capsys, "session", "generate", s["id"], "--max-tokens", "2", "--stream", "--block-size", "2")
    assert chunk["block_size"] == 2
    assert [b.get("block_size") for b in server.bodies("/generate")] == [None, 1, 2]
