"""``vssm-client`` command line, run in-process against the fake server."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.client.fakes import BASE, FakeServer, sampled
from vssm_client._cli import build_parser, main


def run(server: FakeServer, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["--base-url", BASE, *argv], transport=httpx.MockTransport(server))
    out, err = capsys.readouterr()
    return code, out, err


def test_models(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(FakeServer(), capsys, "models")
    assert code == 0 and [m["id"] for m in json.loads(out)["data"]] == ["mnist-vssm", "shakespeare-vssm"]
    code, out, _ = run(FakeServer(), capsys, "models", "mnist-vssm")
    assert json.loads(out)["vocab_size"] == 2


def test_complete_tokens_prints_json(capsys: pytest.CaptureFixture[str]) -> None:
    server = FakeServer()
    code, out, _ = run(
        server, capsys, "complete", "--model", "mnist-vssm", "--tokens", "0, 1,0", "--max-tokens", "5", "--seed", "3"
    )
    assert code == 0 and json.loads(out)["choices"][0]["tokens"] == sampled(3, 3, 5)
    assert server.bodies()[0] == {"model": "mnist-vssm", "prompt": [0, 1, 0], "max_tokens": 5, "seed": 3}


def test_complete_text_stream_prints_text(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(
        FakeServer(),
        capsys,
        "complete",
        "--model",
        "shakespeare-vssm",
        "--prompt",
        "to",
        "--max-tokens",
        "5",
        "--stream",
        "--chunk-size",
        "2",
        "--seed",
        "1",
    )
    assert code == 0 and len(out) == 6 and out.endswith("\n") and set(out.strip()) <= {"a", "b"}


def test_complete_stream_json_is_one_object_per_line(capsys: pytest.CaptureFixture[str]) -> None:
    _, out, _ = run(
        FakeServer(), capsys, "complete", "--model", "mnist-vssm", "--max-tokens", "5", "--stream", "--chunk-size", "2"
    )
    assert [len(json.loads(line)["choices"][0]["tokens"]) for line in out.splitlines()] == [2, 2, 1]


def test_session_lifecycle(capsys: pytest.CaptureFixture[str]) -> None:
    server = FakeServer()
    code, out, _ = run(server, capsys, "session", "create", "--model", "mnist-vssm", "--tokens", "0,1", "--seed", "7")
    sid = json.loads(out)["id"]
    assert code == 0 and json.loads(out)["position"] == 2
    code, out, _ = run(server, capsys, "session", "generate", sid, "--max-tokens", "4")
    chunk = json.loads(out)
    assert (chunk["start_position"], chunk["position"]) == (2, 6)
    assert server.bodies("/generate")[-1]["expected_position"] == 2  # looked up, so a retry is safe
    code, out, _ = run(server, capsys, "session", "generate", sid, "--max-tokens", "4", "--stream", "--chunk-size", "3")
    assert [json.loads(line)["position"] for line in out.splitlines()] == [9, 10]
    code, out, _ = run(server, capsys, "session", "append", sid, "--tokens", "1,1,1")
    assert json.loads(out)["position"] == 13
    code, out, _ = run(server, capsys, "session", "fork", sid, "--ttl", "60")
    assert json.loads(out)["id"] != sid
    code, out, _ = run(server, capsys, "session", "get", sid)
    assert json.loads(out)["position"] == 13
    code, out, _ = run(server, capsys, "session", "delete", sid)
    assert json.loads(out) == {"id": sid, "object": "session.deleted", "deleted": True}


def test_api_error_exits_1_with_message(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(FakeServer(), capsys, "session", "get", "sess_missing")
    assert code == 1 and out == "" and "session_not_found" in err


def test_stale_expected_position_is_a_conflict(capsys: pytest.CaptureFixture[str]) -> None:
    server = FakeServer()
    _, out, _ = run(server, capsys, "session", "create", "--model", "mnist-vssm")
    code, _, err = run(
        server, capsys, "session", "generate", json.loads(out)["id"], "--max-tokens", "2", "--expected-position", "5"
    )
    assert code == 1 and "position_mismatch" in err


def test_parser_flags_and_env(monkeypatch: pytest.MonkeyPatch) -> None:
    args = build_parser().parse_args(
        ["--api-key", "k", "--max-retries", "0", "complete", "--model", "m", "--tokens", "1,0"]
    )
    assert (args.api_key, args.max_retries, args.tokens, args.prompt) == ("k", 0, [1, 0], None)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["complete", "--model", "m", "--prompt", "x", "--tokens", "1"])
    with pytest.raises(SystemExit):
        build_parser().parse_args(["complete", "--model", "m", "--tokens", "1,x"])
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"object": "list", "data": []})

    monkeypatch.setenv("VSSM_BASE_URL", "http://env:7")
    monkeypatch.setenv("VSSM_API_KEY", "sk-env")
    assert main(["models"], transport=httpx.MockTransport(handler)) == 0
    assert str(seen[0].url) == "http://env:7/v1/models" and seen[0].headers["authorization"] == "Bearer sk-env"


def test_block_size_and_observation_temperature_reach_the_requests(capsys: pytest.CaptureFixture[str]) -> None:
    server = FakeServer()
    flags = ("--block-size", "4", "--observation-temperature", "0")
    code, _, _ = run(server, capsys, "complete", "--model", "mnist-vssm", "--max-tokens", "5", "--seed", "3", *flags)
    assert code == 0
    assert server.bodies("/completions")[0] == {
        "model": "mnist-vssm",
        "max_tokens": 5,
        "seed": 3,
        "block_size": 4,
        "observation_temperature": 0.0,
    }
    code, out, _ = run(server, capsys, "session", "create", "--model", "mnist-vssm", "--seed", "1", *flags)
    assert code == 0 and server.bodies("/sessions")[-1]["observation_temperature"] == 0.0
    sid = json.loads(out)["id"]
    code, _, _ = run(server, capsys, "session", "generate", sid, "--max-tokens", "3", "--observation-temperature", "1")
    assert code == 0 and server.bodies("/generate")[-1]["observation_temperature"] == 1.0
