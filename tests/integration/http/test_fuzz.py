"""Fuzzing every endpoint: schemathesis generates requests from the proxy's own OpenAPI
schema (valid and invalid), hypothesis throws raw bytes, deep nesting, wrong types and
broken UTF-8 at the cached endpoints. Every answer must be a success or a well-formed
OpenAI error with a 4xx (a 5xx only from the provider side, never a 500), and nothing
may hang. The provider is the built-in demo model with no delay, Redis is real."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.http.app import create_app
from proxy.upstream.demo import DemoUpstream
from proxy.upstream.selector import Upstreams
from tests.conftest import auth, build_config

ENDPOINTS = ["/v1/chat/completions", "/v1/completions", "/v1/responses", "/v1/embeddings"]
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))


def _models(config_prefix: str) -> Any:
    models = [{"name": "demo", "litellm_model": "demo/echo"}]
    return build_config(config_prefix, models=models, admin={"api_keys": ["sk-admin-test-key"]})


@pytest.fixture(scope="module")
def app(redis_url: str, redis_sync: Any) -> Iterator[Any]:
    """One live app for the module (lifespan entered on its own loop, in a thread), under a
    key prefix of its own that is deleted afterwards."""
    from starlette.testclient import TestClient

    prefix = f"llmcpfuzz{uuid.uuid4().hex[:10]}"
    application = create_app(
        _models(prefix), redis_url, Upstreams(5, demo=DemoUpstream(latency_s=0, chunk_delay_s=0))
    )
    with TestClient(application) as client:
        application.client = client  # type: ignore[attr-defined]
        yield application
    keys = list(redis_sync.scan_iter(match=f"{prefix}:*", count=1000))
    if keys:
        redis_sync.unlink(*keys)


def assert_well_formed(status: int, body: bytes, content_type: str) -> None:
    assert status != 500, body[:500]
    assert status < 500 or status in (502, 503, 504), (status, body[:500])
    if status >= 400:
        error = orjson.loads(body)["error"]
        assert set(error) >= {"message", "type", "param", "code"} and error["message"], error


schema = schemathesis.openapi.from_asgi(
    "/openapi.json", create_app(_models("llmcpfuzz"), "redis://127.0.0.1:1")
)


@schema.parametrize()
@FUZZ
def test_schemathesis_every_operation(case: Any, app: Any) -> None:
    kwargs = case.as_transport_kwargs(base_url="http://testserver", headers=auth())
    if "data" in kwargs:  # requests' name; httpx calls raw bytes "content"
        kwargs["content"] = kwargs.pop("data")
    if not kwargs.get("cookies"):
        kwargs.pop("cookies", None)
    response = app.client.request(**kwargs)
    assert_well_formed(response.status_code, response.content, response.headers.get("content-type", ""))


def _dumps(value: Any) -> bytes:
    """The stdlib writes what orjson will not (integers past 64 bits, NaN): the proxy must
    refuse those cleanly too."""
    return json.dumps(value).encode()


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=30,
)
FIELDS = st.sampled_from(
    ["model", "messages", "prompt", "input", "stream", "n", "max_tokens", "tools", "stop"]
)
BODIES = st.one_of(
    st.binary(max_size=300),  # anything, invalid UTF-8 included
    st.dictionaries(FIELDS, JSON_VALUES, max_size=6).map(_dumps),
    st.builds(lambda depth: b"[" * depth + b"]" * depth, st.integers(1, 5000)),  # deep nesting
    st.builds(lambda v: _dumps({"model": "demo", "messages": v, "prompt": v, "input": v}), JSON_VALUES),
)


@FUZZ
@given(path=st.sampled_from(ENDPOINTS), body=BODIES, stream=st.booleans())
def test_hypothesis_bodies(app: Any, path: str, body: bytes, stream: bool) -> None:
    headers = {**auth(), "content-type": "application/json"}
    response = app.client.post(path, content=body, headers=headers)
    assert_well_formed(response.status_code, response.content, response.headers.get("content-type", ""))


@FUZZ
@given(
    header=st.sampled_from(["authorization", "x-cache-ttl", "cache-control", "x-end-user", "x-request-id"]),
    value=st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=255), max_size=200),
)
def test_hypothesis_headers(app: Any, header: str, value: str) -> None:
    raw = value.encode("latin-1")  # any byte 32-255, as a client could send it
    headers: dict[str, Any] = {**auth(), header: raw} if header != "authorization" else {header: raw}
    body = {"model": "demo", "messages": [{"role": "user", "content": "hi"}]}
    response = app.client.post("/v1/chat/completions", json=body, headers=headers)
    assert_well_formed(response.status_code, response.content, response.headers.get("content-type", ""))


def test_huge_body_is_refused_without_reading_it_all(app: Any) -> None:
    response = app.client.post(
        "/v1/chat/completions", content=b"{" + b" " * (5 * 1024 * 1024), headers=auth()
    )
    assert response.status_code == 413 and response.json()["error"]["code"] == "request_too_large"
