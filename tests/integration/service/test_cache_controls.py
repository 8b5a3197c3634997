"""Cache-Control, X-Cache-TTL, the TTL caps and X-End-User behave the same on every cached
endpoint (one pipeline): chat, completions, responses and embeddings, against a real Redis."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
import redis

from proxy.config import ModelConfig
from proxy.core.apis.base import GenerationAdapter
from proxy.upstream.demo import DemoUpstream
from proxy.upstream.selector import Upstreams
from tests.conftest import auth
from tests.servers import free_port

pytestmark = pytest.mark.anyio
MAX_TTL = 7200


class CountingDemo(DemoUpstream):
    """The demo model, answering at once and counting what reaches it."""

    def __init__(self, latency_s: float = 0.0) -> None:
        super().__init__(latency_s=latency_s, chunk_delay_s=0.0)
        self.calls = 0

    async def complete(
        self, model: ModelConfig, body: dict[str, Any], api: GenerationAdapter
    ) -> dict[str, Any]:
        self.calls += 1
        return await super().complete(model, body, api)

    async def embed(
        self, model: ModelConfig, inputs: list[Any], params: dict[str, Any]
    ) -> tuple[list[list[float]], int]:
        self.calls += 1
        return await super().embed(model, inputs, params)


# path, cache key kind, body for a given text
ENDPOINTS: dict[str, tuple[str, str, Callable[[str], dict[str, Any]]]] = {
    "chat": (
        "/v1/chat/completions",
        "chat",
        lambda t: {"model": "demo", "messages": [{"role": "user", "content": t}]},
    ),
    "completions": ("/v1/completions", "cmpl", lambda t: {"model": "demo", "prompt": t}),
    "responses": ("/v1/responses", "resp", lambda t: {"model": "demo", "input": t}),
    "embeddings": ("/v1/embeddings", "emb", lambda t: {"model": "demo", "input": [t, t + " again"]}),
}


@pytest.fixture(params=sorted(ENDPOINTS))
def endpoint(request: pytest.FixtureRequest) -> tuple[str, str, Callable[[str], dict[str, Any]]]:
    return ENDPOINTS[request.param]


async def client_and_upstream(
    make_client: Any, latency_s: float = 0.0, **overrides: Any
) -> tuple[Any, CountingDemo]:
    demo = CountingDemo(latency_s)
    cache = {"ttl_seconds": 600, "max_ttl_seconds": MAX_TTL}
    client = await make_client(upstreams=Upstreams(5.0, demo=demo), cache=cache, **overrides)
    return client, demo


def answer(reply: Any) -> Any:
    """The answer, less an embeddings list's `usage` (it counts only what went upstream)."""
    body = reply.json()
    if body.get("object") == "list":
        body.pop("usage")
    return body


def ttls(redis_sync: redis.Redis, prefix: str, kind: str) -> list[int]:
    keys = list(redis_sync.scan_iter(match=f"{prefix}:v1:acme:{kind}:*", count=1000))
    return [int(redis_sync.ttl(k)) for k in keys]


async def test_plain_requests_miss_then_hit(make_client: Any, endpoint: Any) -> None:
    path, _, body = endpoint
    client, demo = await client_and_upstream(make_client)
    first = await client.post(path, json=body("plain"), headers=auth())
    second = await client.post(path, json=body("plain"), headers=auth())
    assert (first.status_code, second.status_code) == (200, 200)
    assert (first.headers["x-cache"], second.headers["x-cache"]) == ("MISS", "HIT")
    assert answer(second) == answer(first) and demo.calls == 1


async def test_no_store_answers_but_stores_nothing(
    make_client: Any, endpoint: Any, redis_sync: redis.Redis, key_prefix: str
) -> None:
    path, kind, body = endpoint
    client, demo = await client_and_upstream(make_client)
    first = await client.post(path, json=body("nostore"), headers={**auth(), "Cache-Control": "no-store"})
    assert first.status_code == 200 and first.headers["x-cache"] == "MISS"
    assert ttls(redis_sync, key_prefix, kind) == []
    again = await client.post(path, json=body("nostore"), headers=auth())
    assert again.headers["x-cache"] == "MISS" and demo.calls == 2


async def test_no_cache_skips_the_lookup_and_stores_a_fresh_answer(
    make_client: Any, endpoint: Any, redis_sync: redis.Redis, key_prefix: str
) -> None:
    path, kind, body = endpoint
    client, demo = await client_and_upstream(make_client)
    await client.post(path, json=body("nocache"), headers=auth())
    no_cache = {**auth(), "Cache-Control": "no-cache", "X-Cache-TTL": "60"}
    fresh = await client.post(path, json=body("nocache"), headers=no_cache)
    assert fresh.status_code == 200 and fresh.headers["x-cache"] == "BYPASS" and demo.calls == 2
    stored = ttls(redis_sync, key_prefix, kind)  # stored again, with this request's TTL
    assert stored and all(t <= 60 for t in stored)
    hit = await client.post(path, json=body("nocache"), headers=auth())
    assert hit.headers["x-cache"] == "HIT" and demo.calls == 2


