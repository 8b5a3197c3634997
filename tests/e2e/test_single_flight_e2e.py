"""Single flight across two proxy processes, through the openai SDK."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis

from tests.e2e.stack import Stack, start_stack, stop_stack

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, redis_url: str, redis_sync: redis.Redis
) -> Iterator[Stack]:
    stack = start_stack(tmp_path_factory.mktemp("e2e-flight"), redis_url, workers=2)
    yield stack
    stack.upstream_mode(latency_ms=0, chunk_delay_ms=0)
    stop_stack(stack, redis_sync)


def test_fifty_identical_requests_from_two_processes_make_one_upstream_call(stack: Stack) -> None:
    stack.upstream_mode(latency_ms=500, chunk_delay_ms=0)
    client = stack.client("acme")
    messages = [{"role": "user", "content": f"herd {uuid.uuid4()}"}]
    before = stack.upstream_calls()

    def one(_: int) -> tuple[str, str]:
        raw = client.chat.completions.with_raw_response.create(model="fake", messages=messages)
        return raw.headers["x-cache"], raw.parse().choices[0].message.content or ""

    with ThreadPoolExecutor(max_workers=50) as pool:
        results = list(pool.map(one, range(50)))
    assert stack.upstream_calls() - before == 1
    assert len({text for _, text in results}) == 1
    assert [status for status, _ in results].count("MISS") == 1


def test_streaming_followers_receive_chunks_live(stack: Stack) -> None:
    stack.upstream_mode(latency_ms=200, chunk_delay_ms=60)
    client = stack.client("acme")
    messages = [{"role": "user", "content": f"live for everyone {uuid.uuid4()} one two three four five six"}]
    before = stack.upstream_calls()

    def one(_: int) -> tuple[float, float, str]:
        started = time.perf_counter()
        first = 0.0
        text = ""
        stream = client.chat.completions.create(model="fake", messages=messages, stream=True)
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                first = first or time.perf_counter() - started
                text += chunk.choices[0].delta.content
        return first, time.perf_counter() - started, text

    with ThreadPoolExecutor(max_workers=6) as pool:
        results = list(pool.map(one, range(6)))
    assert stack.upstream_calls() - before == 1
    assert len({text for _, _, text in results}) == 1
    for first, total, _ in results:
        # ~17 chunks 60 ms apart: the first arrives long before the last, for followers too.
        assert first < total - 0.5, (first, total)
