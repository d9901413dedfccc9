"""Model cards at ``GET /v1/models/{id}``: modality and card fields (model/card.py, model/modality.py),
their figures read from the eval JSON beside the checkpoint, their prose only for a recipe's run."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.server.conftest import CHECKPOINTS
from vssm import model
from vssm.server import Settings, create_app

BUNDLED = Path(__file__).resolve().parents[2] / "checkpoints"


@pytest.fixture(scope="module")
def client(tmp_path_factory) -> Iterator[TestClient]:
    d = tmp_path_factory.mktemp("cards")
    for name in ("mnist-vssm-blocks", "shakespeare-ar-gru"):  # two bundled models, with their eval JSONs
        for suffix in (".safetensors", ".json"):
            shutil.copy(BUNDLED / f"{name}{suffix}", d / f"{name}{suffix}")
    family, dataset, cfg = CHECKPOINTS["mnist-vssm"]  # a tiny model that only shares a bundled one's name
    model.save_checkpoint(model.build_model(family, cfg), d / "mnist-vssm.safetensors", extra={"dataset": dataset})
    mode = model.build_model(family, cfg)  # a model served at observation temperature 0
    mode.observation_temperature = 0.0
    model.save_checkpoint(mode, d / "mnist-mode.safetensors", extra={"dataset": dataset})
    with TestClient(create_app(Settings(checkpoints=d)), raise_server_exceptions=False) as c:
        yield c


def test_a_bundled_model_s_card_has_its_recipe_budget_and_the_figures_of_its_eval_json(client):
    card = client.get("/v1/models/mnist-vssm-blocks").json()
    assert card["modality"] == {"kind": "image", "shape": [28, 28], "encoding": None} and not card["text"]
    about = card["card"]
    evaluation = json.loads((BUNDLED / "mnist-vssm-blocks.json").read_text())
    assert about["training"]["preset"] == "mnist-vssm-blocks" and "--budget-cpu-minutes 39" in about["training"]["note"]
    assert about["training"]["steps"] == evaluation["training"]["steps"] and about["default_block_size"] == 28
    assert about["intended_use"] and about["data"].startswith("Binarised MNIST") and about["limitations"]
    metrics = {m["name"]: m for m in about["metrics"]}
    assert metrics["test_nll"]["value"] == round(evaluation["nll"]["nats_per_sequence"], 4)
    row = next(r for r in evaluation["block_curve"] if r["block_size"] == 28)
    assert metrics["block_28_nll"]["value"] == round(row["nll"]["nats_per_sequence"], 4)
    assert metrics["block_28_confident_digits"]["value"] == round(row["samples"]["confident_share"], 4)
    listed = {m["id"]: m for m in client.get("/v1/models").json()["data"]}
    assert listed["mnist-vssm-blocks"] == card


def test_text_models_say_so_and_exact_figures_are_not_called_bounds(client):
    card = client.get("/v1/models/shakespeare-ar-gru").json()
    assert card["modality"] == {"kind": "text", "shape": None, "encoding": "utf-8"} and card["text"]
    metrics = {m["name"]: m for m in card["card"]["metrics"]}
    assert metrics["test_bits_per_token"]["note"] == "exact"
    assert metrics["generation_ms_batch_1"]["note"].endswith("token by token")
    (row,) = json.loads((BUNDLED / "shakespeare-ar-gru.json").read_text())["block_curve"]  # its judged samples
    assert metrics["known_words"]["value"] == round(row["samples"]["known_word_share"], 4)
    assert metrics["ar_judge_bits_per_byte"]["value"] == round(row["samples"]["ar_judge_bits_per_byte"], 4)
    assert "1,000 unprompted samples of 256 bytes" in metrics["known_words"]["note"]
    assert not any("upper bound" in line for line in card["card"]["limitations"])


def test_a_model_that_is_no_recipe_s_run_gets_figures_only(client):
    """The tiny "mnist-vssm" was not trained by the mnist-vssm preset: no borrowed prose, no eval JSON."""
    about = client.get("/v1/models/mnist-vssm").json()["card"]
    assert about["intended_use"] is None and about["training"]["preset"] is None and about["metrics"] == []
    assert about["data"].startswith("Binarised MNIST")


def test_a_model_served_at_observation_temperature_zero_says_so_and_draws_the_decoder_s_mode(client):
    card = client.get("/v1/models/mnist-mode").json()
    assert card["observation_temperature"] == 0.0 and card["card"]["observation_temperature"] == 0.0
    assert any("observation temperature 0" in line for line in card["card"]["limitations"])
    assert client.get("/v1/models/mnist-vssm").json()["observation_temperature"] == 1.0
    body = {"model": "mnist-mode", "prompt": [], "max_tokens": 30, "seed": 3, "logprobs": 2}
    choice = client.post("/v1/completions", json=body).json()["choices"][0]
    lp = choice["logprobs"]
    # each token is the most likely one under the distribution it was drawn from (p(x_t | latents))
    for token, top in zip(lp["token_logprobs"], lp["top_logprobs"], strict=True):
        assert token == pytest.approx(max(top.values()))
    again = client.post("/v1/completions", json={**body, "seed": 4}).json()["choices"][0]
    assert again["logprobs"]["token_logprobs"] != lp["token_logprobs"]  # latents still drawn per seed


def test_a_request_or_a_session_chooses_its_own_observation_temperature(client):
    body = {"model": "mnist-mode", "prompt": [], "max_tokens": 30, "seed": 3, "logprobs": 2}
    served = client.post("/v1/completions", json=body).json()
    assert served["observation_temperature"] == 0.0
    own = client.post("/v1/completions", json={**body, "observation_temperature": 1.0}).json()
    assert own["observation_temperature"] == 1.0
    lp = own["choices"][0]["logprobs"]
    # at 1 the tokens are drawn: not every one is the most likely under its distribution
    assert any(t < max(top.values()) - 1e-9 for t, top in zip(lp["token_logprobs"], lp["top_logprobs"], strict=True))
    assert (
        client.post("/v1/completions", json={**body, "observation_temperature": 0.0}).json()["choices"]
        == (served["choices"])
    )
    for bad in (-0.1, 1.5, "0"):
        r = client.post("/v1/completions", json={**body, "observation_temperature": bad})
        assert r.status_code == 400 and r.json()["error"]["param"] == "observation_temperature", r.text
    # a session keeps its own; a call may override it for itself; the tokens are those of one call
    sess = client.post("/v1/sessions", json={"model": "mnist-mode", "seed": 3, "observation_temperature": 1.0}).json()
    assert sess["observation_temperature"] == 1.0
    url = f"/v1/sessions/{sess['id']}/generate"
    first = client.post(url, json={"max_tokens": 10}).json()
    second = client.post(url, json={"max_tokens": 20}).json()
    assert first["observation_temperature"] == second["observation_temperature"] == 1.0
    whole = client.post("/v1/completions", json={**body, "logprobs": None, "observation_temperature": 1.0}).json()
    assert first["tokens"] + second["tokens"] == whole["choices"][0]["tokens"]
    at_zero = client.post(url, json={"max_tokens": 5, "observation_temperature": 0.0}).json()
    assert at_zero["observation_temperature"] == 0.0
    assert client.get(f"/v1/sessions/{sess['id']}").json()["observation_temperature"] == 1.0  # the session's stays
    default = client.post("/v1/sessions", json={"model": "mnist-mode", "seed": 3}).json()
    assert default["observation_temperature"] == 0.0  # none named: the model's, kept with the session


def test_a_retried_generate_is_replayed_only_at_the_same_observation_temperature(client):
    sess = client.post("/v1/sessions", json={"model": "mnist-mode", "seed": 5}).json()
    url = f"/v1/sessions/{sess['id']}/generate"
    call = {"max_tokens": 8, "expected_position": 0}
    first = client.post(url, json=call).json()
    again = client.post(url, json=call).json()
    assert again["replayed"] and again["tokens"] == first["tokens"]
    other = client.post(url, json={**call, "observation_temperature": 1.0})
    assert other.status_code == 409  # not the same request: the session has moved on