async def test_both_directives_are_a_full_bypass(
    make_client: Any, endpoint: Any, redis_sync: redis.Redis, key_prefix: str
) -> None:
    path, kind, body = endpoint
    client, demo = await client_and_upstream(make_client)
    both = {**auth(), "Cache-Control": "no-cache, no-store"}
    first = await client.post(path, json=body("both"), headers=both)
    assert first.headers["x-cache"] == "BYPASS" and ttls(redis_sync, key_prefix, kind) == []
    again = await client.post(path, json=body("both"), headers=auth())
    assert again.headers["x-cache"] == "MISS" and demo.calls == 2


async def test_x_cache_ttl_zero_means_do_not_store(
    make_client: Any, endpoint: Any, redis_sync: redis.Redis, key_prefix: str
) -> None:
    path, kind, body = endpoint
    client, demo = await client_and_upstream(make_client)
    first = await client.post(path, json=body("ttl0"), headers={**auth(), "X-Cache-TTL": "0"})
    assert first.status_code == 200 and ttls(redis_sync, key_prefix, kind) == []
    again = await client.post(path, json=body("ttl0"), headers=auth())
    assert again.headers["x-cache"] == "MISS" and demo.calls == 2


async def test_x_cache_ttl_sets_the_ttl_within_the_cap(
    make_client: Any, endpoint: Any, redis_sync: redis.Redis, key_prefix: str
) -> None:
    path, kind, body = endpoint
    client, _ = await client_and_upstream(make_client)
    await client.post(path, json=body("ttl60"), headers={**auth(), "X-Cache-TTL": "60"})
    assert ttls(redis_sync, key_prefix, kind) and all(
        50 <= t <= 60 for t in ttls(redis_sync, key_prefix, kind)
    )
    for key in redis_sync.scan_iter(match=f"{key_prefix}:v1:acme:{kind}:*"):
        redis_sync.unlink(key)
    await client.post(path, json=body("ttlcap"), headers={**auth(), "X-Cache-TTL": str(10 * MAX_TTL)})
    capped = ttls(redis_sync, key_prefix, kind)
    assert capped and all(MAX_TTL - 10 <= t <= MAX_TTL for t in capped)
    for key in redis_sync.scan_iter(match=f"{key_prefix}:v1:acme:{kind}:*"):
        redis_sync.unlink(key)
    await client.post(path, json=body("default"), headers=auth())
    default = ttls(redis_sync, key_prefix, kind)
    assert default and all(590 <= t <= 600 for t in default)


async def test_a_bad_x_cache_ttl_is_a_400(make_client: Any, endpoint: Any) -> None:
    path, _, body = endpoint
    client, demo = await client_and_upstream(make_client)
    bad = await client.post(path, json=body("bad"), headers={**auth(), "X-Cache-TTL": "soon"})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "X-Cache-TTL" and demo.calls == 0


async def test_x_end_user_gets_its_own_limits(make_client: Any, endpoint: Any) -> None:
    path, _, body = endpoint
    tenants = [
        {"name": "acme", "api_keys": ["sk-acme-test-key"], "limits": {"per_user": {"requests_per_minute": 1}}}
    ]
    client, _ = await client_and_upstream(make_client, tenants=tenants)
    alice = {**auth(), "X-End-User": "alice"}
    assert (await client.post(path, json=body("u1"), headers=alice)).status_code == 200
    limited = await client.post(path, json=body("u2"), headers=alice)
    assert limited.status_code == 429 and "end user" in limited.json()["error"]["message"]
    bob = await client.post(path, json=body("u3"), headers={**auth(), "X-End-User": "bob"})
    assert bob.status_code == 200


async def test_identical_concurrent_misses_make_one_upstream_call(make_client: Any, endpoint: Any) -> None:
    path, _, body = endpoint
    client, demo = await client_and_upstream(make_client, latency_s=1.0)
    replies = await asyncio.gather(*(client.post(path, json=body("herd"), headers=auth()) for _ in range(5)))
    assert [r.status_code for r in replies] == [200] * 5 and demo.calls == 1
    assert sorted(r.headers["x-cache"] for r in replies) == ["HIT"] * 4 + ["MISS"]
    assert sum(r.headers.get("x-cache-coalesced") == "1" for r in replies) == 4
    assert all(answer(r) == answer(replies[0]) for r in replies)


async def test_redis_down_answers_every_request_as_a_bypass(make_client: Any, endpoint: Any) -> None:
    path, _, body = endpoint
    demo = CountingDemo()
    down = f"redis://127.0.0.1:{free_port()}/0"
    client = await make_client(upstreams=Upstreams(5.0, demo=demo), url=down)
    for _ in range(2):
        reply = await client.post(path, json=body("down"), headers=auth())
        assert reply.status_code == 200 and reply.headers["x-cache"] == "BYPASS"
    assert demo.calls == 2
