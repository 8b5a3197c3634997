"""Chat completions through the real app, a real Redis and a respx-mocked provider."""

from __future__ import annotations

from typing import Any

import httpx
import orjson
import pytest
import redis

from tests.conftest import (
    UPSTREAM_BASE,
    auth,
    cache_keys,
    keys_without_ttl,
    openai_completion,
    openai_sse,
    provider_mock,
    sse_events,
)

pytestmark = pytest.mark.anyio
CHAT = "/v1/chat/completions"
URL = f"{UPSTREAM_BASE}/chat/completions"


def body(content: str = "Hello?", **extra: Any) -> dict[str, Any]:
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": content}], **extra}


@pytest.fixture
def upstream() -> Any:
    with provider_mock(assert_all_called=False) as mock:
        yield mock


async def test_miss_then_hit_calls_upstream_once(make_client: Any, upstream: Any) -> None:
    route = upstream.post(URL).mock(return_value=httpx.Response(200, json=openai_completion("Hi there")))
    client = await make_client()
    first = await client.post(CHAT, json=body(), headers=auth())
    second = await client.post(CHAT, json=body(), headers=auth())
    assert route.call_count == 1
    assert first.status_code == second.status_code == 200
    assert first.headers["x-cache"] == "MISS"
    assert second.headers["x-cache"] == "HIT"
    assert second.headers["age"] == "0"
    assert len(second.headers["x-cache-key"]) == 64
    assert "age" not in first.headers
    assert second.json() == first.json()
    assert second.json()["choices"][0]["message"]["content"] == "Hi there"
    assert second.json()["usage"]["total_tokens"] == 7


async def test_upstream_gets_the_server_key_and_client_never_sees_it(make_client: Any, upstream: Any) -> None:
    route = upstream.post(URL).mock(return_value=httpx.Response(200, json=openai_completion()))
    client = await make_client()
    response = await client.post(CHAT, json=body(), headers=auth())
    sent = route.calls.last.request
    assert sent.headers["authorization"] == "Bearer sk-upstream-secret"
    assert b"sk-upstream-secret" not in response.content
    assert all("sk-upstream-secret" not in v for v in response.headers.values())


async def test_client_cannot_redirect_the_upstream(make_client: Any, upstream: Any) -> None:
    route = upstream.post(URL).mock(return_value=httpx.Response(200, json=openai_completion()))
    client = await make_client()
    evil = body(
        api_base="http://evil.test/v1", base_url="http://evil.test/v1", api_key="x", mock_response="pwned"
    )
    response = await client.post(CHAT, json=evil, headers=auth())
    assert response.status_code == 200
    assert route.call_count == 1
    assert response.json()["choices"][0]["message"]["content"] == "Hello!"


async def test_stream_miss_then_stream_hit(make_client: Any, upstream: Any) -> None:
    route = upstream.post(URL).mock(
        return_value=httpx.Response(
            200, content=openai_sse(["Hel", "lo", "!"]), headers={"content-type": "text/event-stream"}
        )
    )
    client = await make_client()
    req = body(stream=True, stream_options={"include_usage": True})
    first = await client.post(CHAT, json=req, headers=auth())
    second = await client.post(CHAT, json=req, headers=auth())
    assert route.call_count == 1
    assert (first.headers["x-cache"], second.headers["x-cache"]) == ("MISS", "HIT")
    for response in (first, second):
        assert response.headers["content-type"].startswith("text/event-stream")
        events = sse_events(response.content)
        assert events[-1] == "[DONE]"
        text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events[:-1] if e["choices"])
        assert text == "Hello!"
        assert events[-2]["usage"]["completion_tokens"] == 3
    # The upstream was always asked for usage, whatever the client asked.
    assert orjson.loads(route.calls.last.request.content)["stream_options"] == {"include_usage": True}


async def test_usage_chunk_only_when_client_asks(make_client: Any, upstream: Any) -> None:
    upstream.post(URL).mock(
        return_value=httpx.Response(
            200, content=openai_sse(["a", "b"]), headers={"content-type": "text/event-stream"}
        )
    )
    client = await make_client()
    for _ in range(2):  # miss, then hit
        events = sse_events((await client.post(CHAT, json=body(stream=True), headers=auth())).content)
        assert all("usage" not in e for e in events[:-1])


async def test_stream_and_non_stream_share_entries(make_client: Any, upstream: Any) -> None:
    route = upstream.post(URL).mock(
        return_value=httpx.Response(
            200, content=openai_sse(["x", "y"]), headers={"content-type": "text/event-stream"}
        )
    )
    client = await make_client()
    await client.post(CHAT, json=body(stream=True), headers=auth())
    plain = await client.post(CHAT, json=body(), headers=auth())
    assert plain.headers["x-cache"] == "HIT"
    assert plain.json()["choices"][0]["message"]["content"] == "xy"
    assert plain.json()["object"] == "chat.completion"
    assert route.call_count == 1


