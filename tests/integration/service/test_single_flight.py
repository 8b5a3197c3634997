"""Herd protection: identical concurrent misses make one upstream call."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import httpx
import pytest
import redis

from proxy.store.flight import flight_lock
from proxy.upstream.demo import DemoUpstream
from proxy.upstream.selector import Upstreams
from tests.conftest import (
    TENANT_KEYS,
    UPSTREAM_BASE,
    auth,
    keys_without_ttl,
    openai_completion,
    openai_sse,
    provider_mock,
    sse_events,
)

pytestmark = pytest.mark.anyio
CHAT = "/v1/chat/completions"
URL = f"{UPSTREAM_BASE}/chat/completions"
SAME = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "everyone asks this"}]}


def slow(response: httpx.Response, delay: float = 0.3) -> Any:
    async def respond(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(delay)
        return response

    return respond


async def test_fifty_identical_misses_make_one_upstream_call(make_client: Any) -> None:
    client = await make_client()
    with provider_mock() as mock:
        route = mock.post(URL).mock(side_effect=slow(httpx.Response(200, json=openai_completion("shared"))))
        responses = await asyncio.gather(*[client.post(CHAT, json=SAME, headers=auth()) for _ in range(50)])
    assert route.call_count == 1
    assert all(r.status_code == 200 for r in responses)
    assert {r.json()["choices"][0]["message"]["content"] for r in responses} == {"shared"}
    statuses = sorted(r.headers["x-cache"] for r in responses)
    assert statuses.count("MISS") == 1 and statuses.count("HIT") == 49
    assert sum(r.headers.get("x-cache-coalesced") == "1" for r in responses) == 49


async def test_leader_failure_releases_followers_without_a_cached_error(make_client: Any) -> None:
    client = await make_client()
    with provider_mock() as mock:
        calls = {"n": 0}

        async def first_fails(request: httpx.Request) -> httpx.Response:
            calls["n"] += 1
            await asyncio.sleep(0.3)
            if calls["n"] == 1:
                return httpx.Response(500, json={"error": {"message": "boom"}})
            return httpx.Response(200, json=openai_completion("recovered"))

        mock.post(URL).mock(side_effect=first_fails)
        started = time.perf_counter()
        responses = await asyncio.gather(*[client.post(CHAT, json=SAME, headers=auth()) for _ in range(10)])
    assert time.perf_counter() - started < 5
    codes = sorted(r.status_code for r in responses)
    assert codes.count(502) == 1  # only the leader saw the failure
    assert codes.count(200) == 9
    assert all(
        r.json()["choices"][0]["message"]["content"] == "recovered" for r in responses if r.status_code == 200
    )


async def test_a_streaming_leader_failing_before_its_first_chunk_releases_its_followers_at_once(
    make_client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Streaming followers of a streaming leader wait on its chunk stream; when the leader
    fails before any chunk, they hear "failed" from that stream and make their own calls
    right away, not after lock_ms (a minute here: they would find the lock gone, "went
    away", which the log would say)."""
    client = await make_client(single_flight={"lock_ms": 60_000})
    ask = {**SAME, "stream": True}
    with provider_mock() as mock:
        calls = {"n": 0}

        async def first_fails(request: httpx.Request) -> httpx.Response:
            calls["n"] += 1
            await asyncio.sleep(0.3)  # the others join the flight meanwhile
            if calls["n"] == 1:
                return httpx.Response(500, json={"error": {"message": "boom"}})
            sse = openai_sse(["recov", "ered"])
            return httpx.Response(200, content=sse, headers={"content-type": "text/event-stream"})

        mock.post(URL).mock(side_effect=first_fails)
        with caplog.at_level(logging.INFO, logger="llmcp.flight"):
            responses = await asyncio.gather(*[client.post(CHAT, json=ask, headers=auth()) for _ in range(5)])
    codes = sorted(r.status_code for r in responses)
    assert codes == [200, 200, 200, 200, 502]  # only the leader saw the failure
    for r in responses:
        if r.status_code == 200:
            events = sse_events(r.content)
            assert events[-1] == "[DONE]"
            assert "".join(
                e["choices"][0]["delta"].get("content") or "" for e in events[:-1] if e["choices"]
            ) == ("recovered")
    followed = [r.getMessage() for r in caplog.records if "following failed" in r.getMessage()]
    assert len(followed) == 4
    assert all("the single-flight leader failed" in m for m in followed), followed


