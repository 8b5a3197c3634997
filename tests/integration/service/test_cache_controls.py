"""Cache-Control, X-Cache-TTL, the TTL caps and X-End-User behave the same on every cached
endpoint (one pipeline): chat, completions, responses and embeddings, against a real Redis."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import redis

from proxy.config import ModelConfig
from proxy.core.apis.base import GenerationAdapter
from proxy.upstream.demo import DemoUpstream
from proxy.upstream.selector import Upstreams
from tests.conftest import auth

pytestmark = pytest.mark.anyio
MAX_TTL = 7200


class CountingDemo(DemoUpstream):
    """The demo model, answering at once and counting what reaches it."""

    def __init__(self) -> None:
        super().__init__(latency_s=0.0, chunk_delay_s=0.0)
        self.calls = 0

    async def complete(
        self, model: ModelConfig, body: dict[str, Any], api: GenerationAdapter
    ) -> dict[str, Any]:
        self.calls += 1
        return await super().complete(model, body, api)

    async def embed(
        self, model: ModelConfig, inputs: list[Any], dimensions: int | None
    ) -> tuple[list[list[float]], int]:
        self.calls += 1
        return await super().embed(model, inputs, dimensions)


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


async def client_and_upstream(make_client: Any, **overrides: Any) -> tuple[Any, CountingDemo]:
    demo = CountingDemo()
    cache = {"ttl_seconds": 600, "max_ttl_seconds": MAX_TTL}
    client = await make_client(upstreams=Upstreams(5.0, demo=demo), cache=cache, **overrides)
    return client, demo


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
    assert first.json()["object"] == second.json()["object"] and demo.calls == 1


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
    fresh = await client.post(path, json=body("nocache"), headers={**auth(), "Cache-Control": "no-cache"})
    assert fresh.status_code == 200 and fresh.headers["x-cache"] == "BYPASS" and demo.calls == 2
    assert ttls(redis_sync, key_prefix, kind)  # stored again
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
    assert all(MAX_TTL - 10 <= t <= MAX_TTL for t in ttls(redis_sync, key_prefix, kind))
    for key in redis_sync.scan_iter(match=f"{key_prefix}:v1:acme:{kind}:*"):
        redis_sync.unlink(key)
    await client.post(path, json=body("default"), headers=auth())
    assert all(590 <= t <= 600 for t in ttls(redis_sync, key_prefix, kind))


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
