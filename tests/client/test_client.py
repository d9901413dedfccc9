"""Client configuration: base URL, environment fallbacks, auth, injection, resources' request bodies."""

from __future__ import annotations

import httpx
import pytest

import vssm_client as vc
from tests.client.fakes import BASE, FakeServer, make_client


def recorder() -> tuple[httpx.MockTransport, list[httpx.Request]]:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"object": "list", "data": [{"id": "m", "brand_new": 1}]})

    return httpx.MockTransport(handler), seen


@pytest.mark.parametrize("url", ["http://h:9", "http://h:9/", "http://h:9/v1", "http://h:9/v1/"])
def test_base_url_is_the_root_with_or_without_v1(url: str) -> None:
    transport, seen = recorder()
    client = vc.Client(base_url=url, transport=transport)
    assert client.base_url == "http://h:9" and client.api_url == "http://h:9/v1"
    client.models.list()
    assert str(seen[0].url) == "http://h:9/v1/models"


def test_env_fallbacks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VSSM_BASE_URL", "http://from-env:1234/v1")
    monkeypatch.setenv("VSSM_API_KEY", "sk-env")
    transport, seen = recorder()
    client = vc.Client(transport=transport)
    client.models.list()
    assert str(seen[0].url) == "http://from-env:1234/v1/models"
    assert seen[0].headers["authorization"] == "Bearer sk-env"
    explicit = vc.Client(base_url="http://explicit", api_key="sk-arg", transport=transport)
    assert (explicit.base_url, explicit.api_key) == ("http://explicit", "sk-arg")


def test_defaults_without_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VSSM_BASE_URL", raising=False)
    monkeypatch.delenv("VSSM_API_KEY", raising=False)
    transport, seen = recorder()
    vc.Client(transport=transport).models.list()
    assert str(seen[0].url) == "http://127.0.0.1:8000/v1/models" and "authorization" not in seen[0].headers
    assert seen[0].headers["user-agent"].startswith("vssm-client/")


def test_injected_http_client_is_used_and_left_open() -> None:
    transport, seen = recorder()
    http = httpx.Client(transport=transport, headers={"X-Team": "a"})
    with vc.Client(base_url=BASE, http_client=http, default_headers={"X-Request-ID": "mine"}) as client:
        client.models.list()
    assert not http.is_closed
    assert seen[0].headers["x-team"] == "a" and seen[0].headers["x-request-id"] == "mine"
    with pytest.raises(ValueError, match="not both"):
        vc.Client(http_client=http, transport=transport)


def test_owned_http_client_is_closed_on_exit() -> None:
    with vc.Client(base_url=BASE, transport=recorder()[0]) as client:
        pass
    assert client._http.is_closed


def test_models_list_and_get() -> None:
    client, _ = make_client(FakeServer())
    models = client.models.list()
    assert [m.id for m in models] == ["mnist-vssm", "shakespeare-vssm"]
    assert models[0].vocab_size == 2 and not models[0].text and models[1].text
    assert client.models.get("shakespeare-vssm").max_position is None
    with pytest.raises(vc.NotFoundError) as info:
        client.models.get("nope")
    assert info.value.code == "model_not_found"


def test_completion_create_sends_only_given_fields_and_exposes_choice_zero() -> None:
    server = FakeServer()
    client, _ = make_client(server)
    out = client.completions.create(
        model="mnist-vssm", prompt=(0, 1), max_tokens=6, seed=1, n=2, extra_body={"user": "me"}
    )
    assert server.bodies()[0] == {
        "model": "mnist-vssm",
        "prompt": [0, 1],
        "max_tokens": 6,
        "n": 2,
        "seed": 1,
        "user": "me",
    }
    assert isinstance(out, vc.Completion) and len(out.choices) == 2
    assert out.tokens == out.choices[0].tokens and len(out.tokens) == 6 and out.text == ""
    assert out.finish_reason == "length" and out.usage is not None and out.usage.total_tokens == 8
    text = client.completions.create(model="shakespeare-vssm", prompt="to be", max_tokens=3, seed=1)
    assert text.text == text.choices[0].text and len(text.text) == 3


def test_timeout_is_applied_per_request() -> None:
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.extensions["timeout"])
        return httpx.Response(200, json={"status": "ok"})

    client = vc.Client(base_url=BASE, timeout=2.5, transport=httpx.MockTransport(handler))
    assert client.health() == {"status": "ok"}
    client.with_options(timeout=httpx.Timeout(9.0)).health()
    assert seen[0]["read"] == 2.5 and seen[1]["read"] == 9.0


def test_ready_is_not_retried() -> None:
    client, sleeps = make_client(
        lambda r: httpx.Response(503, json={"error": {"message": "loading", "type": "x", "code": "not_ready"}})
    )
    with pytest.raises(vc.ServiceUnavailableError):
        client.ready()
    assert sleeps == []


def test_negative_max_retries_is_rejected() -> None:
    with pytest.raises(ValueError):
        vc.Client(max_retries=-1)


def test_an_injected_httpx2_client_takes_the_sdk_s_timeouts() -> None:
    """Starlette's TestClient runs on httpx2 where it is installed (the openai package brings it); httpx2
    refuses an ``httpx.Timeout`` object, so the SDK hands any client plain (connect, read, write, pool)."""
    httpx2 = pytest.importorskip("httpx2")
    seen = []

    def handler(request):  # an httpx2.Request
        seen.append(request.extensions["timeout"])
        return httpx2.Response(200, json={"status": "ok"})

    with httpx2.Client(transport=httpx2.MockTransport(handler)) as http:
        client = vc.Client(base_url=BASE, http_client=http)  # the default: httpx.Timeout(600, connect=5)
        assert client.health() == {"status": "ok"}
        client.with_options(timeout=httpx.Timeout(9.0)).health()
        client.with_options(timeout=3.0).health()
    assert seen[0]["connect"] == 5.0 and seen[0]["read"] == 600.0
    assert seen[1]["read"] == 9.0 and seen[2]["read"] == 3.0
