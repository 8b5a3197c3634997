"""Spend budgets in the token buckets' Lua scripts: all or nothing with the buckets, which
denial is told first, settlement once per reservation, the alert on settled spend once per
window, TTLs, and real concurrency."""

from __future__ import annotations

import os
from typing import Any

import redis

from proxy.store.connection import script as lua_script
from tests.conftest import own_keys, sync_client
from tests.servers import in_processes

NOW = 5_000_000
EXPIRE_AT_MS = 4_102_444_800_000  # 2100-01-01
FAR = 70 * 365 * 86_400_000  # a PEXPIREAT of 2100 leaves at least this


def test_budget_and_buckets_all_or_nothing(redis_sync: redis.Redis, key_prefix: str) -> None:
    acquire = lua_script(redis_sync, "acquire.lua")
    bucket, day, month = (f"{key_prefix}:v1:{{aon}}:{k}" for k in ("rl:t:requests", "budget:d", "budget:m"))
    keys = [bucket, day, month]

    def ask(amount: int, bucket_cost: int = 1, rid: str = "r1") -> list[int]:
        args = [0, NOW, 60, 10, bucket_cost, 1000, amount, EXPIRE_AT_MS, rid, 5000, amount, EXPIRE_AT_MS, rid]
        return [int(v) for v in acquire(keys=keys, args=args)]

    allowed = ask(600)
    assert allowed[:3] == [1, 0, 0]
    assert allowed[3] == 9  # the bucket's level
    assert allowed[5:] == [600, 600]  # each budget's spend
    assert redis_sync.hget(day, "r:r1") == b"600"  # the reservation, settled once by adjust.lua
    denied = ask(600, rid="r2")  # 600 + 600 > 1000: the day's budget refuses
    assert denied[:3] == [-2, 0, 2]  # decided by key 2 (the day's budget)
    assert denied[3] == 9  # the bucket was not debited
    assert denied[5:] == [600, 600]  # nor the month's budget
    assert not redis_sync.hexists(day, "r:r2")
    assert ask(1001, rid="r3")[:3] == [-3, 0, 2]
    assert ask(100, bucket_cost=11, rid="r4")[0] == -1  # the bucket can never fit
    assert int(redis_sync.hget(day, "spent") or 0) == 600
    assert int(redis_sync.hget(month, "spent") or 0) == 600
    assert redis_sync.pttl(day) > FAR


def test_never_fits_is_told_before_spent(redis_sync: redis.Redis, key_prefix: str) -> None:
    """A request larger than the end user's whole budget hears so, not "resets in ...",
    even while the tenant's budget is also spent."""
    acquire = lua_script(redis_sync, "acquire.lua")
    tenant, user = f"{key_prefix}:v1:{{order}}:budget:t", f"{key_prefix}:v1:{{order}}:budget:u"
    redis_sync.hset(tenant, "spent", 990)
    args = [0, NOW, 1000, 200, EXPIRE_AT_MS, "a", 100, 200, EXPIRE_AT_MS, "a"]
    assert [int(v) for v in acquire(keys=[tenant, user], args=args)][:3] == [-3, 0, 2]


def test_a_zero_amount_is_refused_only_once_the_budget_is_spent(
    redis_sync: redis.Redis, key_prefix: str
) -> None:
    acquire = lua_script(redis_sync, "acquire.lua")
    key = f"{key_prefix}:v1:{{zero}}:budget:d"
    args = [0, NOW, 100, 0, EXPIRE_AT_MS, ""]  # no buckets; limit 100, amount 0
    assert int(acquire(keys=[key], args=args)[0]) == 1
    assert not redis_sync.exists(key)  # a zero amount writes nothing
    redis_sync.hset(key, "spent", 100)
    assert int(acquire(keys=[key], args=args)[0]) == -2


def test_settled_once_and_the_alert_on_settled_spend(redis_sync: redis.Redis, key_prefix: str) -> None:
    acquire = lua_script(redis_sync, "acquire.lua")
    adjust = lua_script(redis_sync, "adjust.lua")
    key = f"{key_prefix}:v1:{{alert}}:budget:d"

    def settle(rid: str, delta: int, actual: int) -> list[int]:
        return [int(v) for v in adjust(keys=[key], args=[NOW, rid, delta, EXPIRE_AT_MS, 800, actual])]

    # limit 1000, alert at 800 of settled spend. A reservation of 900 alerts nobody...
    assert [int(v) for v in acquire(keys=[key], args=[0, NOW, 1000, 900, EXPIRE_AT_MS, "a"])] == [
        1,
        0,
        0,
        900,
    ]
    assert settle("a", -850, 50) == [50, 0]  # ...it cost 50
    assert settle("a", -850, 50) == [50, 0]  # a second settlement of "a" changes nothing
    assert settle("never", -500, 0) == [50, 0]  # nor a release of a reservation never made
    for rid in ("b", "c"):
        acquire(keys=[key], args=[0, NOW, 1000, 400, EXPIRE_AT_MS, rid])
    assert settle("b", 0, 400) == [850, 0]  # settled 450
    assert settle("c", 0, 400) == [850, 1]  # settled 850 >= 800: the alert, once
    acquire(keys=[key], args=[0, NOW, 1000, 100, EXPIRE_AT_MS, "d"])
    assert settle("d", 0, 100) == [950, 0]  # not twice in one window
    assert int(redis_sync.hget(key, "settled") or 0) == 950
    assert redis_sync.hkeys(key) and not [k for k in redis_sync.hkeys(key) if k.startswith(b"r:")]
    assert redis_sync.pttl(key) > FAR


def _spend(url: str, key: str, attempts: int, out: Any) -> None:
    client = sync_client(url)
    acquire = lua_script(client, "acquire.lua")
    allowed = 0
    for i in range(attempts):
        args = [0, "", 10_000, 1000, EXPIRE_AT_MS, f"{os.getpid()}.{i}"]  # worth 10 requests of 1000
        allowed += int(acquire(keys=[key], args=args)[0]) == 1
    out.put(allowed)
    client.close()


def test_exactly_the_budget_is_reserved_across_processes(
    redis_url: str, redis_sync: redis.Redis, key_prefix: str
) -> None:
    key = f"{key_prefix}:v1:{{conc}}:budget:d"
    allowed = sum(in_processes(_spend, (redis_url, key, 25), 4))
    assert allowed == 10  # 100 attempts from 4 processes
    assert int(redis_sync.hget(key, "spent") or 0) == 10_000
    assert all(redis_sync.ttl(k) > 0 for k in own_keys(redis_sync, key_prefix))
