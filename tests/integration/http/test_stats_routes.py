"""/stats, /stats/events, /metrics and admin purge through the app, on a real Redis."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import httpx
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from proxy.testing.transports import HttpxTransport
from proxy.upstream.demo import DemoUpstream
from proxy.upstream.selector import Upstreams
from tests.conftest import (
    TENANT_KEYS,
    UPSTREAM_BASE,
    auth,
    cache_keys,
    keys_without_ttl,
    openai_completion,
    openai_sse,
    own_keys,
    provider_mock,
)

pytestmark = pytest.mark.anyio
CHAT = "/v1/chat/completions"
URL = f"{UPSTREAM_BASE}/chat/completions"


def ask(content: str, model: str = "gpt-4o-mini", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": content}], **extra}


@pytest.fixture
def upstream() -> Any:
    with provider_mock() as mock:
        yield mock


async def known_mix(client: httpx.AsyncClient, upstream: Any) -> None:
    """acme: 2 misses, 3 hits, 1 bypass, 1 upstream error, 1 bad request; on demo 1 miss and
    1 limited;
    globex: 1 miss; plus 1 request with a bad key."""
    route = upstream.post(URL).mock(return_value=httpx.Response(200, json=openai_completion("ok")))
    for content in ("one", "two", "one", "one", "two"):
        assert (await client.post(CHAT, json=ask(content), headers=auth())).status_code == 200
    await client.post(CHAT, json=ask("one"), headers={**auth(), "Cache-Control": "no-cache"})
    route.mock(return_value=httpx.Response(500, json={"error": {"message": "down"}}))
    assert (await client.post(CHAT, json=ask("three"), headers=auth())).status_code == 502
    assert (await client.post(CHAT, json=ask("x", temperature=9), headers=auth())).status_code == 400
    assert (await client.post(CHAT, json=ask("four", "demo"), headers=auth())).status_code == 200
    assert (await client.post(CHAT, json=ask("five", "demo"), headers=auth())).status_code == 429
    route.mock(return_value=httpx.Response(200, json=openai_completion("ok")))
    assert (await client.post(CHAT, json=ask("one"), headers=auth("globex"))).status_code == 200
    bad = await client.post(CHAT, json=ask("one"), headers={"Authorization": "Bearer sk-nope-nope"})
    assert bad.status_code == 401


TENANTS = [
    {
        "name": "acme",
        "api_keys": [TENANT_KEYS["acme"]],
        "limits": {"models": {"demo": {"requests_per_minute": 1, "burst_requests": 1}}},
    },
    {"name": "globex", "api_keys": [TENANT_KEYS["globex"]]},
]


async def test_counters_after_a_known_mix(make_client: Any, upstream: Any) -> None:
    # A demo answering at once; gpt-4o-mini goes direct, over httpx where respx sees it.
    fast = Upstreams(5.0, demo=DemoUpstream(latency_s=0.0, chunk_delay_s=0.0), transport=HttpxTransport())
    client = await make_client(upstreams=fast, tenants=TENANTS)
    await known_mix(client, upstream)
    report = (await client.get("/stats", headers=auth("admin"))).json()
    for window in ("1h", "24h", "7d", "all"):
        acme = report["windows"][window]["tenants"]["acme"]["models"]["gpt-4o-mini"]
        assert (acme["hits"], acme["misses"], acme["bypasses"]) == (3, 2, 1)
        assert acme["errors"]["upstream"] == 1
        assert acme["errors"]["bad_request"] == 1
        assert acme["hit_ratio"] == 0.5
        assert acme["not_cacheable"] == 0
        assert acme["tokens_saved"] == {"prompt": 15, "completion": 6, "total": 21}  # 3 hits x (5 + 2)
        assert acme["upstream_tokens"]["total"] == 3 * 7
        assert acme["latency_ms"]["hit"]["count"] == 3 and acme["latency_ms"]["hit"]["p50"] is not None
        demo = report["windows"][window]["tenants"]["acme"]["models"]["demo"]
        assert demo["rate_limited"]["requests"] == 1
        assert (demo["requests"], demo["misses"]) == (2, 1)
        globex = report["windows"][window]["tenants"]["globex"]["totals"]
        assert (globex["requests"], globex["misses"]) == (1, 1)
        assert report["windows"][window]["tenants"]["_proxy"]["totals"]["errors"]["auth"] == 1
        totals = report["windows"][window]["totals"]
        assert totals["requests"] == 8 + 2 + 1 + 1  # acme gpt, acme demo, globex, bad key
    assert report["cache"]["entries"] == 4  # acme one, two, four; globex one
    assert report["cache"]["memory_bytes"] > 0
    assert [p["hits"] for p in report["series"]["1h"] if p["hits"]] == [3]


async def test_cost_saved_matches_litellm_prices(make_client: Any, upstream: Any) -> None:
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import litellm

    client = await make_client()
    upstream.post(URL).mock(return_value=httpx.Response(200, json=openai_completion("ok")))
    for _ in range(4):
        await client.post(CHAT, json=ask("priced"), headers=auth())
    report = (await client.get("/stats", headers=auth())).json()
    figures = report["windows"]["all"]["tenants"]["acme"]["models"]["gpt-4o-mini"]
    prompt_cost, completion_cost = litellm.cost_per_token(
        model="gpt-4o-mini", prompt_tokens=15, completion_tokens=6
    )
    assert figures["tokens_saved"] == {"prompt": 15, "completion": 6, "total": 21}
    assert figures["cost_saved_usd"] == pytest.approx(prompt_cost + completion_cost, rel=1e-6)
    assert figures["cost_saved_usd"] > 0


async def test_tenants_see_only_themselves(make_client: Any, upstream: Any) -> None:
    client = await make_client()
    upstream.post(URL).mock(return_value=httpx.Response(200, json=openai_completion("ok")))
    await client.post(CHAT, json=ask("mine"), headers=auth("globex"))
    own = (await client.get("/stats", headers=auth("acme"))).json()
    assert own["tenants"] == ["acme"] and own["scope"] == "tenant:acme"
    assert "globex" not in own["windows"]["all"]["tenants"]
    assert (await client.get("/stats?tenant=globex", headers=auth("acme"))).status_code == 403
    assert (await client.get("/stats")).status_code == 401
    assert (await client.get("/stats/events", headers=auth("acme"))).status_code == 403
    assert (await client.get("/metrics", headers=auth("acme"))).status_code == 403
    assert (await client.delete("/admin/cache?tenant=acme", headers=auth("acme"))).status_code == 403
    admin = (await client.get("/stats?tenant=globex", headers=auth("admin"))).json()
    assert admin["windows"]["all"]["tenants"]["globex"]["totals"]["requests"] == 1


async def test_metrics_parse_and_agree_with_stats(make_client: Any, upstream: Any) -> None:
    client = await make_client()
    upstream.post(URL).mock(return_value=httpx.Response(200, json=openai_completion("ok")))
    for content in ("a", "a", "b", "a"):
        await client.post(CHAT, json=ask(content), headers=auth())
    response = await client.get("/metrics", headers=auth("admin"))
    assert response.headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(response.text)}
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value for f in families.values() for s in f.samples
    }
    labels = (("cache", "hit"), ("model", "gpt-4o-mini"), ("tenant", "acme"))
    assert samples[("llmcp_requests_total", labels)] == 2
    assert samples[("llmcp_request_duration_seconds_count", labels)] == 2
    saved = (("kind", "completion"), ("model", "gpt-4o-mini"), ("tenant", "acme"))
    assert samples[("llmcp_tokens_saved_total", saved)] == 4
    for name in (
        "llmcp_requests",
        "llmcp_tokens_saved",
        "llmcp_cost_saved_usd",
        "llmcp_rate_limited",
        "llmcp_upstream_errors",
        "llmcp_not_cacheable",
        "llmcp_redis_errors",
        "llmcp_request_duration_seconds",
    ):
        assert name in families, name
    assert families["llmcp_request_duration_seconds"].type == "histogram"
    assert samples[("llmcp_cache_entries", ())] == 2


async def test_single_flight_followers_are_counted_as_coalesced(make_client: Any, upstream: Any) -> None:
    """A herd of 10: 1 miss and 9 followers, then 2 hits. Followers are their own outcome
    (own latency histogram), not hits; they count as tokens saved; clients still see HIT."""

    async def slow(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(0.3)  # long enough for the other 9 to find the leader's lock
        return httpx.Response(200, json=openai_completion("herd"))

    client = await make_client()
    upstream.post(URL).mock(side_effect=slow)
    herd = await asyncio.gather(*[client.post(CHAT, json=ask("herd"), headers=auth()) for _ in range(10)])
    assert sorted(r.headers["x-cache"] for r in herd) == ["HIT"] * 9 + ["MISS"]
    assert sum(r.headers.get("x-cache-coalesced") == "1" for r in herd) == 9
    for _ in range(2):
        assert (await client.post(CHAT, json=ask("herd"), headers=auth())).headers["x-cache"] == "HIT"
    report = (await client.get("/stats", headers=auth("admin"))).json()
    for window in ("1h", "24h", "7d", "all"):
        f = report["windows"][window]["tenants"]["acme"]["models"]["gpt-4o-mini"]
        assert (f["requests"], f["misses"], f["hits"], f["coalesced"]) == (12, 1, 2, 9)
        assert f["latency_ms"]["coalesced"]["count"] == 9 and f["latency_ms"]["hit"]["count"] == 2
        assert f["latency_ms"]["coalesced"]["p50"] is not None
        assert f["hit_ratio"] == round(2 / 12, 4)
        assert f["upstream_avoided_ratio"] == round(11 / 12, 4)
        assert f["tokens_saved"]["total"] == 11 * 7 and f["upstream_tokens"]["total"] == 7
    point = [p for p in report["series"]["1h"] if p["requests"]]
    assert [(p["hits"], p["coalesced"], p["hit_ratio"]) for p in point] == [(2, 9, round(2 / 12, 4))]
    assert report["series_step_seconds"] == {"1h": 60, "24h": 3600, "7d": 86400}
    assert len(report["series"]["7d"]) == 7
    events = (await client.get("/stats/events?limit=100", headers=auth("admin"))).json()["data"]
    assert sorted(e["event"] for e in events) == ["coalesced"] * 9 + ["hit"] * 2 + ["miss"]
    metrics = (await client.get("/metrics", headers=auth("admin"))).text
    samples = {
        (s.name, s.labels.get("cache"), s.labels.get("le")): s.value
        for f in text_string_to_metric_families(metrics)
        for s in f.samples
        if s.labels.get("tenant") == "acme"
    }
    assert samples[("llmcp_requests_total", "coalesced", None)] == 9
    assert samples[("llmcp_requests_total", "hit", None)] == 2
    assert samples[("llmcp_request_duration_seconds_count", "coalesced", None)] == 9
    assert samples[("llmcp_request_duration_seconds_bucket", "coalesced", "+Inf")] == 9


async def test_answers_served_but_not_stored_are_counted(make_client: Any, upstream: Any) -> None:
    """A stream without usage cannot give back the JSON answer: served, not stored, counted
    in /stats and /metrics."""
    direct = {
        "name": "direct",
        "litellm_model": "openai/gpt-4o-mini",
        "api_base": UPSTREAM_BASE,
        "api_key": "sk-upstream-secret",
        "route": "direct",
    }
    client = await make_client(models=[direct])
    upstream.post(URL).mock(
        return_value=httpx.Response(
            200, content=openai_sse(["a", "b"], usage=False), headers={"content-type": "text/event-stream"}
        )
    )
    for _ in range(2):
        response = await client.post(CHAT, json=ask("no usage", "direct", stream=True), headers=auth())
        assert response.headers["x-cache"] == "MISS"
    report = (await client.get("/stats", headers=auth("admin"))).json()
    figures = report["windows"]["1h"]["tenants"]["acme"]["models"]["direct"]
    assert (figures["misses"], figures["not_cacheable"]) == (2, 2)
    assert report["windows"]["all"]["totals"]["not_cacheable"] == 2
    metrics = (await client.get("/metrics", headers=auth("admin"))).text
    families = {f.name: f for f in text_string_to_metric_families(metrics)}
    (sample,) = families["llmcp_not_cacheable"].samples
    assert (sample.name, sample.labels, sample.value) == (
        "llmcp_not_cacheable_total",
        {"tenant": "acme", "model": "direct"},
        2,
    )


async def test_event_stream_is_capped_and_has_a_ttl(
    make_client: Any, redis_sync: redis.Redis, key_prefix: str
) -> None:
    fast = Upstreams(5.0, demo=DemoUpstream(latency_s=0.0, chunk_delay_s=0.0))
    client = await make_client(upstreams=fast, stats={"events_max": 50})
    for i in range(400):
        await client.post(CHAT, json=ask(f"e{i % 40}", "demo"), headers=auth())
        if i % 50 == 0:
            await client.get("/stats/events?limit=1", headers=auth("admin"))  # flushes
    events = (await client.get("/stats/events?limit=1000", headers=auth("admin"))).json()["data"]
    stream = f"{key_prefix}:v1:events"
    # MAXLEN ~ trims whole stream nodes (100 entries): the length stays within one node of the cap.
    assert 50 <= redis_sync.xlen(stream) <= 50 + 100
    assert len(events) == redis_sync.xlen(stream)
    assert events[0]["event"] in ("hit", "miss") and events[0]["tenant"] == "acme"
    assert "content" not in events[0] and "e1" not in str(events[0].values())  # no prompt text
    assert redis_sync.ttl(stream) > 0
    assert keys_without_ttl(redis_sync, key_prefix) == []
    assert (await client.get("/stats/events?limit=0", headers=auth("admin"))).status_code == 400


async def test_purge_is_scoped(
    make_client: Any, upstream: Any, redis_sync: redis.Redis, key_prefix: str
) -> None:
    limits = {"requests_per_minute": 100}
    tenants = [{"name": n, "api_keys": [k], "limits": limits} for n, k in TENANT_KEYS.items()]
    client = await make_client(tenants=tenants)
    upstream.post(URL).mock(return_value=httpx.Response(200, json=openai_completion("ok")))
    for tenant in ("acme", "globex"):
        for content in ("p1", "p2", "p3"):
            await client.post(CHAT, json=ask(content), headers=auth(tenant))
        await client.post(CHAT, json=ask("d1", "demo"), headers=auth(tenant))
    await client.get("/stats", headers=auth("admin"))  # flush stats keys too
    before = set(own_keys(redis_sync, key_prefix))
    only_demo = await client.delete("/admin/cache?tenant=acme&model=demo", headers=auth("admin"))
    assert only_demo.json()["deleted"] == 1
    rest = await client.delete("/admin/cache?tenant=acme", headers=auth("admin"))
    assert rest.json()["deleted"] == 3
    after = set(own_keys(redis_sync, key_prefix))
    gone = before - after
    assert len(gone) == 8  # 4 answers and the 4 requests kept beside them
    assert all(
        k.startswith((f"{key_prefix}:v1:acme:chat:".encode(), f"{key_prefix}:v1:acme:req:".encode()))
        for k in gone
    )
    assert len([k for k in after if b":globex:chat:" in k]) == 4
    assert len([k for k in after if b":globex:req:" in k]) == 4
    assert any(b"{acme}:rl:" in k for k in after) and any(b"{acme}:stats:" in k for k in after)
    assert (await client.delete("/admin/cache", headers=auth("admin"))).status_code == 400
    everything = await client.delete("/admin/cache?all=true", headers=auth("admin"))
    assert everything.json()["deleted"] == 4
    assert cache_keys(redis_sync, key_prefix) == []
    assert not [k for k in own_keys(redis_sync, key_prefix) if b":req:" in k]
