"""route: direct (the default for openai/ models): straight to the OpenAI-compatible server."""

from __future__ import annotations

from typing import Any

import httpx
import orjson
import pytest

from tests.conftest import UPSTREAM_BASE, auth, openai_completion, openai_sse, provider_mock, sse_events

pytestmark = pytest.mark.anyio
CHAT = "/v1/chat/completions"
URL = f"{UPSTREAM_BASE}/chat/completions"
MODELS = [
    {
        "name": "direct",
        "litellm_model": "openai/gpt-4o-mini",
        "api_base": UPSTREAM_BASE,
        "api_key": "sk-upstream-secret",
        "route": "direct",
    }
]


def ask(**extra: Any) -> dict[str, Any]:
    return {"model": "direct", "messages": [{"role": "user", "content": "hi"}], **extra}


async def test_miss_then_hit_and_what_is_sent(make_client: Any) -> None:
    client = await make_client(models=MODELS)
    with provider_mock() as mock:
        route = mock.post(URL).mock(return_value=httpx.Response(200, json=openai_completion("direct")))
        first = await client.post(
            CHAT, json=ask(temperature=0.2, user="u1", metadata={"a": "b"}), headers=auth()
        )
        second = await client.post(CHAT, json=ask(temperature=0.2), headers=auth())
    assert route.call_count == 1
    assert (first.headers["x-cache"], second.headers["x-cache"]) == ("MISS", "HIT")
    assert second.json()["choices"][0]["message"]["content"] == "direct"
    sent = route.calls.last.request
    assert sent.headers["authorization"] == "Bearer sk-upstream-secret"
    payload = orjson.loads(sent.content)
    assert payload["model"] == "gpt-4o-mini"  # the upstream's name, not the alias
    assert payload["temperature"] == 0.2 and payload["user"] == "u1"
    assert payload["metadata"] == {"a": "b"}  # every field but the proxy's own reaches the provider
    assert "stream" not in payload


async def test_stream_miss_then_stream_hit(make_client: Any) -> None:
    client = await make_client(models=MODELS)
    with provider_mock() as mock:
        route = mock.post(URL).mock(
            return_value=httpx.Response(
                200, content=openai_sse(["Hel", "lo"]), headers={"content-type": "text/event-stream"}
            )
        )
        for expected in ("MISS", "HIT"):
            response = await client.post(CHAT, json=ask(stream=True), headers=auth())
            assert response.headers["x-cache"] == expected
            events = sse_events(response.content)
            assert events[-1] == "[DONE]"
            text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events[:-1] if e["choices"])
            assert text == "Hello"
    assert route.call_count == 1
    assert orjson.loads(route.calls.last.request.content)["stream_options"] == {"include_usage": True}


@pytest.mark.parametrize(
    "upstream, status, code",
    [
        (httpx.Response(500, json={"error": {"message": "boom"}}), 502, "upstream_error"),
        (httpx.Response(400, json={"error": {"message": "bad temperature"}}), 400, "upstream_rejected"),
        (
            httpx.Response(429, json={"error": {"message": "slow"}}, headers={"retry-after": "3"}),
            429,
            "rate_limit_exceeded",
        ),
        (httpx.Response(200, content=b"{not json"), 502, "upstream_error"),
        (httpx.ConnectError("refused"), 502, "upstream_error"),
        (httpx.ReadTimeout("slow"), 504, "upstream_timeout"),
    ],
)
async def test_failures(make_client: Any, upstream: Any, status: int, code: str) -> None:
    client = await make_client(models=MODELS)
    with provider_mock() as mock:
        route = mock.post(URL)
        route.mock(side_effect=upstream) if isinstance(upstream, Exception) else route.mock(
            return_value=upstream
        )
        response = await client.post(CHAT, json=ask(), headers=auth())
        again = await client.post(CHAT, json=ask(), headers=auth())
    assert route.call_count == 2  # nothing was cached
    assert response.status_code == status and response.json()["error"]["code"] == code
    assert again.status_code == status
    if status == 429:
        assert response.headers["retry-after"] == "3"


async def test_broken_stream_is_not_cached(make_client: Any) -> None:
    client = await make_client(models=MODELS)
    with provider_mock() as mock:
        route = mock.post(URL).mock(
            return_value=httpx.Response(
                200, content=openai_sse(["par"], finish=False), headers={"content-type": "text/event-stream"}
            )
        )
        await client.post(CHAT, json=ask(stream=True), headers=auth())
        second = await client.post(CHAT, json=ask(stream=True), headers=auth())
    assert second.headers["x-cache"] == "MISS" and route.call_count == 2


def test_direct_needs_an_openai_compatible_model() -> None:
    from proxy.config import parse_config
    from proxy.errors import ConfigError

    with pytest.raises(ConfigError, match="route: direct needs an OpenAI-compatible litellm_model"):
        parse_config(
            {
                "models": [
                    {"name": "c", "litellm_model": "anthropic/claude-3-5-haiku-latest", "route": "direct"}
                ],
                "tenants": [{"name": "t", "api_keys": ["sk-12345678"]}],
            },
            {},
        )
