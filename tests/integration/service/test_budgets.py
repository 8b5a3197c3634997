"""Spend budgets through the app: reserve before the call, settle with the real usage (cached
prompt tokens at their price), refuse like OpenAI's spent quota, and the x-budget-* headers.

The provider is respx in front of gpt-4o-mini, priced from the map litellm ships
(input $0.15, cached input $0.075, output $0.60 per million tokens)."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson
import pytest
import redis

from proxy.core.apis import CHAT as CHAT_API
from proxy.core.budgets import nano
from tests.conftest import (
    TENANT_KEYS,
    UPSTREAM_BASE,
    asgi_post,
    auth,
    build_config,
    eventually,
    openai_completion,
    openai_sse,
    provider_mock,
)
from tests.servers import free_port

pytestmark = pytest.mark.anyio
CHAT = "/v1/chat/completions"
URL = f"{UPSTREAM_BASE}/chat/completions"
MODEL = "gpt-4o-mini"
# gpt-4o-mini in litellm's bundled map, in pico-dollars per token
P_IN, P_CACHED, P_OUT = 150_000, 75_000, 600_000


def tenants(budget: dict[str, Any] | None = None, **acme: Any) -> list[dict[str, Any]]:
    first: dict[str, Any] = {"name": "acme", "api_keys": [TENANT_KEYS["acme"]], **acme}
    if budget is not None:
        first["budget"] = budget
    return [first, {"name": "globex", "api_keys": [TENANT_KEYS["globex"]]}]


def ask(content: str, **extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": content}], **extra}


def worst_case_nano(body: dict[str, Any], default_max_tokens: int = 1024) -> int:
    """What the proxy reserves for `body`: its prompt estimate at the input price plus every
    completion token it may get at the output price."""
    model = build_config("x").model_index[MODEL]
    prompt = CHAT_API.prompt_tokens(body, model)
    completion = CHAT_API.completion_allowance(body, default_max_tokens)
    return -(-(prompt * P_IN + completion * P_OUT) // 1000)


def usage(prompt: int, completion: int, cached: int = 0) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached},
    }


def answer_with(u: dict[str, Any], content: str = "Hello!") -> dict[str, Any]:
    return {**openai_completion(content), "usage": u}


def today() -> str:
    return datetime.now(UTC).strftime("%Y%m%d")


def day_key(prefix: str, tenant: str = "acme", date: str | None = None) -> str:
    return f"{prefix}:v1:{{{tenant}}}:budget:t:d:{date or today()}"


def month_key(prefix: str, tenant: str = "acme") -> str:
    return f"{prefix}:v1:{{{tenant}}}:budget:t:m:{datetime.now(UTC).strftime('%Y%m')}"


def spent(redis_sync: redis.Redis, key: str) -> int:
    return int(redis_sync.hget(key, "spent") or 0)


async def settled_at(redis_sync: redis.Redis, key: str, expected: int) -> None:
    async def check() -> bool:
        return spent(redis_sync, key) == expected

    await eventually(check, timeout=3, what=f"spend of {key} never settled at {expected}")


def runtime(client: httpx.AsyncClient) -> Any:
    return client._transport.app.state.runtime  # type: ignore[attr-defined]


async def test_settles_with_the_real_usage_and_the_cached_price(
    make_client: Any, upstream: Any, redis_sync: redis.Redis, key_prefix: str
) -> None:
    upstream.post(URL).respond(json=answer_with(usage(1000, 100, cached=800)))
    client = await make_client(tenants=tenants({"usd_per_day": 5, "usd_per_month": 50}))
    body = ask("price me")
    response = await client.post(CHAT, json=body, headers=auth())
    assert response.status_code == 200
    # 200 prompt tokens at $0.15/M, 800 cached at $0.075/M, 100 completion at $0.60/M
    real = (200 * P_IN + 800 * P_CACHED + 100 * P_OUT) // 1000
    assert real == 150_000  # nano-dollars: $0.00015
    await settled_at(redis_sync, day_key(key_prefix), real)
    await settled_at(redis_sync, month_key(key_prefix), real)
    # The headers show the tightest budget (the day's) after settling.
    assert response.headers["x-budget-limit-usd"] == "5.000000"
    assert response.headers["x-budget-remaining-usd"] == "4.999850"
    hours, rest = response.headers["x-budget-reset"].split("h")
    assert 0 <= int(hours) < 24 and rest.endswith("s") and "m" in rest
    # Keys live until their window ends, plus a day.
    ttl = redis_sync.pttl(day_key(key_prefix))
    assert 86_400_000 < ttl <= 2 * 86_400_000


async def test_cache_hits_cost_nothing_and_carry_the_headers(
    make_client: Any, upstream: Any, redis_sync: redis.Redis, key_prefix: str
) -> None:
    route = upstream.post(URL).respond(json=answer_with(usage(10, 10)))
    client = await make_client(tenants=tenants({"usd_per_day": 1}))
    miss = await client.post(CHAT, json=ask("hit me"), headers=auth())
    real = (10 * P_IN + 10 * P_OUT) // 1000
    await settled_at(redis_sync, day_key(key_prefix), real)
    hit = await client.post(CHAT, json=ask("hit me"), headers=auth())
    assert (miss.headers["x-cache"], hit.headers["x-cache"]) == ("MISS", "HIT")
    assert hit.headers["x-budget-limit-usd"] == "1.000000"
    assert hit.headers["x-budget-remaining-usd"] == "0.999992"
    assert "x-budget-reset" in hit.headers
    assert spent(redis_sync, day_key(key_prefix)) == real
    assert route.call_count == 1


async def test_a_hit_in_a_fresh_process_reads_the_spend_once(
    make_client: Any, upstream: Any, redis_sync: redis.Redis, key_prefix: str
) -> None:
    upstream.post(URL).respond(json=answer_with(usage(10, 10)))
    first = await make_client(tenants=tenants({"usd_per_day": 1}))
    await first.post(CHAT, json=ask("seen elsewhere"), headers=auth())
    await settled_at(redis_sync, day_key(key_prefix), (10 * P_IN + 10 * P_OUT) // 1000)
    second = await make_client(tenants=tenants({"usd_per_day": 1}))  # another replica
    hit = await second.post(CHAT, json=ask("seen elsewhere"), headers=auth())
    assert hit.headers["x-cache"] == "HIT"
    assert hit.headers["x-budget-remaining-usd"] == "0.999992"


async def test_a_spent_budget_is_openais_insufficient_quota(
    make_client: Any, upstream: Any, redis_sync: redis.Redis, key_prefix: str
) -> None:
    body = ask("first", max_tokens=100)
    worst = worst_case_nano(body)  # no provider route: a call upstream would fail the test
    # Room for one worst case and a half: the second request cannot be reserved.
    limit = worst * 3 // 2
    client = await make_client(tenants=tenants({"usd_per_day": limit / 1e9, "usd_per_month": 100}))
    redis_sync.hset(day_key(key_prefix), "spent", worst)  # spent earlier today
    refused = await client.post(CHAT, json=ask("second", max_tokens=100), headers=auth())
    assert refused.status_code == 429
    error = refused.json()["error"]
    assert error["type"] == "insufficient_quota"
    assert error["code"] == "insufficient_quota"
    assert error["message"].startswith("You exceeded the daily budget of tenant acme: $")
    assert "The budget resets in " in error["message"]
    assert refused.headers["x-should-retry"] == "false"
    assert refused.headers["x-budget-limit-usd"] == f"{limit / 1e9:.6f}"
    assert spent(redis_sync, day_key(key_prefix)) == worst  # nothing reserved
    assert spent(redis_sync, month_key(key_prefix)) == 0  # all or nothing


async def test_a_request_larger_than_the_whole_budget(make_client: Any, upstream: Any) -> None:
    client = await make_client(tenants=tenants({"usd_per_month": 0.0001}))
    refused = await client.post(CHAT, json=ask("huge", max_tokens=100_000), headers=auth())
    assert refused.status_code == 429
    error = refused.json()["error"]
    assert error["code"] == "insufficient_quota"
    assert "more than the whole monthly budget of tenant acme ($0.000100)" in error["message"]
    assert refused.headers["x-should-retry"] == "false"


async def test_an_upstream_error_refunds_the_whole_reservation(
    make_client: Any, upstream: Any, redis_sync: redis.Redis, key_prefix: str
) -> None:
    body = ask("fail", max_tokens=100)
    during: list[int] = []

    def fail(request: httpx.Request) -> httpx.Response:
        during.append(spent(redis_sync, day_key(key_prefix)))  # reserved while the call runs
        return httpx.Response(500, json={"error": {"message": "boom", "type": "server_error"}})

    upstream.post(URL).mock(side_effect=fail)
    client = await make_client(tenants=tenants({"usd_per_day": 1}))
    response = await client.post(CHAT, json=body, headers=auth())
    assert response.status_code == 502
    assert during == [worst_case_nano(body)]
    assert response.headers["x-budget-limit-usd"] == "1.000000"  # error answers carry them too
    await settled_at(redis_sync, day_key(key_prefix), 0)


async def test_a_timeout_keeps_the_reservation(
    make_client: Any, upstream: Any, redis_sync: redis.Redis, key_prefix: str
) -> None:
    """The provider may have generated (and billed) the whole answer: charge the worst case."""
    upstream.post(URL).mock(side_effect=httpx.ReadTimeout("slow"))
    client = await make_client(tenants=tenants({"usd_per_day": 1}))
    body = ask("slow", max_tokens=100)
    response = await client.post(CHAT, json=body, headers=auth())
    assert response.status_code == 504
    await runtime(client).limiter.drain()
    assert spent(redis_sync, day_key(key_prefix)) == worst_case_nano(body)


async def test_an_answer_without_usage_is_charged_its_estimate(
    make_client: Any, upstream: Any, redis_sync: redis.Redis, key_prefix: str
) -> None:
    answer = openai_completion("word " * 200)
    del answer["usage"]
    upstream.post(URL).respond(json=answer)
    client = await make_client(tenants=tenants({"usd_per_day": 1}))
    body = ask("no usage", max_tokens=1000)
    assert (await client.post(CHAT, json=body, headers=auth())).status_code == 200
    await runtime(client).limiter.drain()
    charged = spent(redis_sync, day_key(key_prefix))
    assert (10 + 200) * P_OUT // 1000 < charged < worst_case_nano(body)  # the prompt and ~200 tokens


async def test_without_max_tokens_a_budget_reserves_the_models_longest_answer(
    make_client: Any, upstream: Any, redis_sync: redis.Redis, key_prefix: str
) -> None:
    during: list[int] = []

    def answer(request: httpx.Request) -> httpx.Response:
        during.append(spent(redis_sync, day_key(key_prefix)))
        return httpx.Response(200, json=answer_with(usage(10, 10)))

    upstream.post(URL).mock(side_effect=answer)
    client = await make_client(tenants=tenants({"usd_per_day": 1}))
    body = ask("uncapped")
    assert (await client.post(CHAT, json=body, headers=auth())).status_code == 200
    # gpt-4o-mini can answer 16,384 tokens (litellm's map): not rate_limit.default_max_tokens
    assert during == [worst_case_nano(body, default_max_tokens=16_384)]


async def test_a_bucket_429_carries_the_budget_headers(make_client: Any, upstream: Any) -> None:
    upstream.post(URL).respond(json=answer_with(usage(10, 10)))
    client = await make_client(tenants=tenants({"usd_per_day": 1}, limits={"requests_per_minute": 1}))
    assert (await client.post(CHAT, json=ask("one"), headers=auth())).status_code == 200
    limited = await client.post(CHAT, json=ask("two"), headers=auth())
    assert limited.status_code == 429 and limited.json()["error"]["code"] == "rate_limit_exceeded"
    assert limited.headers["x-budget-limit-usd"] == "1.000000"
    assert "x-budget-remaining-usd" in limited.headers


async def test_a_broken_stream_settles_what_was_sent(
    make_client: Any, upstream: Any, redis_sync: redis.Redis, key_prefix: str
) -> None:
    upstream.post(URL).respond(
        content=openai_sse(["a"] * 20, finish=False), headers={"content-type": "text/event-stream"}
    )
    client = await make_client(tenants=tenants({"usd_per_day": 1}))
    body = ask("break", stream=True)
    response = await client.post(CHAT, json=body, headers=auth())
    assert response.status_code == 200
    worst = worst_case_nano(body)

    async def partial() -> bool:
        value = spent(redis_sync, day_key(key_prefix))
        return 0 < value < worst // 10  # the prompt estimate and 20 tokens, not 1,024

    await eventually(partial, timeout=3, what="a broken stream was not settled")


async def test_a_client_that_hangs_up_leaks_no_reservation(
    make_client: Any, redis_sync: redis.Redis, key_prefix: str
) -> None:
    async def slow_stream(request: httpx.Request) -> httpx.Response:
        async def body() -> Any:
            yield openai_sse(["x"], finish=False)
            await asyncio.Event().wait()  # the provider sends nothing more

        return httpx.Response(200, content=body(), headers={"content-type": "text/event-stream"})

    # (The client below never goes through httpx: respx's pass-through route for the app
    # goes unused, so routes are not held to being called.)
    upstream = provider_mock(assert_all_called=False)
    upstream.post(URL).mock(side_effect=slow_stream)
    client = await make_client(tenants=tenants({"usd_per_day": 1}))
    body = ask("hang up", stream=True)
    # Driven as raw ASGI: httpx's ASGI transport hands the client nothing before the
    # response ends, so a client reading it could only hang up once the stream was over.
    hung_up = asyncio.Event()
    requested = False

    async def receive() -> dict[str, Any]:
        nonlocal requested
        if not requested:
            requested = True
            return {"type": "http.request", "body": orjson.dumps(body), "more_body": False}
        await hung_up.wait()
        return {"type": "http.disconnect"}

    statuses: list[int] = []

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])
        elif message.get("body"):
            hung_up.set()  # the client goes away after the first chunk

    with upstream:
        await client._transport.app(asgi_post(CHAT, auth()), receive, send)  # type: ignore[attr-defined]
    assert statuses == [200] and hung_up.is_set()  # the provider answered, the client left
    worst = worst_case_nano(body)

    async def released() -> bool:
        return 0 < spent(redis_sync, day_key(key_prefix)) < worst // 10

    await eventually(released, timeout=5, what="the hung-up stream kept its reservation")


async def test_end_user_budgets_isolate_the_users_of_a_tenant(
    make_client: Any, upstream: Any, redis_sync: redis.Redis, key_prefix: str
) -> None:
    upstream.post(URL).respond(json=answer_with(usage(10, 100)))
    body = ask("u", max_tokens=100)
    per_user = worst_case_nano(body) * 3 // 2 / 1e9
    client = await make_client(tenants=tenants({"usd_per_day": 10, "per_user": {"usd_per_day": per_user}}))
    ok = await client.post(CHAT, json=ask("u1", max_tokens=100), headers={**auth(), "X-End-User": "alice"})
    assert ok.status_code == 200
    assert ok.headers["x-budget-limit-usd"] == f"{per_user:.6f}"  # the tightest budget
    # Alice's spend (reserved or settled: her answer used all 100 tokens) leaves less than a
    # worst case; Bob's budget is untouched.
    again = await client.post(CHAT, json=ask("u2", max_tokens=100, user="alice"), headers=auth())
    assert again.status_code == 429
    assert "daily budget of end user of tenant acme" in again.json()["error"]["message"]
    bob = await client.post(CHAT, json=ask("u4", max_tokens=100, user="bob"), headers=auth())
    assert bob.status_code == 200
    assert spent(redis_sync, day_key(key_prefix)) > 0  # the tenant's own budget counts both


async def test_the_day_rolls_over_at_utc_midnight(
    make_client: Any, upstream: Any, redis_sync: redis.Redis, key_prefix: str
) -> None:
    upstream.post(URL).respond(json=answer_with(usage(10, 100)))
    body = ask("night", max_tokens=100)
    worst = worst_case_nano(body)
    client = await make_client(tenants=tenants({"usd_per_day": worst * 3 // 2 / 1e9, "usd_per_month": 100}))
    before = datetime(2031, 1, 31, 23, 59, 59, tzinfo=UTC).timestamp()
    runtime(client).limiter.clock = lambda: before
    redis_sync.hset(day_key(key_prefix, date="20310131"), "spent", worst)
    refused = await client.post(CHAT, json=ask("late", max_tokens=100), headers=auth())
    assert refused.status_code == 429
    assert "resets in 1s" in refused.json()["error"]["message"]
    runtime(client).limiter.clock = lambda: before + 2  # 2031-02-01 00:00:01: a new day and month
    served = await client.post(CHAT, json=ask("early", max_tokens=100), headers=auth())
    assert served.status_code == 200
    assert served.headers["x-budget-reset"] == "23h59m59s"
    feb = f"{key_prefix}:v1:{{acme}}:budget:t:m:203102"
    await settled_at(redis_sync, day_key(key_prefix, date="20310201"), (10 * P_IN + 100 * P_OUT) // 1000)
    assert spent(redis_sync, feb) == spent(redis_sync, day_key(key_prefix, date="20310201"))
    assert spent(redis_sync, day_key(key_prefix, date="20310131")) == worst


async def test_limit_cache_hits_refuses_hits_once_the_budget_is_spent(
    make_client: Any, upstream: Any, redis_sync: redis.Redis, key_prefix: str
) -> None:
    upstream.post(URL).respond(json=answer_with(usage(10, 10)))
    for limit_hits, status in ((False, 200), (True, 429)):
        client = await make_client(tenants=tenants({"usd_per_day": 1}, limit_cache_hits=limit_hits))
        await client.post(CHAT, json=ask("cached"), headers=auth())
        await runtime(client).limiter.drain()  # settled: this process saw the spend
        redis_sync.hset(day_key(key_prefix), "spent", nano(1))  # spent to the cent, elsewhere
        hit = await client.post(CHAT, json=ask("cached"), headers=auth())
        assert hit.status_code == status
        if status == 200:
            assert hit.headers["x-cache"] == "HIT"
            # The spend as this process last saw it (another replica's is seen within seconds).
            assert hit.headers["x-budget-remaining-usd"] == "0.999992"
        else:
            assert hit.json()["error"]["code"] == "insufficient_quota"
        redis_sync.delete(day_key(key_prefix))


@pytest.mark.parametrize(("policy", "status"), [("open", 200), ("closed", 503)])
async def test_budgets_follow_on_redis_error(make_client: Any, policy: str, status: int) -> None:
    client = await make_client(
        url=f"redis://127.0.0.1:{free_port()}/0",
        tenants=tenants({"usd_per_day": 1}),
        rate_limit={"on_redis_error": policy},
        models=[{"name": "demo", "litellm_model": "demo/echo", "input_cost_per_token": 0.000001}],
    )
    response = await client.post(
        CHAT, json={"model": "demo", "messages": [{"role": "user", "content": "down"}]}, headers=auth()
    )
    assert response.status_code == status


async def test_a_shutdown_with_redis_unreachable_gives_up_the_settlements_at_once(
    make_client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A budget settlement that cannot reach Redis retries for about 16 s. At shutdown, with
    Redis unreachable, none can land: the runtime gives them up instead of waiting, even with
    an hour to drain, so the settlement's own retries have not run out (it has not logged
    giving up) when the shutdown is done."""
    client = await make_client(
        url=f"redis://127.0.0.1:{free_port()}/0",
        tenants=tenants({"usd_per_day": 1}),
        rate_limit={"on_redis_error": "closed"},
        models=[{"name": "demo", "litellm_model": "demo/echo", "input_cost_per_token": 0.000001}],
    )
    response = await client.post(
        CHAT, json={"model": "demo", "messages": [{"role": "user", "content": "down"}]}, headers=auth()
    )
    assert response.status_code == 503
    with caplog.at_level(logging.WARNING):
        await runtime(client).close(drain_s=3600)
    messages = [r.getMessage() for r in caplog.records]
    assert "shutting down with rate-limit settlements unsent: Redis is unreachable" in messages
    assert not [m for m in messages if "could not settle a budget reservation" in m]


