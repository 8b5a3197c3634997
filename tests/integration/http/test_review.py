"""The review queue through the app on a real Redis: flag, quarantine, list, decide."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import orjson
import pytest
import redis

from proxy.core.keys import cache_key, sibling_key
from proxy.store.cache import encode_entry
from proxy.store.connection import RedisGate, connect
from proxy.store.review import ReviewQueue, is_sampled
from tests.conftest import UPSTREAM_BASE, auth, build_config, keys_without_ttl, openai_completion, own_keys

pytestmark = pytest.mark.anyio
CHAT = "/v1/chat/completions"
FLAGS = "/v1/cache/flags"
URL = f"{UPSTREAM_BASE}/chat/completions"


def ask(content: str = "What is the capital of Australia?") -> dict[str, Any]:
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": content}]}


def answers(upstream: Any, *contents: str) -> Any:
    """The upstream answers these, in order (then the last one again)."""
    replies = [httpx.Response(200, json=openai_completion(c)) for c in contents]
    route = upstream.post(URL)
    route.side_effect = replies + [replies[-1]] * 50
    return route


async def cached(
    client: httpx.AsyncClient, tenant: str = "acme", content: str | None = None
) -> httpx.Response:
    r = await client.post(CHAT, json=ask(content) if content else ask(), headers=auth(tenant))
    assert r.status_code == 200, r.text
    return r


async def test_flag_quarantines_and_the_next_request_refreshes(
    make_client: Any, upstream: Any, redis_sync: redis.Redis, key_prefix: str
) -> None:
    client = await make_client()
    route = answers(upstream, "Sydney", "Canberra")
    first = await cached(client)
    digest = first.headers["x-cache-key"]
    assert (await cached(client)).headers["x-cache"] == "HIT"

    flagged = await client.post(FLAGS, json={"key": digest, "reason": "wrong capital"}, headers=auth())
    assert flagged.status_code == 201, flagged.text
    assert flagged.json() == {
        "object": "cache.flag",
        "key": digest,
        "tenant": "acme",
        "flags": 1,
        "queued": True,
        "action": "quarantined",
    }
    # Stopped being served within one request: the next one is a miss with a fresh answer.
    fresh = await cached(client)
    assert (
        fresh.headers["x-cache"] == "MISS" and fresh.json()["choices"][0]["message"]["content"] == "Canberra"
    )
    assert route.call_count == 2
    assert (await cached(client)).json()["choices"][0]["message"]["content"] == "Canberra"

    queue = (await client.get("/admin/review", headers=auth("admin"))).json()
    assert [i["id"] for i in queue["data"]] == [digest]
    item = queue["data"][0]
    assert item["state"] == "pending" and item["quarantined"] and item["reason"] == "wrong capital"
    assert item["flagged_by"] == "acme" and item["model"] == "gpt-4o-mini" and item["has_request"]
    assert queue["queues"] == {"acme": {"pending": 1, "dropped": 0}, "globex": {"pending": 0, "dropped": 0}}
    # On request, the old answer and the prompt that produced it.
    full = (await client.get(f"/admin/review/{digest}?include=answer,request", headers=auth("admin"))).json()
    assert full["answer"]["choices"][0]["message"]["content"] == "Sydney"
    assert full["request"]["messages"] == ask()["messages"]
    # A second flag is counted on the same item.
    again = await client.post(FLAGS, json={"key": digest}, headers=auth())
    assert again.status_code == 200 and again.json()["flags"] == 2 and not again.json()["queued"]

    rejected = await client.post(
        f"/admin/review/{digest}/decision",
        json={"decision": "reject", "tenant": "acme", "reviewer": "ana"},
        headers=auth("admin"),
    )
    assert rejected.status_code == 200, rejected.text
    assert rejected.json()["state"] == "rejected" and rejected.json()["decided_by"].startswith("ana (admin:")
    # Reject purges the entry and the quarantined copy; the queue is empty.
    entry = cache_key(key_prefix, "acme", "chat", digest)
    for kind in ("chat", "req", "rv:answer", "rv:request"):
        assert not redis_sync.exists(sibling_key(entry, kind)), kind
    assert (await client.get("/admin/review", headers=auth("admin"))).json()["data"] == []
    assert (await cached(client)).headers["x-cache"] == "MISS"
    assert keys_without_ttl(redis_sync, key_prefix) == []


async def test_approve_keeps_and_pin_extends_within_the_cap(
    make_client: Any, upstream: Any, redis_sync: redis.Redis, key_prefix: str
) -> None:
    client = await make_client(review={"on_flag": "keep", "pin_max_seconds": 86_400})
    answers(upstream, "Canberra")
    a = (await cached(client, content="a")).headers["x-cache-key"]
    b = (await cached(client, content="b")).headers["x-cache-key"]
    for digest in (a, b):
        flagged = await client.post(FLAGS, json={"key": digest}, headers=auth())
        assert flagged.json()["action"] == "kept"
    # keep: still served while it waits for a decision.
    assert (await cached(client, content="a")).headers["x-cache"] == "HIT"

    approve = await client.post(f"/admin/review/{a}/decision", json={"decision": "approve"}, headers=auth())
    assert approve.status_code == 200 and approve.json()["state"] == "approved"
    assert approve.json()["decided_by"] == "tenant:acme"
    assert (await cached(client, content="a")).headers["x-cache"] == "HIT"

    entry = cache_key(key_prefix, "acme", "chat", b)
    assert redis_sync.ttl(entry) <= 3600
    too_long = {"decision": "pin", "tenant": "acme", "ttl_seconds": 86_401}
    refused = await client.post(f"/admin/review/{b}/decision", json=too_long, headers=auth("admin"))
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "ttl_seconds"
    pin = {"decision": "pin", "tenant": "acme", "ttl_seconds": 50_000}
    pinned = await client.post(f"/admin/review/{b}/decision", json=pin, headers=auth("admin"))
    assert pinned.status_code == 200 and pinned.json()["state"] == "pinned"
    assert 49_990 <= redis_sync.ttl(entry) <= 50_000
    assert 49_990 <= redis_sync.ttl(sibling_key(entry, "req")) <= 50_000
    default_pin = await client.post(f"/admin/review/{b}/decision", json={"decision": "pin"}, headers=auth())
    assert default_pin.status_code == 409 and default_pin.json()["error"]["code"] == "already_decided"
    assert keys_without_ttl(redis_sync, key_prefix) == []


async def test_a_pinned_answer_outlives_no_cache_requests_until_it_expires(
    make_client: Any, upstream: Any, redis_sync: redis.Redis, key_prefix: str
) -> None:
    client = await make_client(review={"retention_seconds": 3600})
    answers(upstream, "Canberra", "Sydney", "Perth")
    digest = (await cached(client)).headers["x-cache-key"]
    await client.post(FLAGS, json={"key": digest}, headers=auth())
    pin = {"decision": "pin", "tenant": "acme", "ttl_seconds": 50_000}
    assert (await client.post(f"/admin/review/{digest}/decision", json=pin, headers=auth("admin"))).is_success
    entry = cache_key(key_prefix, "acme", "chat", digest)
    item = sibling_key(entry, "rv:item")
    assert redis_sync.pttl(item) > 3600 * 1000  # the pin's marker lives as long as the pin

    def content(r: httpx.Response) -> str:
        return str(r.json()["choices"][0]["message"]["content"])

    # A client asking for a fresh answer gets one, but the verified answer stays cached.
    fresh = await client.post(CHAT, json=ask(), headers={**auth(), "Cache-Control": "no-cache"})
    assert fresh.status_code == 200 and content(fresh) == "Sydney"
    again = await cached(client)
    assert again.headers["x-cache"] == "HIT" and content(again) == "Canberra"
    assert redis_sync.ttl(entry) > 49_000

    # Once the pinned answer is gone (expired, purged), the key is cached as usual again.
    redis_sync.delete(entry)
    assert (await cached(client)).headers["x-cache"] == "MISS"
    assert content(await cached(client)) == "Perth"


async def test_approving_a_quarantined_answer_serves_it_again(make_client: Any, upstream: Any) -> None:
    client = await make_client()
    route = answers(upstream, "Canberra")
    digest = (await cached(client)).headers["x-cache-key"]
    await client.post(FLAGS, json={"key": digest, "reason": "looks odd"}, headers=auth())
    decided = await client.post(
        f"/admin/review/{digest}/decision", json={"decision": "approve"}, headers=auth()
    )
    assert decided.json()["state"] == "approved" and not decided.json()["quarantined"]
    assert (await cached(client)).headers["x-cache"] == "HIT"
    assert route.call_count == 1


async def test_tenants_cannot_touch_each_others_items(
    make_client: Any, upstream: Any, redis_sync: Any
) -> None:
    client = await make_client()
    answers(upstream, "same answer")
    # Colliding inputs: both tenants cache the same prompt under the same digest.
    digest = (await cached(client, "acme")).headers["x-cache-key"]
    assert (await cached(client, "globex")).headers["x-cache-key"] == digest
    assert (await client.post(FLAGS, json={"key": digest}, headers=auth("acme"))).status_code == 201
    # acme's flag quarantined acme's entry only.
    assert (await cached(client, "globex")).headers["x-cache"] == "HIT"

    cross = await client.post(FLAGS, json={"key": digest, "tenant": "acme"}, headers=auth("globex"))
    assert cross.status_code == 403
    listing = await client.get("/admin/review?tenant=acme", headers=auth("globex"))
    assert listing.status_code == 403
    assert (await client.get("/admin/review", headers=auth("globex"))).json()["data"] == []
    peek = await client.get(f"/admin/review/{digest}?tenant=acme", headers=auth("globex"))
    assert peek.status_code == 403
    assert (await client.get(f"/admin/review/{digest}", headers=auth("globex"))).status_code == 404
    decide = await client.post(
        f"/admin/review/{digest}/decision", json={"decision": "reject"}, headers=auth("globex")
    )
    assert decide.status_code == 404 and decide.json()["error"]["code"] == "review_item_not_found"
    decide = await client.post(
        f"/admin/review/{digest}/decision",
        json={"decision": "reject", "tenant": "acme"},
        headers=auth("globex"),
    )
    assert decide.status_code == 403
    # acme's item is untouched.
    mine = (await client.get(f"/admin/review/{digest}", headers=auth("acme"))).json()
    assert mine["state"] == "pending" and mine["tenant"] == "acme"


async def test_bad_flags_get_clear_errors(make_client: Any) -> None:
    client = await make_client()
    missing = await client.post(FLAGS, json={"key": "ab" * 32, "reason": "?"}, headers=auth())
    assert missing.status_code == 404
    assert (
        missing.json()["error"]["code"] == "cache_entry_not_found"
        and "ab" * 32 in missing.json()["error"]["message"]
    )
    for body, param in (
        ({"key": "not-a-digest"}, "key"),
        ({}, "key"),
        ({"key": "ab" * 32, "reason": 5}, "reason"),
        ({"key": "ab" * 32, "reason": "x" * 1001}, "reason"),
    ):
        r = await client.post(FLAGS, json=body, headers=auth())
        assert r.status_code == 400 and r.json()["error"]["param"] == param, (body, r.text)
    assert (await client.post(FLAGS, content=b"{", headers=auth())).status_code == 400
    assert (await client.post(FLAGS, json={"key": "ab" * 32})).status_code == 401
    admin_without_tenant = await client.post(FLAGS, json={"key": "ab" * 32}, headers=auth("admin"))
    assert (
        admin_without_tenant.status_code == 400 and admin_without_tenant.json()["error"]["param"] == "tenant"
    )
    unknown = await client.post(
        "/admin/review/" + "ab" * 32 + "/decision", json={"decision": "maybe"}, headers=auth()
    )
    assert unknown.status_code == 400 and unknown.json()["error"]["param"] == "decision"
    assert (await client.get("/admin/review?limit=0", headers=auth("admin"))).status_code == 400
    assert (
        await client.get("/admin/review/" + "ab" * 32 + "?include=secrets", headers=auth())
    ).status_code == 400


async def test_queue_stays_under_its_cap_under_many_concurrent_flags(
    make_client: Any, upstream: Any, redis_sync: redis.Redis, key_prefix: str
) -> None:
    client = await make_client(review={"max_items": 5})
    answers(upstream, "x")
    digests = [(await cached(client, content=f"q{i}")).headers["x-cache-key"] for i in range(12)]
    # Every entry flagged at once, then each flagged twice more, all concurrently.
    first = await asyncio.gather(*(client.post(FLAGS, json={"key": d}, headers=auth()) for d in digests))
    assert Counter(r.status_code for r in first) == {201: 12}
    queue = f"{key_prefix}:v1:{{acme}}:rv:queue"
    assert redis_sync.zcard(queue) == 5
    assert int(redis_sync.get(f"{key_prefix}:v1:{{acme}}:rv:dropped") or 0) == 7
    again = await asyncio.gather(*(client.post(FLAGS, json={"key": d}, headers=auth()) for d in digests * 2))
    assert Counter(r.status_code for r in again) == {200: 24}
    assert redis_sync.zcard(queue) == 5
    listing = (await client.get("/admin/review?tenant=acme", headers=auth("admin"))).json()
    # Re-flagged items come back into the queue and push older ones out: still 5 at most.
    assert len(listing["data"]) == 5 and listing["queues"]["acme"]["pending"] == 5
    assert listing["queues"]["acme"]["dropped"] >= 7
    assert all(i["flags"] == 3 for i in listing["data"])
    assert keys_without_ttl(redis_sync, key_prefix) == []
    assert all(redis_sync.pttl(k) > 0 for k in own_keys(redis_sync, key_prefix) if b":rv:" in k)


async def test_a_flag_brings_back_an_item_the_cap_dropped(make_client: Any, upstream: Any) -> None:
    client = await make_client(review={"max_items": 2})
    answers(upstream, "x")
    a, b, c = [(await cached(client, content=f"cap {n}")).headers["x-cache-key"] for n in "abc"]
    for digest in (a, b, c):
        assert (await client.post(FLAGS, json={"key": digest}, headers=auth())).status_code == 201
        await asyncio.sleep(0.01)  # distinct queue times: the oldest is dropped first

    async def queued() -> tuple[set[str], int]:
        listing = (await client.get("/admin/review?tenant=acme", headers=auth("admin"))).json()
        return {i["id"] for i in listing["data"]}, listing["queues"]["acme"]["dropped"]

    assert await queued() == ({b, c}, 1)
    again = await client.post(FLAGS, json={"key": a, "reason": "still wrong"}, headers=auth())
    assert again.status_code == 200 and again.json()["flags"] == 2
    assert await queued() == ({c, a}, 2)  # a is back, in front of reviewers; b made room


async def test_concurrent_decisions_on_one_item_exactly_one_wins(make_client: Any, upstream: Any) -> None:
    client = await make_client()
    answers(upstream, "x")
    digest = (await cached(client)).headers["x-cache-key"]
    await client.post(FLAGS, json={"key": digest}, headers=auth())
    decisions = ["approve", "reject", "pin"] * 10
    results = await asyncio.gather(
        *(
            client.post(
                f"/admin/review/{digest}/decision",
                json={"decision": d, "tenant": "acme"},
                headers=auth("admin"),
            )
            for d in decisions
        )
    )
    assert Counter(r.status_code for r in results) == {200: 1, 409: 29}
    winner = next(r.json() for r in results if r.status_code == 200)
    item = (await client.get(f"/admin/review/{digest}", headers=auth())).json()
    assert item["state"] == winner["state"] and item["decided_at"] is not None


def test_decision_script_claims_once_across_threads(
    redis_url: str, key_prefix: str, redis_sync: redis.Redis
) -> None:
    """25 rounds: flag (or reopen) an item, then 8 threads, each on its own connection,
    race to decide it. Exactly one decision wins every round."""
    config = build_config(key_prefix)
    digest = "cd" * 32

    def run(n: int, work: str) -> str:
        async def once() -> str:
            gate = RedisGate(connect(redis_url, config.redis), retry_after_ms=0)
            queue = ReviewQueue(gate, config)
            try:
                if work == "flag":
                    return (await queue.flag("acme", digest, "", "test")).outcome
                return (await queue.decide("acme", digest, "approve", f"thread {n}")).outcome
            finally:
                await gate.client.aclose()

        return asyncio.run(once())

    for _ in range(25):
        redis_sync.set(cache_key(key_prefix, "acme", "chat", digest), b"\x01" + b"\x00" * 18, ex=60)
        assert run(0, "flag") == "queued"
        with ThreadPoolExecutor(8) as pool:
            outcomes = Counter(pool.map(run, range(8), ["decide"] * 8))
        assert outcomes == {"ok": 1, "decided": 7}, outcomes


async def test_sampling_queues_new_answers_and_approval_is_remembered(
    make_client: Any, upstream: Any, redis_sync: redis.Redis, key_prefix: str
) -> None:
    client = await make_client(review={"sample_rate": 1.0})
    route = answers(upstream, "fine")
    digest = (await cached(client)).headers["x-cache-key"]
    assert (await cached(client)).headers["x-cache"] == "HIT"  # sampled answers stay served
    (item,) = (await client.get("/admin/review", headers=auth("admin"))).json()["data"]
    assert (
        item["id"] == digest and item["source"] == "sample" and item["flags"] == 0 and not item["quarantined"]
    )
    await client.post(f"/admin/review/{digest}/decision", json={"decision": "approve"}, headers=auth())
    # The entry expires (here: deleted) and is stored again: it is not sampled a second time.
    redis_sync.delete(cache_key(key_prefix, "acme", "chat", digest))
    assert (await cached(client)).headers["x-cache"] == "MISS"
    assert route.call_count == 2
    assert (await client.get("/admin/review", headers=auth("admin"))).json()["data"] == []


def test_sampling_is_deterministic_and_near_the_rate() -> None:
    import hashlib

    digests = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(20_000)]
    picked = [d for d in digests if is_sampled(d, 0.01)]
    assert 150 <= len(picked) <= 250
    assert picked == [d for d in digests if is_sampled(d, 0.01)]
    assert not any(is_sampled(d, 0.0) for d in digests[:1000])
    assert all(is_sampled(d, 1.0) for d in digests[:1000])


async def test_shared_scope_only_admins_review(make_client: Any, upstream: Any) -> None:
    client = await make_client(cache={"scope": "shared"})
    answers(upstream, "x")
    digest = (await cached(client)).headers["x-cache-key"]
    flagged = await client.post(FLAGS, json={"key": digest}, headers=auth("globex"))
    assert flagged.status_code == 201 and flagged.json()["tenant"] == "shared"
    assert (await client.get("/admin/review", headers=auth("acme"))).status_code == 403
    listing = (await client.get("/admin/review", headers=auth("admin"))).json()
    assert [i["id"] for i in listing["data"]] == [digest] and listing["data"][0]["flagged_by"] == "globex"


async def test_responses_and_completions_answers_can_be_flagged_too(
    make_client: Any, redis_sync: redis.Redis, key_prefix: str
) -> None:
    from proxy.upstream.demo import DemoUpstream
    from proxy.upstream.selector import Upstreams

    client = await make_client(upstreams=Upstreams(5, demo=DemoUpstream(latency_s=0)))
    for path, body, kind in (
        ("/v1/responses", {"model": "demo", "input": "hi"}, "resp"),
        ("/v1/completions", {"model": "demo", "prompt": "hi"}, "cmpl"),
    ):
        digest = (await client.post(path, json=body, headers=auth())).headers["x-cache-key"]
        assert (await client.post(path, json=body, headers=auth())).headers["x-cache"] == "HIT"
        assert (await client.post(FLAGS, json={"key": digest}, headers=auth())).status_code == 201
        assert (await client.post(path, json=body, headers=auth())).headers["x-cache"] == "MISS"
        item = (await client.get(f"/admin/review/{digest}?include=answer,request", headers=auth())).json()
        assert item["api"] == {"resp": "responses", "cmpl": "completions"}[kind]
        assert item["request"] == body and item["answer"] and item["entry_ttl_seconds"] > 0
        decided = await client.post(
            f"/admin/review/{digest}/decision", json={"decision": "reject"}, headers=auth()
        )
        assert decided.status_code == 200
        assert not redis_sync.exists(cache_key(key_prefix, "acme", kind, digest))
        assert (await client.post(path, json=body, headers=auth())).headers["x-cache"] == "MISS"


async def test_an_approval_puts_back_no_longer_than_the_entry_had_left(
    make_client: Any, upstream: Any, redis_sync: redis.Redis, key_prefix: str
) -> None:
    client = await make_client()
    answers(upstream, "Canberra")
    digest = (await cached(client)).headers["x-cache-key"]
    entry = cache_key(key_prefix, "acme", "chat", digest)
    redis_sync.pexpire(entry, 120_000)  # two minutes left when it is flagged
    await client.post(FLAGS, json={"key": digest}, headers=auth())
    assert redis_sync.exists(entry) == 0  # quarantined
    item = sibling_key(entry, "rv:item")
    # The reviewer decides a minute later: a minute is left, not two, and not the default hour.
    deadline = int(redis_sync.hget(item, "entry_deadline_ms") or 0)
    redis_sync.hset(item, "entry_deadline_ms", deadline - 60_000)
    approve = await client.post(
        f"/admin/review/{digest}/decision", json={"decision": "approve"}, headers=auth()
    )
    assert approve.json()["state"] == "approved"
    assert 55_000 <= redis_sync.pttl(entry) <= 60_000

    # Decided after the entry would have expired: approved, but nothing is put back.
    answers(upstream, "Canberra", "Sydney")
    other = (await cached(client, content="other")).headers["x-cache-key"]
    other_entry = cache_key(key_prefix, "acme", "chat", other)
    await client.post(FLAGS, json={"key": other}, headers=auth())
    redis_sync.hset(sibling_key(other_entry, "rv:item"), "entry_deadline_ms", 1)
    late = await client.post(f"/admin/review/{other}/decision", json={"decision": "approve"}, headers=auth())
    assert late.json()["state"] == "approved" and redis_sync.exists(other_entry) == 0


def audio_answer(expires_at: int) -> dict[str, Any]:
    answer = openai_completion("")
    answer["choices"][0]["message"] = {
        "role": "assistant",
        "content": None,
        "audio": {"id": "audio_1", "data": "UklGRg==", "transcript": "Canberra", "expires_at": expires_at},
    }
    return answer


async def test_a_pin_never_outlives_the_audio_it_refers_to(
    make_client: Any, upstream: Any, redis_sync: redis.Redis, key_prefix: str
) -> None:
    client = await make_client(review={"on_flag": "keep", "pin_max_seconds": 86_400})
    soon = int(time.time()) + 600
    upstream.post(URL).mock(return_value=httpx.Response(200, json=audio_answer(soon)))
    digest = (await cached(client)).headers["x-cache-key"]
    entry = cache_key(key_prefix, "acme", "chat", digest)
    assert redis_sync.ttl(entry) <= 600  # the store path caps it already
    await client.post(FLAGS, json={"key": digest}, headers=auth())
    pin = {"decision": "pin", "tenant": "acme", "ttl_seconds": 50_000}
    pinned = await client.post(f"/admin/review/{digest}/decision", json=pin, headers=auth("admin"))
    assert pinned.status_code == 200 and pinned.json()["state"] == "pinned"
    assert 590 <= redis_sync.ttl(entry) <= 600
    assert pinned.json()["pinned_until"] <= soon

    # An answer whose audio has expired since it was flagged cannot be pinned at all.
    later = (await cached(client, content="later")).headers["x-cache-key"]
    await client.post(FLAGS, json={"key": later}, headers=auth())
    copy = sibling_key(cache_key(key_prefix, "acme", "chat", later), "rv:answer")
    expired = orjson.dumps(audio_answer(int(time.time()) - 1))
    redis_sync.set(
        copy, encode_entry(expired, 5, 2, 1 << 20, int(time.time() * 1000), "gpt-4o-mini"), px=600_000
    )
    refused = await client.post(f"/admin/review/{later}/decision", json=pin, headers=auth("admin"))
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "answer_expired"
