"""TVAE and VRNN checkpoints served unchanged: the registry loads any family from the checkpoints
directory, and the HTTP API and the SDK (no change to either) give the model API's own tokens.

An in-process app on its embedded store, driven through the SDK (``vssm_client``) over the test
client's transport, as a user's program would drive a real server.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient

from vssm import model
from vssm.server import Settings, create_app
from vssm_client import Client

CHECKPOINTS = {
    "mnist-tvae": (
        "tvae",
        {
            "vocab_size": 2,
            "max_position": 64,
            "width": 16,
            "heads": 2,
            "enc_layers": 1,
            "dec_layers": 2,
            "par_layers": 1,
            "n_latents": 2,
            "n_classes": 8,
        },
    ),
    "mnist-vrnn": ("vrnn", {"vocab_size": 2, "max_position": 64, "width": 16, "n_latents": 2, "n_classes": 8}),
}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("latent-checkpoints")
    for i, (name, (family, cfg)) in enumerate(CHECKPOINTS.items()):
        torch.manual_seed(i)
        model.save_checkpoint(model.build_model(family, cfg), d / f"{name}.safetensors", extra={"dataset": "mnist"})
    return d


@pytest.fixture(scope="module")
def models(checkpoints) -> dict[str, model.SequenceModel]:
    return {p.stem: model.load_checkpoint(p) for p in checkpoints.glob("*.safetensors")}


@pytest.fixture(scope="module")
def client(checkpoints) -> Iterator[Client]:
    app = create_app(Settings(checkpoints=checkpoints, redis_url=None, max_tokens=64))
    with (
        TestClient(app, raise_server_exceptions=False) as http,
        Client(base_url=str(http.base_url), http_client=http) as c,
    ):
        yield c


def reference(m: model.SequenceModel, prompt: list[int], seed: int, steps: list[tuple[str, object]]) -> list:
    """The model API's tokens for ``steps``: ``("generate", n)`` or ``("append", tokens)``."""
    state = m.start(torch.tensor([prompt], dtype=torch.long), seed)
    out = []
    for op, arg in steps:
        if op == "append":
            state = m.append(state, torch.tensor([arg]))
        else:
            tokens, state = m.generate(state, arg)
            out.append(tokens[0].tolist())
    return out


NAMES = sorted(CHECKPOINTS)


def test_models_are_listed_with_their_family(client):
    listed = {m.id: m for m in client.models.list()}
    assert set(listed) == set(NAMES)
    for name in NAMES:
        card = client.models.get(name)
        assert card.family == CHECKPOINTS[name][0] and card.vocab_size == 2 and card.max_position == 64
        assert card.state_bytes and card.state_bytes > 0


@pytest.mark.parametrize("name", NAMES)
def test_completions_are_the_model_api_s_tokens(client, models, name):
    out = client.completions.create(model=name, prompt=[0, 1, 1], max_tokens=10, seed=5, n=2, block_size=4)
    for i, choice in enumerate(out.choices):
        assert choice.tokens == reference(models[name], [0, 1, 1], 5 + i, [("generate", 10)])[0]
    chunks = client.completions.stream(model=name, max_tokens=12, seed=3, chunk_size=5)
    assert [t for c in chunks for t in c.tokens] == reference(models[name], [], 3, [("generate", 12)])[0]


@pytest.mark.parametrize("name", NAMES)
def test_a_session_resumes_chunk_by_chunk_anywhere(client, models, name):
    s = client.sessions.create(model=name, prompt=[1, 0, 1], seed=9)
    a = s.generate(max_tokens=5).tokens
    b = [t for c in s.stream(max_tokens=9, chunk_size=4) for t in c.tokens]
    s.append([1, 1])
    fork = s.fork()
    again = client.sessions.get(s.id)  # another handle, as another process would hold it
    c = again.generate(max_tokens=6).tokens
    assert fork.generate(max_tokens=6).tokens == c
    ref = reference(models[name], [1, 0, 1], 9, [("generate", 5), ("generate", 9), ("append", [1, 1]), ("generate", 6)])
    assert [a, b, c] == ref and again.position == 3 + 5 + 9 + 2 + 6
    start = client.sessions.create(model=name, seed=1).state_bytes
    grew = client.sessions.get(s.id).state_bytes > start
    assert grew == (name == "mnist-tvae")  # KV caches grow with the position, the GRU state does not


@pytest.mark.parametrize("name", NAMES)
def test_concurrent_sessions_at_different_positions_get_their_own_tokens(client, models, name):
    """Requests that arrive together are batched (states of different lengths stacked): each gets its own."""
    prompts = [[], [1], [0, 1, 1, 0, 1], [1] * 9]
    sessions = [client.sessions.create(model=name, prompt=p, seed=20 + i) for i, p in enumerate(prompts)]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda s: s.generate(max_tokens=7).tokens, sessions))
    for i, p in enumerate(prompts):
        assert got[i] == reference(models[name], p, 20 + i, [("generate", 7)])[0]
