"""Stats across two worker processes, from /stats, the CLI, /metrics and the page in a
real headless Chromium: the numbers agree."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
import redis

from tests.conftest import ADMIN_KEY, TENANT_KEYS
from tests.e2e.stack import Stack, cli, start_stack, stop_stack

pytestmark = pytest.mark.e2e
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, redis_url: str, redis_sync: redis.Redis
) -> Iterator[Stack]:
    tenants = [
        {"name": "acme", "api_keys": [TENANT_KEYS["acme"]]},
        {
            "name": "globex",
            "api_keys": [TENANT_KEYS["globex"]],
            "limits": {"requests_per_minute": 1, "burst_requests": 2},
        },
    ]
    stack = start_stack(
        tmp_path_factory.mktemp("e2e-stats"),
        redis_url,
        workers=2,
        admin={"api_keys": [ADMIN_KEY]},
        stats={"flush_interval_ms": 50},
        tenants=tenants,
    )
    client = stack.client("acme")
    prompts = [f"stats {uuid.uuid4()}" for _ in range(5)]
    for prompt in prompts:  # 5 misses, then 10 hits, spread over both workers
        client.chat.completions.create(model="fake", messages=[{"role": "user", "content": prompt}])
    for prompt in prompts * 2:
        client.chat.completions.create(model="fake", messages=[{"role": "user", "content": prompt}])
    globex = stack.client("globex")
    globex.chat.completions.create(model="fake", messages=[{"role": "user", "content": "g"}])  # miss
    # A bypass (no-cache: fetched fresh), then the bucket of 2 is empty: limited.
    globex.chat.completions.create(
        model="fake", messages=[{"role": "user", "content": "g"}], extra_headers={"Cache-Control": "no-cache"}
    )
    with pytest.raises(openai.RateLimitError):
        globex.chat.completions.create(model="fake", messages=[{"role": "user", "content": "limited"}])
    stack.upstream_mode(mode="error", status=500)  # a failed request
    with pytest.raises(openai.APIStatusError):
        client.chat.completions.create(model="fake", messages=[{"role": "user", "content": "fails"}])
    stack.upstream_mode(mode="ok")
    yield stack
    stop_stack(stack, redis_sync)


def report(stack: Stack) -> dict:
    # Both workers flush every 50 ms; wait until the totals are complete.
    for _ in range(100):
        body = httpx.get(f"{stack.base_url[:-3]}/stats", headers=ADMIN).json()
        if body["windows"]["all"]["totals"]["requests"] >= 19:
            return body
    raise AssertionError("stats never reached 19 requests")


def test_counters_across_two_workers(stack: Stack) -> None:
    body = report(stack)
    acme = body["windows"]["all"]["tenants"]["acme"]["totals"]
    assert (acme["requests"], acme["misses"], acme["hits"]) == (16, 5, 10)
    assert acme["errors"]["upstream"] == 1
    assert acme["hit_ratio"] == pytest.approx(10 / 15, abs=1e-4)
    globex = body["windows"]["1h"]["tenants"]["globex"]["totals"]
    assert (globex["requests"], globex["misses"], globex["bypasses"]) == (3, 1, 1)
    assert globex["rate_limited"]["requests"] == 1


def test_cli_stats_agree_without_importing_litellm(stack: Stack, redis_url: str) -> None:
    body = report(stack)
    result = cli(stack, "stats", "--json", redis_url=redis_url)
    assert result.returncode == 0, result.stderr
    from_cli = json.loads(result.stdout)
    assert from_cli["windows"]["all"]["tenants"]["acme"] == body["windows"]["all"]["tenants"]["acme"]
    table = cli(stack, "stats", "--tenant", "acme", redis_url=redis_url)
    assert table.returncode == 0, table.stderr
    assert re.search(r"^all\s+16\s+10\s+5\s+0\s+66\.7%", table.stdout, re.M), table.stdout


def test_cli_inspect_and_purge(stack: Stack, redis_url: str) -> None:
    client = stack.client("acme")
    raw = client.chat.completions.with_raw_response.create(
        model="fake", messages=[{"role": "user", "content": "inspect me"}]
    )
    digest = raw.headers["x-cache-key"]
    shown = cli(stack, "inspect", digest, redis_url=redis_url)
    assert shown.returncode == 0, shown.stderr
    assert "tenant     acme" in shown.stdout and "model      fake" in shown.stdout
    assert "inspect me" not in shown.stdout and "This is the demo model" not in shown.stdout
    answer = cli(stack, "inspect", digest, "--show-answer", redis_url=redis_url)
    assert "This is the demo model. You said: inspect me" in answer.stdout
    purged = cli(stack, "purge", "--tenant", "acme", redis_url=redis_url)
    assert purged.returncode == 0, purged.stderr
    assert "removed 6 cache entries" in purged.stdout
    assert cli(stack, "inspect", digest, redis_url=redis_url).returncode == 1
    assert cli(stack, "purge", redis_url=redis_url).returncode == 1  # needs --tenant or --all


def test_metrics_agree_with_stats(stack: Stack) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    body = report(stack)
    text = httpx.get(f"{stack.base_url[:-3]}/metrics", headers=ADMIN).text
    hits = sum(
        s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name == "llmcp_requests_total" and s.labels["tenant"] == "acme" and s.labels["cache"] == "hit"
    )
    assert hits == body["windows"]["all"]["tenants"]["acme"]["totals"]["hits"] == 10


@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian chromium is not installed")
def test_stats_page_in_headless_chromium(stack: Stack, tmp_path: Path) -> None:
    body = report(stack)
    url = f"{stack.base_url[:-3]}/stats/ui#key={ADMIN_KEY}"
    dom = subprocess.run(
        [
            "chromium",
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            f"--user-data-dir={tmp_path}",
            "--virtual-time-budget=10000",
            "--dump-dom",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=90,
    ).stdout
    assert 'data-ready="1"' in dom, dom[-2000:]
    for window in ("1h", "24h", "7d", "all"):
        totals = body["windows"][window]["totals"]
        shown = re.search(rf'data-metric="requests" data-window="{window}">([0-9,]+)<', dom)
        assert shown and int(shown.group(1).replace(",", "")) == totals["requests"]
        ratio = re.search(rf'data-metric="hit_ratio" data-window="{window}">([0-9.]+)%<', dom)
        assert ratio and float(ratio.group(1)) == pytest.approx(totals["hit_ratio"] * 100, abs=0.05)
    assert "<polyline" in dom or "<circle" in dom  # the hit-ratio chart drew points
    assert TENANT_KEYS["acme"] not in dom and ADMIN_KEY not in dom
