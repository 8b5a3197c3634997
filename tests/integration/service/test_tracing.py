"""OpenTelemetry spans of proxied requests, read from the SDK's in-memory exporter: the
span tree, the GenAI and llmcp attributes, `traceparent` continuation, no prompt text."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from proxy.errors import ConfigError
from proxy.http.app import create_app
from proxy.service.runtime import Runtime
from proxy.service.tracing import Tracing
from proxy.testing.transports import HttpxTransport
from proxy.upstream.demo import DemoUpstream
from proxy.upstream.selector import Upstreams
from tests.conftest import (
    TENANT_KEYS,
    UPSTREAM_BASE,
    auth,
    build_config,
    openai_completion,
    openai_sse,
    provider_mock,
)

pytestmark = pytest.mark.anyio
CHAT = "/v1/chat/completions"
URL = f"{UPSTREAM_BASE}/chat/completions"
SECRET = "my secret prompt 7f3a"
LIMITED = [
    {"name": "acme", "api_keys": [TENANT_KEYS["acme"]], "limits": {"requests_per_minute": 600}},
    {"name": "globex", "api_keys": [TENANT_KEYS["globex"]], "limits": {"requests_per_minute": 1}},
]
Traced = tuple[httpx.AsyncClient, InMemorySpanExporter]


@pytest.fixture
async def traced(redis_url: str, key_prefix: str) -> AsyncIterator[Callable[..., Any]]:
    """`await traced(**config_overrides)` -> (client, exporter) of an app with tracing on."""
    apps: list[tuple[Any, httpx.AsyncClient]] = []

    async def factory(upstreams: Upstreams | None = None, **overrides: Any) -> Traced:
        config = build_config(key_prefix, tracing={"enabled": True}, tenants=LIMITED, **overrides)
        exporter = InMemorySpanExporter()
        tracing = Tracing.build(config, {}, exporter)
        upstreams = upstreams or Upstreams(5.0, transport=HttpxTransport())
        app = create_app(config, redis_url, upstreams, tracing=tracing)
        lifespan = app.router.lifespan_context(app)
        await lifespan.__aenter__()
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://proxy")
        apps.append((lifespan, client))
        return client, exporter

    yield factory
    for lifespan, client in reversed(apps):
        await client.aclose()
        await lifespan.__aexit__(None, None, None)


def ask(content: str = "hello", model: str = "gpt-4o-mini", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": content}], **extra}


def servers(exporter: InMemorySpanExporter) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.kind is SpanKind.SERVER]


def children(exporter: InMemorySpanExporter, server: ReadableSpan) -> dict[str, ReadableSpan]:
    """The server span's children by name (each stage once per request)."""
    assert server.context is not None
    found = [
        s
        for s in exporter.get_finished_spans()
        if s.parent is not None and s.parent.span_id == server.context.span_id
    ]
    assert all(s.context is not None and s.context.trace_id == server.context.trace_id for s in found)
    by_name = {s.name: s for s in found}
    assert len(by_name) == len(found), [s.name for s in found]
    return by_name


def dumped(exporter: InMemorySpanExporter) -> str:
    """Every span as the exporter would send it (names, attributes, events, resource)."""
    return "\n".join(s.to_json() for s in exporter.get_finished_spans())