async def test_a_shutdown_waits_for_settlements_while_redis_answers(
    make_client: Any, redis_sync: redis.Redis, key_prefix: str
) -> None:
    """The settlement's first call is refused, its retry lands: the shutdown waits for it."""
    from proxy.store.ratelimit import RateLimiter

    client = await make_client(tenants=tenants({"usd_per_day": 1}))
    rt = runtime(client)
    rt.limiter = RateLimiter(FlakyGate(rt.gate, refuse={2}), rt.config)  # type: ignore[arg-type]
    budgets = rt.limiter.plan_budgets(rt.config.tenant_index["acme"], None)
    reservation = await rt.limiter.acquire((), 0, budgets=budgets, amount=5000)
    rt.limiter.settle(reservation, 0, 1200)
    await rt.close()
    assert spent(redis_sync, day_key(key_prefix)) == 1200


async def test_a_model_without_a_price_is_refused_to_a_budgeted_tenant(
    make_client: Any, upstream: Any
) -> None:
    upstream.post(URL).respond(json=answer_with(usage(1, 1)))
    models = [
        {
            "name": "mystery",
            "litellm_model": "openai/a-model-no-price-map-lists",
            "api_base": UPSTREAM_BASE,
            "api_key": "sk-upstream-secret",
        }
    ]
    client = await make_client(tenants=tenants({"usd_per_day": 1}), models=models)
    body = {"model": "mystery", "messages": [{"role": "user", "content": "hi"}]}
    refused = await client.post(CHAT, json=body, headers=auth())
    assert refused.status_code == 400
    assert refused.json()["error"]["code"] == "model_has_no_price"
    assert refused.json()["error"]["param"] == "model"
    served = await client.post(CHAT, json=body, headers=auth("globex"))  # no budget: no price needed
    assert served.status_code == 200


