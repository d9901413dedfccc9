"""The OpenAPI document tells the truth: schema-generated requests (valid and invalid) against the
real app, every response checked against the document (status, content type, headers, body)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.config import SchemathesisConfig
from schemathesis.generation import GenerationMode
from schemathesis.python import asgi
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.server.conftest import CHECKPOINTS
from vssm.server import Settings, create_app

EXAMPLES = 30  # per operation and mode: about 550 requests in all, some 20 s
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,  # an invalid request is a 4xx: strict types, no coercion
]


@pytest.fixture
def app(checkpoints):
    # small limits keep valid requests cheap (a generated n x max_tokens could otherwise run long);
    # function scope: schemathesis's pytest plugin ends the app's lifespan after each test
    return create_app(Settings(checkpoints=checkpoints, max_tokens=64, max_n=8, max_prompt_tokens=512, batching=False))


@pytest.fixture
def api_schema(app) -> Iterator:
    # a rejection may also be a 413 (a generated prompt over the body limit) or a 429 (a quota)
    rejected = {"expected-statuses": [400, 401, 404, 409, 413, 429]}
    config = SchemathesisConfig.from_dict({"checks": {"negative_data_rejection": rejected}})
    yield schemathesis.openapi.from_asgi("/openapi.json", app, config=config)
    asgi.shutdown_lifespans()


def real_ids(schema) -> list[str]:
    """Two live sessions, so that generated session calls reach a session, not only 404s."""
    with asgi.get_client(schema.app) as client:
        return [
            client.post("/v1/sessions", json={"model": m, "prompt": [1, 0], "seed": 1}).json()["id"]
            for m in ("mnist-vssm", "text-vssm")
        ]


def with_real_ids(case, model: str | None, sid: str | None):
    """Sometimes a served model and a live session instead of the generated (unknown) ids."""
    if model is not None and isinstance(case.body, dict) and "model" in case.body:
        case.body["model"] = model
    params = case.path_parameters or {}
    if model is not None and "model_id" in params:
        params["model_id"] = model
    if sid is not None and "sid" in params:
        params["sid"] = sid
    return case


@pytest.mark.slow
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_every_response_matches_the_document(api_schema, mode):
    """Each operation, ``EXAMPLES`` valid (or invalid) requests; every check on every response."""
    ops = [result.ok() for result in api_schema.get_all_operations()]
    ops.sort(key=lambda op: op.method.upper() == "DELETE")  # the live sessions go last
    assert len(ops) == 12
    sids = real_ids(api_schema)
    for op in ops:
        if mode == GenerationMode.NEGATIVE and not (op.body or op.headers or op.query):
            continue  # no input that can be invalid (any path segment is a string)
        cases = op.as_strategy(generation_mode=mode)
        if mode == GenerationMode.POSITIVE:
            ids = st.tuples(st.sampled_from([None, *CHECKPOINTS]), st.sampled_from([None, *sids]))
            cases = st.tuples(cases, ids).map(lambda c: with_real_ids(c[0], *c[1]))

        @given(case=cases)
        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            derandomize=True,  # the same requests every run
            database=None,  # and no example database left in the work tree
        )
        def run(case) -> None:
            case.call_and_validate(checks=CHECKS)

        run()


def test_the_document_has_no_422_and_says_what_metrics_sends(app):
    doc = app.openapi()
    for path, operations in doc["paths"].items():
        for method, op in operations.items():
            assert "422" not in op["responses"], (method, path)
            if path.startswith("/v1/"):
                assert {"401", "503"} <= set(op["responses"]), (method, path)
            for status, response in op["responses"].items():
                if status.startswith(("4", "5")):
                    assert response["content"]["application/json"]["schema"] == {
                        "$ref": "#/components/schemas/ErrorResponse"
                    }
    assert "HTTPValidationError" not in doc["components"]["schemas"]
    assert list(doc["paths"]["/metrics"]["get"]["responses"]["200"]["content"]) == ["text/plain"]
    post = doc["paths"]["/v1/completions"]["post"]["responses"]
    assert set(post) == {"200", "400", "401", "404", "413", "429", "503"}
    assert set(post["200"]["content"]) == {"application/json", "text/event-stream"}
    assert "Retry-After" in post["429"]["headers"]
