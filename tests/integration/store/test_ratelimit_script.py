"""The Lua token bucket against a pure Python model, and under real concurrency."""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass, field
from typing import Any

import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.store.connection import script as lua_script
from tests.conftest import own_keys, sync_client
from tests.servers import in_processes


@dataclass
class ModelBucket:
    """The reference: a continuous-refill token bucket, the same double arithmetic."""

    per_minute: int
    capacity: int
    level: float | None = None
    ts: int = 0

    @property
    def rate(self) -> float:
        return self.per_minute / 60000000

    def level_at(self, now: int) -> float:
        if self.level is None:
            return float(self.capacity)
        return min(self.capacity, self.level + (now - self.ts) * self.rate)


@dataclass
class Model:
    buckets: list[ModelBucket] = field(default_factory=list)

    def acquire(self, costs: list[int], now: int, max_wait_ms: int) -> tuple[int, int, list[int]]:
        levels = [b.level_at(now) for b in self.buckets]
        status, wait_ms = 1, 0
        for b, cost, level in zip(self.buckets, costs, levels, strict=True):
            if cost > b.capacity:
                status = -1
            elif status != -1 and cost > level:
                wait_ms = max(wait_ms, math.ceil((cost - level) / b.rate / 1000))
        if status == 1 and wait_ms > 0:
            status = 2 if wait_ms <= max_wait_ms else 0
        if status >= 1:
            for b, cost, level in zip(self.buckets, costs, levels, strict=True):
                b.level, b.ts = level - cost, now
            levels = [b.level for b in self.buckets]  # type: ignore[misc]
        return status, wait_ms, [math.floor(v) for v in levels]


def acquire_args(buckets: list[ModelBucket], costs: list[int], now: int, max_wait: int) -> list[Any]:
    args: list[Any] = [max_wait, now]
    for b, c in zip(buckets, costs, strict=True):
        args += [b.per_minute, b.capacity, c]
    return args


bucket_params = st.tuples(st.integers(1, 100_000), st.integers(1, 1000))
step = st.tuples(st.integers(0, 5_000_000), st.lists(st.integers(0, 1200), min_size=3, max_size=3))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    params=st.lists(bucket_params, min_size=1, max_size=3),
    steps=st.lists(step, min_size=1, max_size=25),
    max_wait=st.sampled_from([0, 0, 500, 5000]),
)
def test_script_matches_the_reference_model(
    redis_sync: redis.Redis, key_prefix: str, params: list[tuple[int, int]], steps: list[Any], max_wait: int
) -> None:
    script = lua_script(redis_sync, "acquire.lua")
    tag = uuid.uuid4().hex[:8]
    keys = [f"{key_prefix}:v1:{{t{tag}}}:rl:b{i}" for i in range(len(params))]
    model = Model([ModelBucket(rpm, cap) for rpm, cap in params])
    now = 1_700_000_000_000_000
    for dt, raw_costs in steps:
        now += dt
        costs = raw_costs[: len(params)]
        expected = model.acquire(costs, now, max_wait)
        reply = script(keys=keys, args=acquire_args(model.buckets, costs, now, max_wait))
        got = (int(reply[0]), int(reply[1]), [int(v) for v in reply[3::2]])
        assert got == expected


def test_adjust_refunds_and_debits_below_zero(redis_sync: redis.Redis, key_prefix: str) -> None:
    acquire = lua_script(redis_sync, "acquire.lua")
    adjust = lua_script(redis_sync, "adjust.lua")
    key = f"{key_prefix}:v1:{{adj}}:rl:tokens"
    now = 1_000_000_000_000
    assert acquire(keys=[key], args=[0, now, 60, 100, 80])[3] == 20
    assert adjust(keys=[key], args=[now, 60, 100, 50]) == [70]  # refund
    assert adjust(keys=[key], args=[now, 60, 100, 500]) == [100]  # capped at capacity
    assert adjust(keys=[key], args=[now, 60, 100, -150]) == [-50]  # honest debit
    reply = acquire(keys=[key], args=[0, now, 60, 100, 1])
    assert int(reply[0]) == 0 and int(reply[1]) == 51_000  # 51 tokens at 1/s
    assert redis_sync.pttl(key) > 0


def test_all_or_nothing(redis_sync: redis.Redis, key_prefix: str) -> None:
    script = lua_script(redis_sync, "acquire.lua")
    keys = [f"{key_prefix}:v1:{{aon}}:rl:a", f"{key_prefix}:v1:{{aon}}:rl:b"]
    now = 5_000_000
    assert int(script(keys=keys, args=[0, now, 60, 10, 5, 60, 3, 3])[0]) == 1
    denied = script(keys=keys, args=[0, now, 60, 10, 5, 60, 3, 1])
    assert int(denied[0]) == 0 and int(denied[2]) == 2  # bucket b is short
    assert [int(v) for v in denied[3::2]] == [5, 0]  # a was not debited
    too_big = script(keys=keys, args=[0, now, 60, 10, 11, 60, 3, 0])
    assert int(too_big[0]) == -1 and int(too_big[2]) == 1


def _hammer(url: str, key: str, attempts: int, out: Any) -> None:
    client = sync_client(url)
    script = lua_script(client, "acquire.lua")
    allowed = sum(int(script(keys=[key], args=[0, "", 1, 50, 1])[0]) == 1 for _ in range(attempts))
    out.put(allowed)
    client.close()


def test_exactly_capacity_allowed_across_processes(
    redis_url: str, redis_sync: redis.Redis, key_prefix: str
) -> None:
    key = f"{key_prefix}:v1:{{conc}}:rl:requests"
    allowed = sum(in_processes(_hammer, (redis_url, key, 50), 4))
    # 200 attempts from 4 processes, capacity 50, refill 1/min: exactly 50, never more.
    assert allowed == 50
    assert all(redis_sync.ttl(k) > 0 for k in own_keys(redis_sync, key_prefix))


def test_refill_over_real_time_matches_the_rate(redis_sync: redis.Redis, key_prefix: str) -> None:
    """600/min = 10/s from an empty bucket of 10: about 10 more are allowed a second later."""
    import time

    script = lua_script(redis_sync, "acquire.lua")
    key = f"{key_prefix}:v1:{{refill}}:rl:requests"
    taken = sum(int(script(keys=[key], args=[0, "", 600, 10, 1])[0]) == 1 for _ in range(15))
    assert taken == 10
    time.sleep(1.0)
    refilled = sum(int(script(keys=[key], args=[0, "", 600, 10, 1])[0]) == 1 for _ in range(15))
    assert 9 <= refilled <= 10
    time.sleep(0.5)
    assert 4 <= sum(int(script(keys=[key], args=[0, "", 600, 10, 1])[0]) == 1 for _ in range(15)) <= 6
