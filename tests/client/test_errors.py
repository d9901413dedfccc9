"""Every status and code of docs/api.md maps to its typed error, with the envelope's fields."""

from __future__ import annotations

import httpx
import pytest

import vssm_client as vc
from tests.client.fakes import error, make_client, sse

TABLE = [
    (400, "invalid_field", vc.BadRequestError),
    (400, "invalid_token", vc.BadRequestError),
    (400, "max_tokens_exceeded", vc.BadRequestError),
    (400, "max_position_exceeded", vc.BadRequestError),
    (400, "text_not_supported", vc.BadRequestError),
    (401, "invalid_api_key", vc.AuthenticationError),
    (404, "model_not_found", vc.NotFoundError),
    (404, "session_not_found", vc.SessionNotFoundError),
    (404, "not_found", vc.NotFoundError),
    (409, "position_mismatch", vc.ConflictError),
    (409, "session_busy", vc.ConflictError),
    (409, "state_incompatible", vc.ConflictError),
    (413, "body_too_large", vc.BadRequestError),
    (422, "unprocessable", vc.BadRequestError),
    (429, "overloaded", vc.RateLimitError),
    (503, "store_unavailable", vc.ServiceUnavailableError),
    (503, "not_ready", vc.ServiceUnavailableError),
    (500, "internal_error", vc.InternalServerError),
    (502, "bad_gateway", vc.InternalServerError),
    (418, "teapot", vc.APIStatusError),
]


@pytest.mark.parametrize(("status", "code", "cls"), TABLE)
def test_status_maps_to_error(status: int, code: str, cls: type[vc.APIStatusError]) -> None:
    client, _ = make_client(lambda r: error(status, code, "it failed"), max_retries=0)
    with pytest.raises(vc.APIStatusError) as info:
        client.models.list()
    err = info.value
    assert type(err) is cls
    assert (err.status_code, err.code, err.message, err.request_id) == (status, code, "it failed", "req_123")
    assert isinstance(err, vc.APIError)
    assert code in str(err) and "req_123" in str(err)
    assert err.response is not None and err.request is not None and err.request.url.path == "/v1/models"


def test_envelope_param_and_type_are_kept() -> None:
    body = {
        "error": {
            "message": "max_tokens: too big",
            "type": "invalid_request_error",
            "code": "invalid_field",
            "param": "max_tokens",
        }
    }
    client, _ = make_client(lambda r: httpx.Response(400, json=body))
    with pytest.raises(vc.BadRequestError) as info:
        client.completions.create(model="m", max_tokens=10**9)
    assert (info.value.param, info.value.type, info.value.request_id) == ("max_tokens", "invalid_request_error", None)
    assert info.value.body == body


def test_non_json_error_body_still_maps() -> None:
    client, _ = make_client(lambda r: httpx.Response(502, text="upstream connect error"), max_retries=0)
    with pytest.raises(vc.InternalServerError) as info:
        client.models.list()
    assert info.value.code is None and info.value.message == "upstream connect error"


@pytest.mark.parametrize(("code", "cls", "status"), [(c, k, s) for s, c, k in TABLE if s not in (418, 422, 502)])
def test_in_band_stream_error_maps_by_code(code: str, cls: type[vc.APIStatusError], status: int) -> None:
    body = sse({"error": {"message": "mid-stream", "type": "whatever", "code": code, "param": None}}, done=False)
    client, _ = make_client(lambda r: httpx.Response(200, content=body, headers={"X-Request-ID": "req_9"}))
    with pytest.raises(vc.APIStatusError) as info:
        list(client.completions.stream(model="m", max_tokens=4))
    assert type(info.value) is cls
    assert (info.value.status_code, info.value.code, info.value.request_id) == (status, code, "req_9")


def test_in_band_error_with_unknown_code_maps_by_type() -> None:
    body = sse({"error": {"message": "x", "type": "conflict_error", "code": "new_code"}}, done=False)
    client, _ = make_client(lambda r: httpx.Response(200, content=body))
    with pytest.raises(vc.ConflictError):
        list(client.completions.stream(model="m"))


def test_connection_errors_are_typed() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    def slow(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow", request=request)

    with pytest.raises(vc.APIConnectionError) as info:
        make_client(refuse, max_retries=0)[0].models.list()
    assert not isinstance(info.value, vc.APITimeoutError) and info.value.request is not None
    with pytest.raises(vc.APITimeoutError):
        make_client(slow, max_retries=0)[0].models.list()
    assert issubclass(vc.APITimeoutError, vc.APIConnectionError) and issubclass(vc.APIConnectionError, vc.APIError)


def test_unexpected_success_body_is_an_api_error() -> None:
    client, _ = make_client(lambda r: httpx.Response(200, text="<html>proxy</html>"))
    with pytest.raises(vc.APIError, match="unexpected response body"):
        client.models.list()
