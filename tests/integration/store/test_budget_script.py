"""Spend budgets in the token buckets' Lua scripts: all or nothing with the buckets, the
denial codes, settlement, the once-per-window alert, TTLs, and real concurrency."""

from __future__ import annotations

import multiprocessing
from typing import Any

import redis

from proxy.store.connection import script as lua_script
from tests.conftest import own_keys, sync_client

NOW = 5_000_000
EXPIRE_AT_MS = 4_102_444_800_000  # 2100-01-01


def test_budget_and_buckets_all_or_nothing(redis_sync: redis.Redis, key_prefix: str) -> None:
    acquire = lua_script(redis_sync, "acquire.lua")
    bucket, day, month = (f"{key_prefix}:v1:{{aon}}:{k}" for k in ("rl:t:requests", "budget:d", "budget:m"))
    keys = [bucket, day, month]

    def ask(amount: int, bucket_cost: int = 1) -> list[int]:
        args = [0, NOW, 60, 10, bucket_cost, 1000, amount, EXPIRE_AT_MS, 0, 5000, amount, EXPIRE_AT_MS, 0]
        return [int(v) for v in acquire(keys=keys, args=args)]

    allowed = ask(600)
    assert allowed[:3] == [1, 0, 0]
    assert allowed[3] == 9  # the bucket's level
    assert allowed[5:] == [600, 0, 600, 0]  # each budget's spend, no alert
    denied = ask(600)  # 600 + 600 > 1000: the day's budget refuses
    assert denied[:3] == [-2, 0, 2]  # decided by key 2 (the day's budget)
    assert denied[3] == 9  # the bucket was not debited
    assert denied[5:] == [600, 0, 600, 0]  # nor the month's budget
    too_big = ask(1001)
    assert too_big[:3] == [-3, 0, 2]
    bucket_short = ask(100, bucket_cost=11)  # the bucket can never fit: no budget debited
    assert bucket_short[0] == -1
    assert int(redis_sync.hget(day, "spent") or 0) == 600
    assert int(redis_sync.hget(month, "spent") or 0) == 600
    assert redis_sync.pttl(day) > 70 * 365 * 86_400_000  # PEXPIREAT 2100-01-01


def test_a_zero_amount_is_refused_only_once_the_budget_is_spent(
    redis_sync: redis.Redis, key_prefix: str
) -> None:
    acquire = lua_script(redis_sync, "acquire.lua")
    key = f"{key_prefix}:v1:{{zero}}:budget:d"
    args = [0, NOW, 100, 0, EXPIRE_AT_MS, 0]  # no buckets; limit 100, amount 0
    assert int(acquire(keys=[key], args=args)[0]) == 1
    assert not redis_sync.exists(key)  # a zero amount writes nothing
    redis_sync.hset(key, "spent", 100)
    assert int(acquire(keys=[key], args=args)[0]) == -2


def test_settlement_and_the_alert_once_per_window(redis_sync: redis.Redis, key_prefix: str) -> None:
    acquire = lua_script(redis_sync, "acquire.lua")
    adjust = lua_script(redis_sync, "adjust.lua")
    key = f"{key_prefix}:v1:{{alert}}:budget:d"
    # limit 1000, alert at 800
    reply = [int(v) for v in acquire(keys=[key], args=[0, NOW, 1000, 500, EXPIRE_AT_MS, 800])]
    assert reply == [1, 0, 0, 500, 0]
    assert [int(v) for v in adjust(keys=[key], args=[NOW, 1000, 350, EXPIRE_AT_MS, 800])] == [850, 1]
    assert [int(v) for v in adjust(keys=[key], args=[NOW, 1000, -400, EXPIRE_AT_MS, 800])] == [450, 0]
    # Crossing again in the same window: no second alert.
    assert [int(v) for v in acquire(keys=[key], args=[0, NOW, 1000, 500, EXPIRE_AT_MS, 800])] == [
        1,
        0,
        0,
        950,
        0,
    ]
    assert redis_sync.pttl(key) > 70 * 365 * 86_400_000


def _spend(url: str, key: str, attempts: int, out: Any) -> None:
    client = sync_client(url)
    acquire = lua_script(client, "acquire.lua")
    args = [0, "", 10_000, 1000, EXPIRE_AT_MS, 0]  # limit $10 worth 10 requests of 1000
    allowed = sum(int(acquire(keys=[key], args=args)[0]) == 1 for _ in range(attempts))
    out.put(allowed)
    client.close()


def test_exactly_the_budget_is_reserved_across_processes(
    redis_url: str, redis_sync: redis.Redis, key_prefix: str
) -> None:
    key = f"{key_prefix}:v1:{{conc}}:budget:d"
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    procs = [ctx.Process(target=_spend, args=(redis_url, key, 25, results)) for _ in range(4)]
    for p in procs:
        p.start()
    allowed = sum(results.get(timeout=60) for _ in procs)
    for p in procs:
        p.join(timeout=30)
    assert allowed == 10  # 100 attempts from 4 processes
    assert int(redis_sync.hget(key, "spent") or 0) == 10_000
    assert all(redis_sync.ttl(k) > 0 for k in own_keys(redis_sync, key_prefix))