async def test_crossing_the_alert_logs_once_per_window(
    make_client: Any,
    upstream: Any,
    redis_sync: redis.Redis,
    key_prefix: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    upstream.post(URL).respond(json=answer_with(usage(10, 10)))
    client = await make_client(tenants=tenants({"usd_per_day": 1, "alert_at": 0.5}))
    # The alert watches settled spend (each request here settles at $0.000008)
    redis_sync.hset(day_key(key_prefix), mapping={"spent": nano(0.499995), "settled": nano(0.499995)})
    with caplog.at_level(logging.WARNING, logger="llmcp.budget"):
        for i in range(3):
            assert (await client.post(CHAT, json=ask(f"alert {i}"), headers=auth())).status_code == 200
            await runtime(client).limiter.drain()
    alerts = [r for r in caplog.records if r.name == "llmcp.budget"]
    assert len(alerts) == 1
    assert "budget alert: tenant acme" in alerts[0].getMessage()
    assert "daily budget of $1.000000" in alerts[0].getMessage()
    await runtime(client).stats.flush()
    events = await runtime(client).report.recent_events(50)
    assert [e["tenant"] for e in events if e["event"] == "budget_alert"] == ["acme"]


async def test_provider_prompt_cache_key_is_set_and_never_keyed(make_client: Any, upstream: Any) -> None:
    route = upstream.post(URL).respond(json=answer_with(usage(10, 10)))
    client = await make_client(
        cache={"provider_prompt_cache_key": "end_user", "provider_prompt_cache_salt": "s"}
    )
    a = await client.post(CHAT, json=ask("pk", user="alice"), headers=auth())
    sent_a = route.calls.last.request
    b = await client.post(CHAT, json=ask("pk2", user="bob"), headers=auth())
    sent_b = route.calls.last.request
    own = await client.post(CHAT, json=ask("pk3", prompt_cache_key="mine"), headers=auth())
    sent_own = route.calls.last.request
    import orjson

    key_a = orjson.loads(sent_a.content)["prompt_cache_key"]
    key_b = orjson.loads(sent_b.content)["prompt_cache_key"]
    assert key_a.startswith("llmcp-") and key_b.startswith("llmcp-") and key_a != key_b
    assert "alice" not in key_a and "acme" not in key_a
    assert orjson.loads(sent_own.content)["prompt_cache_key"] == "mine"
    assert all(r.status_code == 200 for r in (a, b, own))
    # Never part of the cache key: the same question with another key is a hit.
    again = await client.post(CHAT, json=ask("pk", user="alice", prompt_cache_key="other"), headers=auth())
    assert again.headers["x-cache"] == "HIT"
    assert again.headers["x-cache-key"] == a.headers["x-cache-key"]


async def test_yaml_off_reads_as_off(make_client: Any) -> None:
    import yaml

    from proxy.config import parse_config

    raw = yaml.safe_load("cache: {provider_prompt_cache_key: off}")
    config = parse_config(
        {**raw, "models": [{"name": "d", "litellm_model": "demo/echo"}], "tenants": tenants()}, {}
    )
    assert config.cache.provider_prompt_cache_key == "off"


async def test_stats_show_both_savings_spend_and_the_budgets(
    make_client: Any, upstream: Any, redis_sync: redis.Redis, key_prefix: str
) -> None:
    upstream.post(URL).respond(json=answer_with(usage(1000, 100, cached=800)))
    client = await make_client(tenants=tenants({"usd_per_day": 5, "usd_per_month": 50}))
    for _ in range(2):  # a miss (the provider served 800 prompt tokens from its cache), a hit
        await client.post(CHAT, json=ask("stats"), headers=auth())
    await client.post(CHAT, json=ask("refused", max_tokens=10_000_000), headers=auth())
    await runtime(client).limiter.drain()
    report = (await client.get("/stats", headers=auth())).json()
    acme = report["windows"]["1h"]["tenants"]["acme"]["totals"]
    assert acme["provider_cached_tokens"] == 800
    assert acme["provider_cache_saved_usd"] == pytest.approx(800 * (P_IN - P_CACHED) / 1e12)
    assert acme["spend_usd"] == pytest.approx(150_000 / 1e9)
    assert acme["cost_saved_usd"] == pytest.approx((1000 * P_IN + 100 * P_OUT) / 1e12)  # the hit
    assert acme["budget_refused"] == 1
    day = report["budgets"]["acme"]["day"]
    assert (day["limit_usd"], day["spent_usd"], day["remaining_usd"]) == (5.0, 0.00015, 4.99985)
    assert report["budgets"]["acme"]["month"]["limit_usd"] == 50.0
    metrics = (await client.get("/metrics", headers=auth("admin"))).text
    assert 'llmcp_provider_cached_tokens_total{model="gpt-4o-mini",tenant="acme"} 800.0' in metrics
    assert 'llmcp_rate_limited_total{kind="budget",tenant="acme"} 1.0' in metrics


class FlakyGate:
    """A real RedisGate whose n-th call fails: before it runs (`refuse`) or after it ran,
    its reply lost (`lose`), as a timeout after EVALSHA reached Redis would."""

    def __init__(self, gate: Any, refuse: set[int] = frozenset(), lose: set[int] = frozenset()) -> None:
        self.client, self._gate, self.refuse, self.lose, self.calls = gate.client, gate, refuse, lose, 0

    async def run(self, fn: Any) -> Any:
        from proxy.errors import StoreUnavailable

        self.calls += 1
        if self.calls in self.refuse:
            raise StoreUnavailable("connection refused")
        result = await self._gate.run(fn)
        if self.calls in self.lose:
            raise StoreUnavailable("reply lost")
        return result

    async def script(self, lua: Any, keys: list[str], args: list[Any]) -> Any:
        return await self.run(lambda r: lua(keys=keys, args=args, client=r))


async def test_a_reservation_whose_reply_was_lost_is_released(
    make_client: Any, redis_sync: redis.Redis, key_prefix: str
) -> None:
    from proxy.store.ratelimit import RateLimiter

    client = await make_client(tenants=tenants({"usd_per_day": 1}))
    rt = runtime(client)
    limiter = RateLimiter(FlakyGate(rt.gate, lose={1}), rt.config)  # type: ignore[arg-type]
    budgets = limiter.plan_budgets(rt.config.tenant_index["acme"], None)
    assert await limiter.acquire((), 0, budgets=budgets, amount=5000) is None  # served open
    await limiter.drain()
    assert spent(redis_sync, day_key(key_prefix)) == 0  # the script ran; its release did too


async def test_a_failed_settlement_is_retried_and_counted_once(
    make_client: Any, redis_sync: redis.Redis, key_prefix: str
) -> None:
    from proxy.store.ratelimit import RateLimiter

    client = await make_client(tenants=tenants({"usd_per_day": 1}))
    rt = runtime(client)
    # Call 2 (the settlement) is refused; call 3 (its retry) runs, then loses its reply;
    # call 4 (another retry) finds the reservation settled and changes nothing.
    limiter = RateLimiter(FlakyGate(rt.gate, refuse={2}, lose={3}), rt.config)  # type: ignore[arg-type]
    budgets = limiter.plan_budgets(rt.config.tenant_index["acme"], None)
    reservation = await limiter.acquire((), 0, budgets=budgets, amount=5000)
    assert spent(redis_sync, day_key(key_prefix)) == 5000
    limiter.settle(reservation, 0, 1200)
    await limiter.drain()
    assert spent(redis_sync, day_key(key_prefix)) == 1200
    assert int(redis_sync.hget(day_key(key_prefix), "settled") or 0) == 1200