async def test_a_crashed_leader_does_not_strand_its_followers(
    make_client: Any, redis_sync: redis.Redis, key_prefix: str
) -> None:
    client = await make_client(single_flight={"lock_ms": 400})
    with provider_mock() as mock:
        mock.post(URL).mock(return_value=httpx.Response(200, json=openai_completion("own call")))
        probe = await client.post(
            CHAT, json={**SAME, "messages": [{"role": "user", "content": "probe"}]}, headers=auth()
        )
        digest_of = probe.headers["x-cache-key"]  # noqa: F841 (shows the header exists)
        # A leader that died: its lock is there, nobody will ever release it.
        target = await client.post(CHAT, json=SAME, headers={**auth(), "Cache-Control": "no-store"})
        lock = flight_lock(key_prefix, "acme", target.headers["x-cache-key"])
        redis_sync.set(lock, "dead-leader:n", px=400)
        started = time.perf_counter()
        response = await client.post(CHAT, json=SAME, headers=auth())
        elapsed = time.perf_counter() - started
    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"] == "own call"
    assert elapsed < 2.0


async def test_streaming_followers_get_the_leaders_chunks_live(make_client: Any) -> None:
    paced = Upstreams(5.0, demo=DemoUpstream(latency_s=0.2, chunk_delay_s=0.05))
    client = await make_client(upstreams=paced)
    ask = {"model": "demo", "messages": [{"role": "user", "content": "stream to all of us"}], "stream": True}

    async def one() -> tuple[str, str, str]:
        # (httpx's ASGI transport buffers bodies: live timing is checked end to end instead)
        response = await client.post(CHAT, json=ask, headers=auth())
        events = sse_events(response.content)
        assert events[-1] == "[DONE]"
        text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events[:-1] if e["choices"])
        return response.headers["x-cache"], text, response.headers.get("x-cache-coalesced", "")

    results = await asyncio.gather(*[one() for _ in range(8)])
    assert {text for _, text, _ in results} == {"This is the demo model. You said: stream to all of us"}
    assert sorted(status for status, _, _ in results).count("MISS") == 1
    assert [c for _, _, c in results].count("1") == 7


async def test_rate_limits_charge_only_the_leader(make_client: Any) -> None:
    tenants = [
        {
            "name": "acme",
            "api_keys": [TENANT_KEYS["acme"]],
            "limits": {"requests_per_minute": 1, "burst_requests": 2},
        }
    ]
    client = await make_client(tenants=tenants)
    with provider_mock() as mock:
        route = mock.post(URL).mock(side_effect=slow(httpx.Response(200, json=openai_completion("x"))))
        responses = await asyncio.gather(*[client.post(CHAT, json=SAME, headers=auth()) for _ in range(20)])
        assert route.call_count == 1
    assert all(r.status_code == 200 for r in responses)
    other = await client.post(
        CHAT, json={**SAME, "messages": [{"role": "user", "content": "2nd"}]}, headers=auth()
    )
    assert other.status_code in (200, 502)  # one request left in the bucket of 2
    third = await client.post(
        CHAT, json={**SAME, "messages": [{"role": "user", "content": "3rd"}]}, headers=auth()
    )
    assert third.status_code == 429


async def test_flight_keys_are_cleaned_up(make_client: Any, redis_sync: redis.Redis, key_prefix: str) -> None:
    client = await make_client()
    with provider_mock() as mock:
        mock.post(URL).mock(
            side_effect=slow(
                httpx.Response(
                    200, content=openai_sse(["a", "b"]), headers={"content-type": "text/event-stream"}
                )
            )
        )
        await asyncio.gather(
            *[client.post(CHAT, json={**SAME, "stream": True}, headers=auth()) for _ in range(5)]
        )
    assert not [
        k for k in redis_sync.scan_iter(match=f"{key_prefix}:*:flight:*") if not k.endswith(b":chunks")
    ]
    assert keys_without_ttl(redis_sync, key_prefix) == []
