"""Spend budgets under real concurrency: two proxy worker processes sharing one Redis, the
real fake provider, the official openai SDK as the client.

A budget worth exactly 10 worst-case requests takes exactly 10 of 50 concurrent ones when
every answer costs its worst case; with short answers settlement gives money back, so more
than 10 fit over time. A spent budget is `openai.RateLimitError` (insufficient_quota) that
the SDK does not retry."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import httpx
import openai
import pytest
import redis

from proxy.config import parse_config
from proxy.core.apis import CHAT
from tests.conftest import ADMIN_KEY, TENANT_KEYS
from tests.e2e.browser import stats_page
from tests.e2e.stack import Stack, start_stack, stop_stack

pytestmark = pytest.mark.e2e

PRICE_IN, PRICE_OUT = 0.000001, 0.000002  # USD per token: $1 / $2 per million
MAX_TOKENS = 100
INITECH_KEY = "sk-initech-test-key"
HOOLI_KEY = "sk-hooli-test-key"
PROMPT = "How much does this cost? Please answer briefly."


def body(seed: int) -> dict[str, Any]:
    """Distinct cache keys (seed is keyed), the same prompt: every request's worst case is equal."""
    return {
        "model": "fake-direct",
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": MAX_TOKENS,
        "seed": seed,
    }


def model(upstream_port: int) -> dict[str, Any]:
    return {
        "name": "fake-direct",
        "litellm_model": "openai/fake-model",
        "route": "direct",
        "api_base": f"http://127.0.0.1:{upstream_port}/v1",
        "api_key": "sk-fake-upstream-key",
        "input_cost_per_token": PRICE_IN,
        "output_cost_per_token": PRICE_OUT,
        "cached_input_cost_per_token": PRICE_IN / 2,
    }


def prompt_estimate() -> int:
    config = parse_config({"models": [model(1)], "tenants": [{"name": "t", "api_keys": ["sk-xxxxxxxx"]}]}, {})
    return CHAT.prompt_tokens(body(0), config.model_index["fake-direct"])


def worst_nano() -> int:
    # $1/M = 1,000 nano-dollars per token, $2/M = 2,000
    return prompt_estimate() * 1000 + MAX_TOKENS * 2000


def budget(n_requests: int) -> dict[str, Any]:
    return {"usd_per_day": n_requests * worst_nano() / 1e9, "usd_per_month": 1000}


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, redis_url: str, redis_sync: redis.Redis
) -> Iterator[Stack]:
    work = tmp_path_factory.mktemp("e2e-budget")
    # The stack picks the provider's port; the models are written once it is known.
    stack = start_stack(
        work,
        redis_url,
        workers=2,
        # The budget must hold exactly, and a limiter call that runs past redis.timeout_ms is
        # served open (on_redis_error: open, by design): no litellm import beside the
        # requests, and a deadline that a busy machine's event loop cannot run past.
        litellm=False,
        redis={"timeout_ms": 10_000},
        tenants=[
            {"name": "acme", "api_keys": [TENANT_KEYS["acme"]], "budget": budget(10)},
            {"name": "globex", "api_keys": [TENANT_KEYS["globex"]], "budget": budget(10)},
            {"name": "initech", "api_keys": [INITECH_KEY], "budget": {"usd_per_day": 1}},
            {"name": "hooli", "api_keys": [HOOLI_KEY], "budget": {"usd_per_day": 2, "usd_per_month": 20}},
        ],
        admin={"api_keys": [ADMIN_KEY]},
        stats={"flush_interval_ms": 50},
        models_with_upstream=model,
    )
    yield stack
    stop_stack(stack, redis_sync)


def spent(redis_sync: redis.Redis, stack: Stack, tenant: str) -> int:
    day = datetime.now(UTC).strftime("%Y%m%d")
    return int(redis_sync.hget(f"{stack.prefix}:v1:{{{tenant}}}:budget:t:d:{day}", "spent") or 0)


def settled(redis_sync: redis.Redis, stack: Stack, tenant: str) -> int:
    """The spend once no reservation is outstanding (it stops moving)."""
    last, deadline = -1, time.monotonic() + 10
    while time.monotonic() < deadline:
        value = spent(redis_sync, stack, tenant)
        if value == last:
            return value
        last = value
        time.sleep(0.3)
    raise AssertionError("the spend never settled")


def fire(client: openai.OpenAI, seeds: range) -> tuple[int, list[openai.RateLimitError]]:
    def one(seed: int) -> Any:
        try:
            return client.chat.completions.create(**body(seed))
        except openai.RateLimitError as exc:
            return exc

    with ThreadPoolExecutor(max_workers=len(seeds)) as pool:
        results = list(pool.map(one, seeds))
    refused = [r for r in results if isinstance(r, openai.RateLimitError)]
    return len(results) - len(refused), refused


def test_fifty_concurrent_requests_take_exactly_the_budget(stack: Stack, redis_sync: redis.Redis) -> None:
    # Every answer costs its worst case: the prompt as estimated, all 100 completion tokens.
    stack.upstream_mode(usage={"prompt_tokens": prompt_estimate(), "completion_tokens": MAX_TOKENS})
    try:
        served, refused = fire(stack.client("acme"), range(50))
    finally:
        stack.upstream_mode(usage=None)
    assert (served, len(refused)) == (10, 40)
    assert {r.code for r in refused} == {"insufficient_quota"}
    assert settled(redis_sync, stack, "acme") == 10 * worst_nano()  # each answer cost its worst case


