"""Fixtures round trip through Redis: record with the fake provider, export, delete the
keys, import, replay: every answer identical through the openai SDK, streams too, and the
provider never called in replay. Runs on Redis Cluster too (LLMCP_TEST_CLUSTER=1)."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import pytest
import redis

from proxy.config import Config
from proxy.core.fixture_format import parse_line, place
from proxy.store.connection import RedisGate, connect
from proxy.store.fixtures import export, write
from proxy.testing.fake_provider import FakeState, FakeUpstream
from proxy.testing.transports import HttpxTransport
from proxy.upstream.selector import Upstreams
from tests.conftest import TENANT_KEYS, UPSTREAM_BASE, build_config, keys_without_ttl, own_keys

pytestmark = pytest.mark.anyio
MODELS = [
    {"name": "gpt-4o-mini", "litellm_model": "openai/gpt-4o-mini", "api_base": UPSTREAM_BASE},
    {"name": "emb", "litellm_model": "openai/text-embedding-3-small", "api_base": UPSTREAM_BASE},
]
KINDS = ["chat", "cmpl", "resp", "emb"]


def tenants(mode: str) -> list[dict[str, Any]]:
    return [{"name": n, "api_keys": [k], "cache_mode": mode} for n, k in TENANT_KEYS.items()]


def fake_upstreams(state: FakeState) -> Upstreams:
    """The fake provider in-process, over httpx: the real direct upstream code calls it."""
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=FakeUpstream(state)))
    return Upstreams(120, transport=HttpxTransport(http))


async def exercise(client: httpx.AsyncClient, tenant: str = "acme") -> dict[str, Any]:
    """Every endpoint through the official SDK, stream and not: what each answer dumps to."""
    sdk = openai.AsyncOpenAI(
        base_url="http://proxy/v1", api_key=TENANT_KEYS[tenant], http_client=client, max_retries=0
    )
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello fixtures"}]
    out: dict[str, Any] = {}
    out["chat"] = (await sdk.chat.completions.create(model="gpt-4o-mini", messages=messages)).model_dump()
    stream = await sdk.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "Stream fixtures"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    out["chat_stream"] = [chunk.model_dump() async for chunk in stream]
    out["completions"] = (
        await sdk.completions.create(model="gpt-4o-mini", prompt="Once upon a time", max_tokens=20)
    ).model_dump()
    out["responses"] = (
        await sdk.responses.create(model="gpt-4o-mini", input="Respond, fixtures")
    ).model_dump()
    events = await sdk.responses.create(model="gpt-4o-mini", input="Stream a response", stream=True)
    out["responses_stream"] = [e.model_dump() async for e in events]
    emb = await sdk.embeddings.create(model="emb", input=["alpha", "beta", "gamma"])
    out["embeddings"] = emb.model_dump()
    return out


async def test_round_trip_record_export_delete_import_replay(
    make_client: Any, redis_url: str, redis_sync: redis.Redis, key_prefix: str
) -> None:
    state = FakeState()
    recorder = await make_client(upstreams=fake_upstreams(state), models=MODELS, tenants=tenants("record"))
    await exercise(recorder)  # the misses: recorded
    calls = state.requests
    recorded = await exercise(recorder)  # the same again: every answer a hit now
    assert state.requests == calls

    config = build_config(key_prefix, models=MODELS, tenants=tenants("record"))
    lines = await _export(config, redis_url)
    assert sorted({line.endpoint for line in lines}) == ["chat", "completions", "embeddings", "responses"]
    assert len([line for line in lines if line.endpoint == "embeddings"]) == 3  # one line per item
    assert keys_without_ttl(redis_sync, key_prefix) == []
    text = b"".join(line.line() + b"\n" for line in lines)

    redis_sync.unlink(*own_keys(redis_sync, key_prefix))  # "flush": only this test's keys
    placed = [place(parse_line(raw), config) for raw in text.splitlines()]
    assert not any(p.rekeyed for p in placed)
    await _write(config, redis_url, placed)

    replayer = await make_client(upstreams=fake_upstreams(state), models=MODELS, tenants=tenants("replay"))
    replayed = await exercise(replayer)
    assert state.requests == calls  # replay never called the provider
    assert replayed == recorded
    # Exporting what was imported gives the same file, byte for byte.
    again = await _export(config, redis_url)
    assert b"".join(line.line() + b"\n" for line in again) == text


async def _export(config: Config, url: str) -> list[Any]:
    client = connect(url, config.redis)
    try:
        namespaces = [t.name for t in config.tenants]
        return (await export(RedisGate(client, 0), config.redis.key_prefix, namespaces, KINDS)).fixtures
    finally:
        await client.aclose()


async def _write(config: Config, url: str, placed: list[Any]) -> None:
    client = connect(url, config.redis)
    try:
        gate = RedisGate(client, 0)
        ttls = [3600] * len(placed)
        assert await write(
            gate, config.redis.key_prefix, placed, ttls, config.cache.compress_min_bytes
        ) == len(placed)
    finally:
        await client.aclose()
