"""Rate limits seen from the openai SDK, with two proxy worker processes sharing Redis."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
import redis

from tests.conftest import TENANT_KEYS
from tests.e2e.stack import Stack, start_stack, stop_stack

pytestmark = pytest.mark.e2e

TENANTS = [
    {"name": "acme", "api_keys": [TENANT_KEYS["acme"]], "limits": {"requests_per_minute": 3}},
    # Refills one request per second: the SDK's own retry gets through.
    {
        "name": "globex",
        "api_keys": [TENANT_KEYS["globex"]],
        "limits": {"requests_per_minute": 60, "burst_requests": 1},
    },
    {
        "name": "burst",
        "api_keys": ["sk-burst-test-key"],
        "limits": {"requests_per_minute": 1, "burst_requests": 10},
    },
]


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, redis_url: str, redis_sync: redis.Redis
) -> Iterator[Stack]:
    # No litellm model: the limits must hold exactly, and nothing is importing litellm
    # while the retry is timed.
    stack = start_stack(
        tmp_path_factory.mktemp("e2e-rl"), redis_url, workers=2, litellm=False, tenants=TENANTS
    )
    yield stack
    stop_stack(stack, redis_sync)


# The default route (direct): what these tests time is the limiter and the SDK's retry,
# not the first request of a worker waiting for litellm's background import.
MODEL = "fake-direct"


def ask(client: openai.OpenAI) -> openai.types.chat.ChatCompletion:
    return client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": f"limited {uuid.uuid4()}"}]
    )


def test_three_answers_then_rate_limit_error(stack: Stack) -> None:
    client = stack.client("acme")
    for _ in range(3):
        assert ask(client).choices[0].message.content
    with pytest.raises(openai.RateLimitError) as info:
        ask(client)
    response = info.value.response
    assert response.status_code == 429
    assert int(response.headers["retry-after-ms"]) > 0
    assert int(response.headers["retry-after"]) >= 1
    for kind in ("limit", "remaining", "reset"):
        assert f"x-ratelimit-{kind}-requests" in response.headers
    assert info.value.body["code"] == "rate_limit_exceeded"  # type: ignore[index]


def test_sdk_retries_honour_retry_after_ms(stack: Stack) -> None:
    client = stack.client("globex", max_retries=2)
    ask(client)
    started = time.perf_counter()
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL, messages=[{"role": "user", "content": f"retry {uuid.uuid4()}"}]
    )
    elapsed = time.perf_counter() - started
    assert raw.http_response.status_code == 200
    assert raw.retries_taken >= 1
    assert 0.5 < elapsed < 5


def test_limit_is_exact_across_two_workers(stack: Stack) -> None:
    client = openai.OpenAI(base_url=stack.base_url, api_key="sk-burst-test-key", max_retries=0)
    before = stack.upstream_calls()

    def one(_: int) -> int:
        try:
            ask(client)
            return 200
        except openai.RateLimitError:
            return 429

    with ThreadPoolExecutor(max_workers=16) as pool:
        codes = list(pool.map(one, range(40)))
    assert codes.count(200) == 10
    assert codes.count(429) == 30
    assert stack.upstream_calls() - before == 10