async def test_a_miss_then_a_hit(traced: Callable[..., Any]) -> None:
    client, exporter = await traced()
    answer = {**openai_completion("traced"), "model": "gpt-4o-mini-2024-07-18", "id": "chatcmpl-42"}
    with provider_mock() as mock:
        mock.post(URL).mock(return_value=httpx.Response(200, json=answer))
        miss = await client.post(CHAT, json=ask(max_tokens=50, temperature=0.2), headers=auth())
        hit = await client.post(CHAT, json=ask(max_tokens=50, temperature=0.2), headers=auth())
    assert (miss.headers["x-cache"], hit.headers["x-cache"]) == ("MISS", "HIT")
    first, second = servers(exporter)

    assert first.name == "POST /v1/chat/completions"
    assert first.parent is None  # no traceparent sent: a new trace
    attributes = dict(first.attributes or {})
    assert attributes == {
        "http.request.method": "POST",
        "http.route": "/v1/chat/completions",
        "url.path": "/v1/chat/completions",
        "http.response.status_code": 200,
        "gen_ai.operation.name": "chat",
        "gen_ai.request.model": "gpt-4o-mini",
        "gen_ai.response.model": "gpt-4o-mini-2024-07-18",
        "gen_ai.response.id": "chatcmpl-42",
        "gen_ai.provider.name": "openai",
        "gen_ai.system": "openai",
        "gen_ai.usage.input_tokens": 5,
        "gen_ai.usage.output_tokens": 2,
        "llmcp.tenant": "acme",
        "llmcp.request_id": miss.headers["x-request-id"],
        "llmcp.cache.status": "MISS",
        "llmcp.cache.outcome": "miss",
        "llmcp.cache.key": miss.headers["x-cache-key"],
    }
    stages = children(exporter, first)
    assert set(stages) == {"llmcp.cache.lookup", "llmcp.ratelimit", "chat gpt-4o-mini"}
    call = stages["chat gpt-4o-mini"]
    assert call.kind is SpanKind.CLIENT
    assert dict(call.attributes or {}) == {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openai",
        "gen_ai.system": "openai",
        "gen_ai.request.model": "gpt-4o-mini",
        "gen_ai.request.max_tokens": 50,
        "gen_ai.request.temperature": 0.2,
        "gen_ai.response.model": "gpt-4o-mini-2024-07-18",
        "gen_ai.response.id": "chatcmpl-42",
        "gen_ai.usage.input_tokens": 5,
        "gen_ai.usage.output_tokens": 2,
        "llmcp.stream": False,
    }
    # The stages ran in order, inside the request's span.
    lookup, limit = stages["llmcp.cache.lookup"], stages["llmcp.ratelimit"]
    assert first.start_time is not None and first.end_time is not None
    assert first.start_time <= lookup.start_time <= limit.start_time <= call.start_time  # type: ignore[operator]
    assert call.end_time <= first.end_time  # type: ignore[operator]

    # A hit: the lookup only, its tokens from the stored answer, no provider call.
    assert set(children(exporter, second)) == {"llmcp.cache.lookup"}
    hit_attributes = dict(second.attributes or {})
    assert hit_attributes["llmcp.cache.status"] == "HIT"
    assert hit_attributes["gen_ai.usage.input_tokens"] == 5
    assert "gen_ai.response.model" not in hit_attributes
    assert second.context is not None and first.context is not None
    assert second.context.trace_id != first.context.trace_id


async def test_the_clients_traceparent_is_continued(traced: Callable[..., Any]) -> None:
    client, exporter = await traced()
    trace_id, parent_id = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    headers = {**auth(), "traceparent": f"00-{trace_id}-{parent_id}-01", "tracestate": "vendor=x"}
    await client.post(CHAT, json=ask(model="demo"), headers=headers)
    (server,) = servers(exporter)
    assert server.context is not None and server.parent is not None
    assert format(server.context.trace_id, "032x") == trace_id
    assert format(server.parent.span_id, "016x") == parent_id and server.parent.is_remote
    assert server.context.trace_state.get("vendor") == "x"
    # Every child is in the client's trace too.
    assert set(children(exporter, server)) == {"llmcp.cache.lookup", "llmcp.ratelimit", "chat echo"}
    # A malformed traceparent starts a new trace instead of failing the request.
    bad = await client.post(CHAT, json=ask(model="demo"), headers={**auth(), "traceparent": "00-zz-01"})
    assert bad.status_code == 200
    assert servers(exporter)[1].parent is None