def test_short_answers_refund_so_more_fit_over_time(stack: Stack, redis_sync: redis.Redis) -> None:
    client = stack.client("globex")
    # Every answer is short and costs exactly `real`: settlement refunds the rest.
    stack.upstream_mode(usage={"prompt_tokens": 20, "completion_tokens": 5})
    real = 20 * 1000 + 5 * 2000
    try:
        served, _ = fire(client, range(1000, 1050))
        assert served >= 10  # at least the budget's worth at once; refunds let later ones in
        total = served
        for wave in range(5):  # in waves, each settling before the next: far more than 10 fit
            more, _ = fire(client, range(2000 + 10 * wave, 2010 + 10 * wave))
            total += more
    finally:
        stack.upstream_mode(usage=None)
    assert total > 20
    assert settled(redis_sync, stack, "globex") == total * real  # every answer settled exactly once


def test_the_sdk_sees_insufficient_quota_and_does_not_retry(stack: Stack, redis_sync: redis.Redis) -> None:
    sent: list[httpx.Request] = []
    with httpx.Client(event_hooks={"request": [sent.append]}) as http:
        check_no_retry(stack, redis_sync, sent, http)


def check_no_retry(
    stack: Stack, redis_sync: redis.Redis, sent: list[httpx.Request], http: httpx.Client
) -> None:
    client = openai.OpenAI(base_url=stack.base_url, api_key=INITECH_KEY, max_retries=3, http_client=http)
    raw = client.chat.completions.with_raw_response.create(**body(5000))
    assert raw.http_response.status_code == 200
    assert raw.headers["x-budget-limit-usd"] == "1.000000"
    remaining = float(raw.headers["x-budget-remaining-usd"])
    assert 0.99 < remaining < 1
    assert raw.headers["x-budget-reset"].endswith("s")
    hit = client.chat.completions.with_raw_response.create(**body(5000))
    assert hit.headers["x-cache"] == "HIT" and "x-budget-remaining-usd" in hit.headers
    day = datetime.now(UTC).strftime("%Y%m%d")
    redis_sync.hset(f"{stack.prefix}:v1:{{initech}}:budget:t:d:{day}", "spent", 10**9)
    sent.clear()
    with pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.create(**body(5001))
    assert len(sent) == 1  # x-should-retry: false: no retry despite max_retries=3
    assert info.value.code == "insufficient_quota"
    assert info.value.response.headers["x-should-retry"] == "false"
    assert "daily budget of tenant initech" in info.value.message


@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian chromium is not installed")
def test_the_page_shows_spend_budgets_and_both_savings(stack: Stack, redis_sync: redis.Redis) -> None:
    client = openai.OpenAI(base_url=stack.base_url, api_key=HOOLI_KEY, max_retries=0)
    # The provider serves 800 of the 1,000 prompt tokens from its own prompt cache.
    stack.upstream_mode(usage={"prompt_tokens": 1000, "completion_tokens": 10, "cached_tokens": 800})
    try:
        client.chat.completions.create(**body(7000))
    finally:
        stack.upstream_mode(usage=None)
    client.chat.completions.create(**body(7000))  # a hit: saved by this cache
    settled(redis_sync, stack, "hooli")
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    for _ in range(100):  # the server flushes its counters every 50 ms
        report = httpx.get(f"{stack.base_url[:-3]}/stats?tenant=hooli", headers=admin).json()
        if report["windows"]["1h"]["totals"]["hits"] == 1:
            break
        time.sleep(0.05)
    week = report["windows"]["7d"]["totals"]
    # 800 cached tokens at $0.5/M instead of $1/M; 200 + 800 x 0.5 prompt and 10 x $2/M completion
    assert week["provider_cache_saved_usd"] == pytest.approx(0.0004)
    assert week["spend_usd"] == pytest.approx(0.00062)
    assert week["cost_saved_usd"] > 0
    assert report["budgets"]["hooli"]["day"]["spent_usd"] == pytest.approx(0.00062)
    with stats_page(stack, width=1400, height=1000) as page:
        cards = page.text_content("#cards") or ""
        assert "saved by this cache (7d)" in cards
        assert "saved by the provider's prompt cache (7d)" in cards
        row = "#breakdown tr[data-tenant='hooli']"
        assert page.text_content(f"{row} td[data-metric='provider_cache_saved_usd']") == "$0.0004"
        assert page.text_content(f"{row} td[data-metric='spend_usd']") == "$0.0006"
        assert page.is_visible("#budgets")
        budget = "#budget-table tr[data-tenant='hooli']"
        assert page.locator(budget).count() == 2  # day and month
        spent = page.text_content(f"{budget} td[data-metric='budget_spent'][data-window='day']")
        assert spent == "$0.000620"
        assert page.text_content(f"{budget} td[data-metric='budget_limit'][data-window='day']") == "$2.00"