async def test_interrupted_stream_is_not_cached(make_client: Any, upstream: Any) -> None:
    route = upstream.post(URL).mock(
        return_value=httpx.Response(
            200,
            content=openai_sse(["par", "tial"], finish=False),
            headers={"content-type": "text/event-stream"},
        )
    )
    client = await make_client()
    first = await client.post(CHAT, json=body(stream=True), headers=auth())
    assert "[DONE]" not in sse_events(first.content)
    second = await client.post(CHAT, json=body(stream=True), headers=auth())
    assert second.headers["x-cache"] == "MISS"
    assert route.call_count == 2


@pytest.mark.parametrize(
    "upstream_response, status, code",
    [
        (httpx.Response(500, json={"error": {"message": "boom"}}), 502, "upstream_error"),
        (httpx.Response(503, json={"error": {"message": "overloaded"}}), 502, "upstream_error"),
        (httpx.Response(401, json={"error": {"message": "bad key"}}), 502, "upstream_error"),
        (
            httpx.Response(
                400, json={"error": {"message": "bad temperature", "type": "invalid_request_error"}}
            ),
            400,
            "upstream_rejected",
        ),
        (
            httpx.Response(429, json={"error": {"message": "slow down"}}, headers={"retry-after": "7"}),
            429,
            "rate_limit_exceeded",
        ),
        (httpx.ConnectError("refused"), 502, "upstream_error"),
        (httpx.ReadTimeout("slow"), 504, "upstream_timeout"),
    ],
)
async def test_upstream_failures_map_to_clear_errors_and_are_not_cached(
    make_client: Any,
    upstream: Any,
    redis_sync: redis.Redis,
    key_prefix: str,
    upstream_response: Any,
    status: int,
    code: str,
) -> None:
    route = upstream.post(URL)
    if isinstance(upstream_response, Exception):
        route.mock(side_effect=upstream_response)
    else:
        route.mock(return_value=upstream_response)
    client = await make_client()
    response = await client.post(CHAT, json=body(), headers=auth())
    assert route.called
    assert response.status_code == status
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == code
    if status == 429:
        assert response.headers["retry-after"] == "7"
    assert cache_keys(redis_sync, key_prefix) == []


async def test_cache_control_directives(
    make_client: Any, upstream: Any, redis_sync: redis.Redis, key_prefix: str
) -> None:
    route = upstream.post(URL).mock(return_value=httpx.Response(200, json=openai_completion()))
    client = await make_client()
    no_store = await client.post(CHAT, json=body(), headers={**auth(), "Cache-Control": "no-store"})
    assert no_store.headers["x-cache"] == "MISS"
    assert cache_keys(redis_sync, key_prefix) == []
    no_cache = await client.post(CHAT, json=body(), headers={**auth(), "Cache-Control": "no-cache"})
    assert no_cache.headers["x-cache"] == "BYPASS"
    assert len(cache_keys(redis_sync, key_prefix)) == 1  # fetched fresh and stored
    hit = await client.post(CHAT, json=body(), headers=auth())
    assert hit.headers["x-cache"] == "HIT"
    both = await client.post(CHAT, json=body(), headers={**auth(), "Cache-Control": "no-cache, no-store"})
    assert both.headers["x-cache"] == "BYPASS"
    assert route.call_count == 3