async def test_no_prompt_text_in_spans_unless_log_prompts(traced: Callable[..., Any]) -> None:
    client, exporter = await traced()
    for stream in (False, True):
        await client.post(CHAT, json=ask(SECRET, "demo", stream=stream), headers=auth())
    assert len(servers(exporter)) == 2
    assert SECRET not in dumped(exporter)

    client, exporter = await traced(server={"log_prompts": True})
    await client.post(CHAT, json=ask(SECRET, "demo"), headers=auth())
    (server,) = servers(exporter)
    assert SECRET in str((server.attributes or {})["llmcp.request.body"])
    assert SECRET in dumped(exporter)  # (so the check above would have seen it)


async def test_single_flight_followers_have_a_wait_span(traced: Callable[..., Any]) -> None:
    slow_demo = Upstreams(5.0, demo=DemoUpstream(latency_s=0.3, chunk_delay_s=0.0))
    client, exporter = await traced(upstreams=slow_demo)
    responses = await asyncio.gather(
        *[client.post(CHAT, json=ask("herd", "demo"), headers=auth()) for _ in range(5)]
    )
    assert sorted(r.headers["x-cache"] for r in responses) == ["HIT"] * 4 + ["MISS"]
    trees = {
        dict(s.attributes or {})["llmcp.cache.outcome"]: set(children(exporter, s)) for s in servers(exporter)
    }
    assert trees == {
        "miss": {"llmcp.cache.lookup", "llmcp.ratelimit", "chat echo"},
        "coalesced": {"llmcp.cache.lookup", "llmcp.single_flight.wait"},
    }
    outcomes = [dict(s.attributes or {})["llmcp.cache.outcome"] for s in servers(exporter)]
    assert sorted(outcomes) == ["coalesced"] * 4 + ["miss"]
    statuses = {dict(s.attributes or {})["llmcp.cache.status"] for s in servers(exporter)}
    assert statuses == {"HIT", "MISS"}  # what the clients were told


async def test_a_streamed_miss_ends_its_provider_span_with_the_usage(traced: Callable[..., Any]) -> None:
    client, exporter = await traced()
    with provider_mock() as mock:
        mock.post(URL).mock(
            return_value=httpx.Response(
                200, content=openai_sse(["a", "b"]), headers={"content-type": "text/event-stream"}
            )
        )
        response = await client.post(CHAT, json=ask("stream me", stream=True), headers=auth())
    assert response.status_code == 200 and response.headers["x-cache"] == "MISS"
    (server,) = servers(exporter)
    call = children(exporter, server)["chat gpt-4o-mini"]
    attributes = dict(call.attributes or {})
    assert attributes["llmcp.stream"] is True
    assert (attributes["gen_ai.usage.input_tokens"], attributes["gen_ai.usage.output_tokens"]) == (4, 2)
    assert dict(server.attributes or {})["gen_ai.usage.input_tokens"] == 4
    assert attributes["gen_ai.response.model"] == "gpt-4o-mini"
    assert call.end_time <= server.end_time  # type: ignore[operator]


async def test_failures_mark_the_spans(traced: Callable[..., Any]) -> None:
    client, exporter = await traced()
    with provider_mock() as mock:
        mock.post(URL).mock(return_value=httpx.Response(500, json={"error": {"message": SECRET}}))
        failed = await client.post(CHAT, json=ask("fails"), headers=auth())
    assert failed.status_code == 502
    server = servers(exporter)[-1]
    assert server.status.status_code is StatusCode.ERROR
    assert dict(server.attributes or {})["error.type"] == "upstream"
    call = children(exporter, server)["chat gpt-4o-mini"]
    assert call.status.status_code is StatusCode.ERROR
    assert str(dict(call.attributes or {})["error.type"]).startswith("Upstream")
    assert SECRET not in dumped(exporter)  # the error's class, never its message

    for content in ("first", "second"):  # globex: 1 request a minute
        limited = await client.post(CHAT, json=ask(content, "demo"), headers=auth("globex"))
    assert limited.status_code == 429
    server = servers(exporter)[-1]
    assert dict(server.attributes or {})["error.type"] == "rate_limited_requests"
    assert server.status.status_code is StatusCode.UNSET  # a 4xx is the client's, not an error here
    limit = children(exporter, server)["llmcp.ratelimit"]
    assert dict(limit.attributes or {})["error.type"] == "rate_limited"

    unauthorized = await client.post(CHAT, json=ask(), headers={"Authorization": "Bearer sk-wrong-key"})
    assert unauthorized.status_code == 401
    server = servers(exporter)[-1]
    assert dict(server.attributes or {})["llmcp.tenant"] == "_proxy"
    assert dict(server.attributes or {})["error.type"] == "auth"
    assert children(exporter, server) == {}


