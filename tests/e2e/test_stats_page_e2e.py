"""The issue's reproduction, end to end: a burst of 50 identical requests against the 0.5 s
demo model. Followers are counted as `coalesced` (not as hits with their wait time) in
/stats, /metrics and the stats page, which a real headless Chromium reads; the page's chart
has a labelled time axis and the unauthenticated row is explained."""

from __future__ import annotations

import asyncio
import re
import shutil
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import httpx
import openai
import pytest
import redis

from tests.conftest import ADMIN_KEY, TENANT_KEYS
from tests.e2e.browser import stats_page
from tests.e2e.stack import Stack, start_stack, stop_stack

pytestmark = pytest.mark.e2e
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
BURST = 50


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, redis_url: str, redis_sync: redis.Redis
) -> Iterator[Stack]:
    stack = start_stack(
        tmp_path_factory.mktemp("e2e-stats-page"),
        redis_url,
        admin={"api_keys": [ADMIN_KEY]},
        stats={"flush_interval_ms": 50},
    )
    yield stack
    stop_stack(stack, redis_sync)


async def burst(stack: Stack, content: str) -> list[tuple[str, str]]:
    """BURST identical requests at once from the async openai SDK: (X-Cache, X-Cache-Coalesced)."""
    async with openai.AsyncOpenAI(
        base_url=stack.base_url, api_key=TENANT_KEYS["acme"], max_retries=0
    ) as client:

        async def one() -> tuple[str, str]:
            raw = await client.chat.completions.with_raw_response.create(
                model="demo", messages=[{"role": "user", "content": content}]
            )
            return raw.headers["x-cache"], raw.headers.get("x-cache-coalesced", "")

        return await asyncio.gather(*[one() for _ in range(BURST)])


@pytest.fixture(scope="module")
def report(stack: Stack) -> dict:
    content = f"burst {uuid.uuid4()}"
    results = asyncio.run(burst(stack, content))
    # What clients see is unchanged: one MISS, the followers HIT with X-Cache-Coalesced: 1.
    assert sorted(results) == [("HIT", "1")] * (BURST - 1) + [("MISS", "")]
    with stack.client("acme") as client:
        for _ in range(2):  # two real hits
            client.chat.completions.create(model="demo", messages=[{"role": "user", "content": content}])
    stranger = openai.OpenAI(base_url=stack.base_url, api_key="sk-not-a-key-at-all", max_retries=0)
    with stranger, pytest.raises(openai.AuthenticationError):  # counted under no tenant
        stranger.chat.completions.create(model="demo", messages=[{"role": "user", "content": "who am I"}])
    for _ in range(100):  # the server flushes every 50 ms
        body = httpx.get(f"{stack.base_url[:-3]}/stats", headers=ADMIN).json()
        if body["windows"]["all"]["totals"]["requests"] >= BURST + 3:
            return body
    raise AssertionError("stats never counted the burst")


def test_followers_are_coalesced_not_hits(report: dict) -> None:
    demo = report["windows"]["1h"]["tenants"]["acme"]["models"]["demo"]
    assert (demo["requests"], demo["misses"], demo["hits"], demo["coalesced"]) == (BURST + 2, 1, 2, BURST - 1)
    assert demo["latency_ms"]["hit"]["count"] == 2  # the burst's waits are not hit latencies
    assert demo["latency_ms"]["coalesced"]["count"] == BURST - 1
    assert demo["hit_ratio"] == round(2 / (BURST + 2), 4)
    assert demo["upstream_avoided_ratio"] == round((BURST + 1) / (BURST + 2), 4)
    unauthenticated = report["windows"]["1h"]["tenants"]["_proxy"]["totals"]
    assert unauthenticated["errors"]["auth"] == 1
    assert report["windows"]["1h"]["totals"]["requests"] == BURST + 3  # counted in the totals


def test_metrics_have_the_coalesced_outcome(stack: Stack, report: dict) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{stack.base_url[:-3]}/metrics", headers=ADMIN).text
    samples = {
        (s.name, s.labels.get("cache")): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.labels.get("tenant") == "acme" and s.labels.get("model") == "demo" and "le" not in s.labels
    }
    assert samples[("llmcp_requests_total", "coalesced")] == BURST - 1
    assert samples[("llmcp_requests_total", "hit")] == 2
    assert samples[("llmcp_request_duration_seconds_count", "coalesced")] == BURST - 1
    assert samples[("llmcp_request_duration_seconds_count", "hit")] == 2


@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian chromium is not installed")
def test_the_page_shows_coalesced_a_time_axis_and_explains_unauthenticated(
    stack: Stack, report: dict
) -> None:
    with stats_page(stack, width=1200) as page:
        shown = page.text_content("#windows td[data-metric='coalesced'][data-window='1h']")
        assert shown == str(BURST - 1)
        assert page.text_content("#windows td[data-metric='hits'][data-window='1h']") == "2"
        coalesced_ms = page.text_content("#windows td[data-metric='latency_coalesced'][data-window='1h']")
        assert re.fullmatch(r"[0-9.]+/[0-9.]+", coalesced_ms or ""), coalesced_ms
        # The unauthenticated row: named as such, explained, and still in the totals.
        row = page.locator("#breakdown tr[data-tenant='_proxy']")
        assert row.locator("td").first.text_content() == "unauthenticated"
        assert page.is_visible("#unauthenticated-note")
        assert "_proxy" not in page.text_content("#breakdown")
        assert page.text_content("#breakdown tr[data-tenant='acme'] td[data-metric='coalesced']") == str(
            BURST - 1
        )
        # The chart's time axis: ticks at round times, labelled, per window.
        now = datetime.fromtimestamp(report["generated_at"], UTC)
        expected = {
            "1h": (600, r"\d\d:\d0", 6),
            "24h": (3 * 3600, r"\d\d:00", 8),
            "7d": (86400, r"(Sun|Mon|Tue|Wed|Thu|Fri|Sat) \d\d-\d\d", 7),
        }
        for series, (every, pattern, at_least) in expected.items():
            page.click(f"#series-tabs button:text-is('{series}')")
            ticks = page.locator("#chart g.tick")
            times = [int(t) for t in ticks.evaluate_all("ts => ts.map(t => t.dataset.t)")]
            labels = ticks.locator("text").all_text_contents()
            assert len(labels) >= at_least, (series, labels)
            assert all(re.fullmatch(pattern, label) for label in labels), (series, labels)
            assert all(t % every == 0 for t in times)
            # Labelled with the time they stand for (UTC), spanning the window up to now.
            first = datetime.fromtimestamp(times[0], UTC)
            assert labels[0] in (first.strftime("%H:%M"), first.strftime("%a %m-%d"))
            assert times[-1] <= now.timestamp() + every
            xs = [
                float(v)
                for v in ticks.locator("line").evaluate_all("ls => ls.map(l => l.getAttribute('x1'))")
            ]
            assert xs == sorted(xs) and len(set(xs)) == len(xs)
        page.click("#series-tabs button:text-is('1h')")
        assert page.locator("#chart circle").count() >= 1  # the burst's minute has a point
        assert ADMIN_KEY not in page.content()
