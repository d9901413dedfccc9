"""Fork with a seed: the branch continues with its own random draws from the fork's position on."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from tests.server.test_api import assert_error, make_client
from vssm import model


@pytest.fixture
def client(checkpoints, redis) -> Iterator:
    with make_client(checkpoints, redis.url) as c:
        yield c


@pytest.mark.parametrize("name", ["mnist-vssm", "mnist-ar-ssm"])
def test_a_fork_with_a_seed_draws_its_own_tokens_from_there(client, checkpoints, name):
    parent = client.post("/v1/sessions", json={"model": name, "prompt": [1, 0], "seed": 3, "block_size": 4}).json()
    client.post(f"/v1/sessions/{parent['id']}/generate", json={"max_tokens": 6})
    child = client.post(f"/v1/sessions/{parent['id']}/fork", json={"seed": 11}).json()
    assert child["seed"] == 11 and child["position"] == 8 and child["block_size"] == 4
    same = client.post(f"/v1/sessions/{parent['id']}/fork", json={}).json()
    assert same["seed"] == 3
    got = {
        s["id"]: client.post(f"/v1/sessions/{s['id']}/generate", json={"max_tokens": 20}).json()["tokens"]
        for s in (parent, child, same)
    }

    m = model.load_checkpoint(checkpoints / f"{name}.safetensors")
    state = m.start(torch.tensor([[1, 0]]), 3)
    _, state = m.generate(state, 6, block_size=4)
    branch = state.evolve(seed=torch.full_like(state.seed, 11))
    assert got[child["id"]] == m.generate(branch, 20, block_size=4)[0][0].tolist()
    assert got[parent["id"]] == got[same["id"]] == m.generate(state, 20, block_size=4)[0][0].tolist()
    assert got[child["id"]] != got[parent["id"]]


def test_a_bad_fork_seed_is_a_400(client):
    s = client.post("/v1/sessions", json={"model": "mnist-vssm"}).json()
    assert_error(client.post(f"/v1/sessions/{s['id']}/fork", json={"seed": -1}), 400, "invalid_field", "seed")
