"""The access line says why a request failed, in a short fixed word (plain and JSON), and
never repeats the error's message: the operator reads the kind of failure from the log."""

from __future__ import annotations

import logging
from typing import Any

import httpx
import orjson
import pytest

from proxy.logs import JsonFormatter
from tests.conftest import TENANT_KEYS, UPSTREAM_BASE, auth, openai_sse, provider_mock

pytestmark = pytest.mark.anyio
CHAT = "/v1/chat/completions"
URL = f"{UPSTREAM_BASE}/chat/completions"
SECRET_TEXT = "provider-said-this-zq9"


def ask(content: str, model: str = "gpt-4o-mini", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": content}], **extra}


def access_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "llmcp.access"]


@pytest.mark.parametrize(
    "upstream_answer, status, reason",
    [
        (
            httpx.ConnectError(f"Cannot connect to host 127.0.0.1:1 {SECRET_TEXT}"),
            502,
            "upstream_unreachable",
        ),
        (httpx.ReadTimeout(SECRET_TEXT), 504, "upstream_timeout"),
        (httpx.Response(401, json={"error": {"message": SECRET_TEXT}}), 502, "upstream_status_401"),
        (httpx.Response(404, json={"error": {"message": SECRET_TEXT}}), 502, "upstream_status_404"),
        (httpx.Response(422, json={"error": {"message": SECRET_TEXT}}), 422, "upstream_status_422"),
        (httpx.Response(429, json={"error": {"message": SECRET_TEXT}}), 429, "upstream_status_429"),
        (httpx.Response(500, json={"error": {"message": SECRET_TEXT}}), 502, "upstream_status_500"),
        (httpx.Response(200, content=b"<html>" + SECRET_TEXT.encode()), 502, "upstream_failed"),
    ],
)
async def test_an_upstream_failure_names_its_kind(
    make_client: Any, caplog: pytest.LogCaptureFixture, upstream_answer: Any, status: int, reason: str
) -> None:
    client = await make_client()
    with provider_mock() as mock, caplog.at_level(logging.INFO, logger="llmcp.access"):
        route = mock.post(URL)
        if isinstance(upstream_answer, Exception):
            route.mock(side_effect=upstream_answer)
        else:
            route.mock(return_value=upstream_answer)
        response = await client.post(CHAT, json=ask("hi"), headers=auth())
    assert response.status_code == status
    [line] = access_lines(caplog)
    assert line.error == reason  # type: ignore[attr-defined]
    assert line.getMessage().endswith(f" {status} {line.latency_ms:.1f}ms error={reason}")  # type: ignore[attr-defined]
    rendered = JsonFormatter().format(line)
    assert orjson.loads(rendered)["error"] == reason
    assert SECRET_TEXT not in line.getMessage() and SECRET_TEXT not in rendered


async def test_a_mid_stream_failure_names_its_kind(
    make_client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    client = await make_client()
    head = openai_sse(["a"], finish=False)  # one good chunk, then garbage
    with provider_mock() as mock, caplog.at_level(logging.INFO, logger="llmcp.access"):
        mock.post(URL).respond(
            200, content=head + b"data: {not json\n\n", headers={"content-type": "text/event-stream"}
        )
        response = await client.post(CHAT, json=ask("s", stream=True), headers=auth())
    assert response.status_code == 200 and b"error" in response.content
    [line] = access_lines(caplog)
    assert line.error == "upstream_failed"  # type: ignore[attr-defined]


async def test_the_proxys_own_refusals_name_their_kind(
    make_client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    tenants = [
        {
            "name": "acme",
            "api_keys": [TENANT_KEYS["acme"]],
            "limits": {"tokens_per_minute": 100, "requests_per_minute": 100},
        }
    ]
    client = await make_client(tenants=tenants)
    with caplog.at_level(logging.INFO, logger="llmcp.access"):
        await client.post(CHAT, json={"model": "demo", "messages": "not a list"}, headers=auth())
        await client.post(CHAT, content=b"{not json", headers=auth())
        await client.post(CHAT, json=ask("hi", "no-such-model"), headers=auth())
        await client.post(CHAT, json=ask("hi", "demo"), headers={"Authorization": "Bearer sk-wrong-key"})
        await client.post(CHAT, json=ask("x" * 2000, "demo", max_tokens=50), headers=auth())
        await client.post(CHAT, json=ask("hi", "demo", max_tokens=1), headers=auth())
    reasons = [(r.status, r.error) for r in access_lines(caplog)]  # type: ignore[attr-defined]
    assert reasons == [
        (400, "bad_request"),
        (400, "invalid_json"),
        (404, "model_not_found"),
        (401, "invalid_api_key"),
        (429, "rate_limited_tokens"),  # more tokens than the burst of 100 could ever hold
        (200, ""),
    ]