async def test_embeddings(traced: Callable[..., Any]) -> None:
    client, exporter = await traced()
    body = {"model": "demo", "input": ["one", "two"]}
    for _ in range(2):
        await client.post("/v1/embeddings", json=body, headers=auth())
    miss, hit = servers(exporter)
    assert dict(miss.attributes or {})["gen_ai.operation.name"] == "embeddings"
    assert set(children(exporter, miss)) == {"llmcp.cache.lookup", "llmcp.ratelimit", "embeddings echo"}
    assert set(children(exporter, hit)) == {"llmcp.cache.lookup"}
    assert dict(hit.attributes or {})["llmcp.cache.status"] == "HIT"


def test_enabled_without_opentelemetry_is_a_config_error(
    key_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As if the extra were not installed (opentelemetry-api comes with FastAPI; the SDK does not).
    monkeypatch.setitem(sys.modules, "opentelemetry.sdk", None)
    monkeypatch.setitem(sys.modules, "opentelemetry.sdk.trace", None)
    with pytest.raises(ConfigError, match=r"tracing\.enabled: OpenTelemetry is not installed: pip install"):
        build_config(key_prefix, tracing={"enabled": True})
    assert build_config(key_prefix).tracing.enabled is False  # off: not needed


async def test_a_reload_cannot_turn_tracing_on_or_off(redis_url: str, key_prefix: str) -> None:
    """The tracer is built once per process: changing tracing.* needs a restart."""
    runtime = Runtime.build(build_config(key_prefix), redis_url)
    try:
        with pytest.raises(ConfigError, match=r"tracing\.\* changed: restart"):
            runtime.reload(build_config(key_prefix, tracing={"enabled": True}))
        assert runtime.tracing is None and runtime.config.tracing.enabled is False
    finally:
        await runtime.close()


def test_an_unknown_otlp_protocol_is_a_config_error(key_prefix: str) -> None:
    config = build_config(key_prefix, tracing={"enabled": True})
    with pytest.raises(ConfigError, match="http/json is not supported"):
        Tracing.build(config, {"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"})
    assert Tracing.build(build_config(key_prefix), {}) is None


def test_the_proxy_serves_without_opentelemetry_when_tracing_is_off(redis_url: str, key_prefix: str) -> None:
    """In a process where the OpenTelemetry SDK cannot be imported, the app starts and
    answers; and a normal process never imports the SDK's tracing or the exporter either
    (redis-py imports the SDK's metrics when it is there: not ours)."""
    code = f"""
import sys
sys.modules["opentelemetry.sdk.trace"] = None  # any import of it fails
sys.modules["opentelemetry.exporter"] = None
import asyncio, httpx
from proxy.http.app import create_app
from tests.conftest import auth, build_config

async def main():
    app = create_app(build_config({key_prefix!r}), {redis_url!r})
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://proxy") as c:
            r = await c.post("/v1/chat/completions", headers=auth(),
                             json={{"model": "demo", "messages": [{{"role": "user", "content": "hi"}}]}})
            assert r.status_code == 200, r.text
asyncio.run(main())
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    imported = (
        "import sys, proxy.http.app, proxy.service.tracing; "
        "ours = ('opentelemetry.sdk.trace', 'opentelemetry.exporter'); "
        "sys.exit(any(m.startswith(ours) for m in sys.modules))"
    )
    assert subprocess.run([sys.executable, "-c", imported], timeout=60).returncode == 0
