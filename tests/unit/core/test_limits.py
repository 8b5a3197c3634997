"""Bucket plans: what each request must pass, memoized in a bounded structure (end users
are unbounded: an unbounded cache of plans was a memory leak)."""

from __future__ import annotations

import gc
import tracemalloc

from proxy.config import parse_config
from proxy.core.limits import BucketPlanner, duration, end_user_id, plan_buckets

LIMITS = {
    "requests_per_minute": 60,
    "tokens_per_minute": 1000,
    "models": {"m": {"requests_per_minute": 10}},
    "per_user": {"requests_per_minute": 5, "tokens_per_minute": 100},
}
CONFIG = parse_config(
    {
        "models": [{"name": "m", "litellm_model": "demo/echo"}],
        "tenants": [
            {"name": "acme", "api_keys": ["sk-acme-12345"], "limits": LIMITS},
            {"name": "free", "api_keys": ["sk-free-12345"]},
        ],
    },
    {},
)
ACME, FREE = CONFIG.tenants


def test_a_plan_names_every_bucket_that_applies() -> None:
    plan = plan_buckets("p", ACME, "m", "alice@example.com")
    uid = end_user_id("alice@example.com")
    assert [b.key for b in plan] == [
        "p:v1:{acme}:rl:t:requests",
        "p:v1:{acme}:rl:t:tokens",
        "p:v1:{acme}:rl:m:m:requests",
        f"p:v1:{{acme}}:rl:u:{uid}:requests",
        f"p:v1:{{acme}}:rl:u:{uid}:tokens",
    ]
    assert "alice" not in uid and len(uid) == 24
    assert [b.scope for b in plan][-1] == "acme (end user)"
    assert plan_buckets("p", FREE, "m", "alice") == ()
    assert plan_buckets("p", ACME, "other", None) == plan[:2]


def test_the_planner_returns_the_same_plan_as_plan_buckets() -> None:
    planner = BucketPlanner("p")
    assert planner.plan(ACME, "m", "bob") == plan_buckets("p", ACME, "m", "bob")
    assert planner.plan(ACME, "m", "bob") is planner.plan(ACME, "m", "bob")  # memoized
    assert planner.plan(FREE, "m", "bob") == () and len(planner) == 1


def test_ten_thousand_end_users_leave_a_bounded_footprint() -> None:
    planner = BucketPlanner("p", max_plans=512)
    for i in range(1000):  # warm up to the bound
        planner.plan(ACME, "m", f"user-{i}")
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        for i in range(1000, 11_000):
            planner.plan(ACME, "m", f"user-{i}")
        gc.collect()
        grown = sum(s.size_diff for s in tracemalloc.take_snapshot().compare_to(before, "filename"))
    finally:
        tracemalloc.stop()
    assert len(planner) == 512
    # What was allocated while tracing and is still held: at most the 512 plans kept
    # (~0.55 MB measured), not one plan per user (unbounded: ~12 MB for these 10,000).
    assert grown < 1_500_000, grown
    # The most recent users are the ones kept.
    assert planner.plan(ACME, "m", "user-10999") is planner.plan(ACME, "m", "user-10999")


def test_the_planner_never_keeps_the_clients_end_user_id() -> None:
    """The id is the client's (`user` may be megabytes): plans are keyed by its hash, and
    not at all where no per-user limits apply."""
    unlimited_users = parse_config(
        {
            "models": [{"name": "m", "litellm_model": "demo/echo"}],
            "tenants": [{"name": "t", "api_keys": ["sk-t-12345678"], "limits": {"requests_per_minute": 5}}],
        },
        {},
    ).tenants[0]
    planner = BucketPlanner("p", max_plans=64)
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        for i in range(50):
            planner.plan(unlimited_users, "m", "x" * 1_000_000 + str(i))
            planner.plan(ACME, "m", "y" * 1_000_000 + str(i))
        gc.collect()
        grown = sum(s.size_diff for s in tracemalloc.take_snapshot().compare_to(before, "filename"))
    finally:
        tracemalloc.stop()
    assert len(planner) == 1 + 50  # one plan for all users of the tenant without per-user limits
    assert grown < 500_000, grown  # the plans, not 100 MB of ids
    user = "z" * 1_000_000
    assert planner.plan(ACME, "m", user)[-1].key.endswith(f":u:{end_user_id(user)}:tokens")


def test_durations_read_like_openai() -> None:
    assert [duration(ms) for ms in (-5, 20, 1000, 1500, 60_000, 360_000)] == [
        "0ms",
        "20ms",
        "1s",
        "1.5s",
        "1m0s",
        "6m0s",
    ]