async def test_ttl_defaults_overrides_and_header(
    make_client: Any, upstream: Any, redis_sync: redis.Redis, key_prefix: str
) -> None:
    upstream.post(URL).mock(return_value=httpx.Response(200, json=openai_completion()))
    client = await make_client(cache={"ttl_seconds": 3600, "max_ttl_seconds": 7200})

    async def ttl_of(content: str, headers: dict[str, str]) -> int:
        response = await client.post(CHAT, json=body(content), headers={**auth(), **headers})
        digest = response.headers["x-cache-key"]
        return int(redis_sync.ttl(f"{key_prefix}:v1:acme:chat:{{{digest}}}"))

    assert 3590 < await ttl_of("a", {}) <= 3600
    assert 50 < await ttl_of("b", {"X-Cache-TTL": "60"}) <= 60
    assert 7190 < await ttl_of("c", {"X-Cache-TTL": "999999"}) <= 7200  # capped
    assert await ttl_of("d", {"X-Cache-TTL": "0"}) == -2  # 0 = do not store
    bad = await client.post(CHAT, json=body("e"), headers={**auth(), "X-Cache-TTL": "soon"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "X-Cache-TTL"


async def test_tenant_ttl_wins_over_model_ttl(
    make_client: Any, upstream: Any, redis_sync: redis.Redis, key_prefix: str
) -> None:
    upstream.post(URL).mock(return_value=httpx.Response(200, json=openai_completion()))
    models = [
        {
            "name": "gpt-4o-mini",
            "litellm_model": "openai/gpt-4o-mini",
            "api_base": UPSTREAM_BASE,
            "api_key": "k-123456",
            "cache_ttl_seconds": 100,
        }
    ]
    tenants = [
        {"name": "acme", "api_keys": ["sk-acme-test-key"]},
        {"name": "globex", "api_keys": ["sk-globex-test-key"], "cache_ttl_seconds": 300},
    ]
    client = await make_client(models=models, tenants=tenants)
    for tenant, expected in (("acme", 100), ("globex", 300)):
        r = await client.post(CHAT, json=body(), headers=auth(tenant))
        ttl = redis_sync.ttl(f"{key_prefix}:v1:{tenant}:chat:{{{r.headers['x-cache-key']}}}")
        assert expected - 5 < ttl <= expected


async def test_tenants_never_share_entries(make_client: Any, upstream: Any) -> None:
    route = upstream.post(URL).mock(return_value=httpx.Response(200, json=openai_completion()))
    client = await make_client()
    await client.post(CHAT, json=body(), headers=auth("acme"))
    other = await client.post(CHAT, json=body(), headers=auth("globex"))
    assert other.headers["x-cache"] == "MISS"
    assert route.call_count == 2


async def test_shared_scope_shares_entries(
    make_client: Any, upstream: Any, redis_sync: redis.Redis, key_prefix: str
) -> None:
    route = upstream.post(URL).mock(return_value=httpx.Response(200, json=openai_completion()))
    client = await make_client(cache={"scope": "shared"})
    await client.post(CHAT, json=body(), headers=auth("acme"))
    other = await client.post(CHAT, json=body(), headers=auth("globex"))
    assert other.headers["x-cache"] == "HIT"
    assert route.call_count == 1
    assert [k.decode().split(":")[2] for k in cache_keys(redis_sync, key_prefix)] == ["shared"]


async def test_answers_over_the_size_cap_are_served_not_stored(
    make_client: Any, upstream: Any, redis_sync: redis.Redis, key_prefix: str
) -> None:
    upstream.post(URL).mock(return_value=httpx.Response(200, json=openai_completion("x" * 5000)))
    client = await make_client(cache={"max_entry_bytes": 1024})
    response = await client.post(CHAT, json=body(), headers=auth())
    assert response.status_code == 200 and len(response.json()["choices"][0]["message"]["content"]) == 5000
    assert cache_keys(redis_sync, key_prefix) == []


async def test_every_key_written_has_a_ttl(
    make_client: Any, upstream: Any, redis_sync: redis.Redis, key_prefix: str
) -> None:
    upstream.post(URL).mock(return_value=httpx.Response(200, json=openai_completion()))
    client = await make_client()
    for i in range(5):
        await client.post(CHAT, json=body(f"q{i}"), headers=auth())
        await client.post(
            CHAT, json={**body(f"s{i}"), "model": "demo", "stream": True}, headers=auth("globex")
        )
    assert len(cache_keys(redis_sync, key_prefix)) == 10
    assert keys_without_ttl(redis_sync, key_prefix) == []


async def test_a_stream_past_max_stream_seconds_is_cut_with_an_error_and_not_cached(make_client: Any) -> None:
    from proxy.upstream.demo import DemoUpstream
    from proxy.upstream.selector import Upstreams

    slow = Upstreams(5, demo=DemoUpstream(latency_s=0, chunk_delay_s=0.05))
    client = await make_client(upstreams=slow, server={"max_stream_seconds": 0.2})
    body = {"model": "demo", "messages": [{"role": "user", "content": "a b c d e f g h i j"}], "stream": True}
    for _ in range(2):
        response = await client.post("/v1/chat/completions", json=body, headers=auth())
        events = sse_events(response.content)
        assert response.headers["x-cache"] == "MISS"
        assert events[-1]["error"]["code"] == "upstream_timeout" and "[DONE]" not in events


@pytest.mark.parametrize("log_prompts", [False, True])
async def test_prompts_reach_the_log_only_with_log_prompts(
    make_client: Any, caplog: pytest.LogCaptureFixture, log_prompts: bool
) -> None:
    import logging

    from proxy.upstream.demo import DemoUpstream
    from proxy.upstream.selector import Upstreams

    client = await make_client(
        upstreams=Upstreams(5, demo=DemoUpstream(latency_s=0)), server={"log_prompts": log_prompts}
    )
    body = {"model": "demo", "messages": [{"role": "user", "content": "my secret plan"}]}
    with caplog.at_level(logging.INFO, logger="llmcp.access"):
        assert (await client.post("/v1/chat/completions", json=body, headers=auth())).status_code == 200
    lines = [r.getMessage() for r in caplog.records if r.name == "llmcp.access"]
    assert lines and any("my secret plan" in line for line in lines) == log_prompts
    assert not any("sk-acme-test-key" in line for line in lines)
