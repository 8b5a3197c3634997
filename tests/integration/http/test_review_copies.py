"""Each flag of an entry keeps its own copy of the answer it flagged: a second flag (often
about the fresh answer that replaced a quarantined one) never replaces the first, and the
copies per item are bounded (review.FLAG_COPIES)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import redis

from proxy.core.keys import cache_key, sibling_key
from proxy.store.review import FLAG_COPIES
from tests.conftest import UPSTREAM_BASE, auth, keys_without_ttl, openai_completion

pytestmark = pytest.mark.anyio
CHAT = "/v1/chat/completions"
FLAGS = "/v1/cache/flags"
ASK = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "What is the capital of Australia?"}]}


def answers(upstream: Any, *contents: str) -> Any:
    replies = [httpx.Response(200, json=openai_completion(c)) for c in contents]
    route = upstream.post(f"{UPSTREAM_BASE}/chat/completions")
    route.side_effect = replies + [replies[-1]] * 50
    return route


async def detail(client: httpx.AsyncClient, digest: str) -> dict[str, Any]:
    response = await client.get(f"/admin/review/{digest}?tenant=acme&include=answer", headers=auth("admin"))
    assert response.status_code == 200, response.text
    return dict(response.json())


def contents(item: dict[str, Any]) -> list[tuple[str, str]]:
    return [(c["reason"], c["answer"]["choices"][0]["message"]["content"]) for c in item["flagged_answers"]]


async def test_a_second_flag_keeps_the_first_flagged_answer(
    make_client: Any, upstream: Any, redis_sync: redis.Redis, key_prefix: str
) -> None:
    client = await make_client()  # review.on_flag: quarantine (the default)
    answers(upstream, "Sydney", "Melbourne")
    digest = (await client.post(CHAT, json=ASK, headers=auth())).headers["x-cache-key"]
    assert (
        await client.post(FLAGS, json={"key": digest, "reason": "not Sydney"}, headers=auth())
    ).status_code == 201
    # Quarantined: the next request stores a fresh answer under the same key, also wrong.
    fresh = await client.post(CHAT, json=ASK, headers=auth())
    assert fresh.json()["choices"][0]["message"]["content"] == "Melbourne"
    again = await client.post(FLAGS, json={"key": digest, "reason": "not Melbourne either"}, headers=auth())
    assert again.status_code == 200 and again.json()["flags"] == 2

    item = await detail(client, digest)
    assert contents(item) == [("not Sydney", "Sydney"), ("not Melbourne either", "Melbourne")]
    assert item["flag_copies"] == 2 and all(c["flagged_by"] == "acme" for c in item["flagged_answers"])
    assert all(isinstance(c["flagged_at"], int) for c in item["flagged_answers"])
    # The answer a decision acts on is the latest flagged one, as before.
    assert item["answer"]["choices"][0]["message"]["content"] == "Melbourne"
    listed = (await client.get("/admin/review", headers=auth("admin"))).json()["data"]
    assert listed[0]["flag_copies"] == 2 and "flagged_answers" not in listed[0]  # the list stays light
    assert keys_without_ttl(redis_sync, key_prefix) == []

    # Rejecting deletes every copy with the rest; a new flag starts a new history.
    decided = await client.post(
        f"/admin/review/{digest}/decision",
        json={"decision": "reject", "tenant": "acme"},
        headers=auth("admin"),
    )
    assert decided.status_code == 200, decided.text
    copies = sibling_key(cache_key(key_prefix, "acme", "chat", digest), "rv:flags")
    assert not redis_sync.exists(copies)
    await client.post(CHAT, json=ASK, headers=auth())
    assert (
        await client.post(FLAGS, json={"key": digest, "reason": "third"}, headers=auth())
    ).status_code == 201
    assert contents(await detail(client, digest)) == [("third", "Melbourne")]


async def test_copies_are_bounded_keeping_the_first_and_the_newest(
    make_client: Any, upstream: Any, redis_sync: redis.Redis, key_prefix: str
) -> None:
    client = await make_client(review={"on_flag": "keep"})  # the same answer, flagged again and again
    answers(upstream, "Sydney")
    digest = (await client.post(CHAT, json=ASK, headers=auth())).headers["x-cache-key"]
    flags = FLAG_COPIES + 5
    for n in range(flags):
        response = await client.post(FLAGS, json={"key": digest, "reason": f"flag {n}"}, headers=auth())
        assert response.status_code in (200, 201) and response.json()["flags"] == n + 1
    item = await detail(client, digest)
    kept = [reason for reason, _ in contents(item)]
    assert kept == ["flag 0", *(f"flag {n}" for n in range(flags - FLAG_COPIES + 1, flags))]
    assert len(kept) == FLAG_COPIES and item["flags"] == flags
    copies = sibling_key(cache_key(key_prefix, "acme", "chat", digest), "rv:flags")
    assert redis_sync.pttl(copies) > 0 and redis_sync.llen(copies) == FLAG_COPIES


async def test_a_sample_keeps_no_flag_copy(make_client: Any, upstream: Any) -> None:
    client = await make_client(review={"sample_rate": 1.0})
    answers(upstream, "Canberra")
    digest = (await client.post(CHAT, json=ASK, headers=auth())).headers["x-cache-key"]
    item = await detail(client, digest)
    assert item["source"] == "sample" and item["flagged_answers"] == [] and item["flag_copies"] == 0
