"""Record and replay modes (`tenants[].cache_mode`) through the pipeline, provider mocked
with respx: what record writes, and that replay never calls the provider: a miss is a 404
naming the nearest recorded request and the paths that differ."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import orjson
import pytest
import redis

from proxy.service import replay
from tests.conftest import (
    TENANT_KEYS,
    UPSTREAM_BASE,
    auth,
    keys_without_ttl,
    openai_completion,
    provider_mock,
    sdk,
    sse_events,
)

pytestmark = pytest.mark.anyio
CHAT = "/v1/chat/completions"
DAY = 24 * 3600


def tenants(mode: str, **extra: Any) -> list[dict[str, Any]]:
    return [{"name": n, "api_keys": [k], "cache_mode": mode, **extra} for n, k in TENANT_KEYS.items()]


def conversation(question: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": "You answer in one word."}, {"role": "user", "content": question}]


def chat(question: str, **params: Any) -> dict[str, Any]:
    return {"model": "gpt-4o-mini", "messages": conversation(question), **params}


def provider_calls(mock: Any) -> list[Any]:
    return [c for c in mock.calls if c.request.url.host != "proxy"]


async def record(make_client: Any, *bodies: dict[str, Any], **overrides: Any) -> None:
    client = await make_client(tenants=tenants("record"), **overrides)
    with provider_mock() as mock:
        mock.post(f"{UPSTREAM_BASE}/chat/completions").respond(json=openai_completion("Paris"))
        for body in bodies:
            assert (await client.post(CHAT, json=body, headers=auth())).status_code == 200


async def test_record_keeps_the_request_with_the_record_ttl(
    make_client: Any, redis_sync: redis.Redis, key_prefix: str
) -> None:
    """Entries live `record_ttl_seconds` (30 days by default, past cache.max_ttl_seconds),
    and the request beside them too."""
    await record(make_client, chat("Capital of France?"))
    answers = list(redis_sync.scan_iter(match=f"{key_prefix}:v1:acme:chat:*"))
    requests = list(redis_sync.scan_iter(match=f"{key_prefix}:v1:acme:req:*"))
    assert len(answers) == len(requests) == 1
    assert 29 * DAY < redis_sync.ttl(answers[0]) <= 30 * DAY
    assert 29 * DAY < redis_sync.ttl(requests[0]) <= 30 * DAY
    assert keys_without_ttl(redis_sync, key_prefix) == []


async def test_record_keeps_the_request_even_without_keep_prompts(
    make_client: Any, redis_sync: redis.Redis, key_prefix: str
) -> None:
    """A fixture needs the request: record mode keeps it whatever review.keep_prompts says."""
    client = await make_client(tenants=tenants("record"), review={"keep_prompts": False})
    with provider_mock() as mock:
        mock.post(f"{UPSTREAM_BASE}/chat/completions").respond(json=openai_completion("Paris"))
        assert (await client.post(CHAT, json=chat("Capital of France?"), headers=auth())).status_code == 200
    requests = list(redis_sync.scan_iter(match=f"{key_prefix}:v1:acme:req:*"))
    assert len(requests) == 1


async def test_replay_serves_hits_and_streams_without_the_provider(make_client: Any) -> None:
    await record(make_client, chat("Capital of France?"))
    client = await make_client(tenants=tenants("replay"))
    with provider_mock() as mock:  # no route: any provider call fails the test
        plain = await client.post(CHAT, json=chat("Capital of France?"), headers=auth())
        streamed = await client.post(CHAT, json=chat("Capital of France?", stream=True), headers=auth())
        fresh = await client.post(
            CHAT, json=chat("Capital of France?"), headers={**auth(), "Cache-Control": "no-cache"}
        )
        assert not provider_calls(mock)
    assert plain.status_code == 200 and plain.headers["x-cache"] == "HIT"
    assert plain.json()["choices"][0]["message"]["content"] == "Paris"
    events = sse_events(streamed.content)
    assert streamed.headers["x-cache"] == "HIT" and events[-1] == "[DONE]"
    assert (
        "".join(e["choices"][0]["delta"].get("content") or "" for e in events[:-1] if e["choices"]) == "Paris"
    )
    assert fresh.headers["x-cache"] == "HIT"  # no-cache would go upstream: replay looks up anyway


async def test_a_replay_miss_is_a_404_naming_the_changed_paths(make_client: Any) -> None:
    await record(make_client, chat("What is the capital of France?"), chat("Something else entirely"))
    client = sdk(await make_client(tenants=tenants("replay")))
    with provider_mock() as mock:
        with pytest.raises(openai.NotFoundError) as changed:
            await client.chat.completions.create(
                model="gpt-4o-mini", messages=conversation("What is the capital of Spain?")
            )
        with pytest.raises(openai.NotFoundError) as added:
            await client.chat.completions.create(
                model="gpt-4o-mini", messages=conversation("What is the capital of France?"), temperature=0.2
            )
        assert not provider_calls(mock)
    error = changed.value.body
    assert isinstance(error, dict) and error["code"] == "no_recorded_answer"
    assert error["type"] == "invalid_request_error"
    message = error["message"]
    assert "tenant 'acme' is in replay mode" in message
    # The nearest of the two recorded requests, and only the path that differs.
    assert 'messages[1].content: "…the capital of France?" -> "…the capital of Spain?"' in message
    assert "1 difference " in message
    added_message = added.value.body["message"]  # type: ignore[index]
    assert "temperature: (absent) -> 0.2" in added_message
    assert "messages[1]" not in added_message


async def test_replay_with_nothing_recorded_says_so(make_client: Any) -> None:
    client = await make_client(tenants=tenants("replay"))
    with provider_mock():
        response = await client.post(CHAT, json=chat("Anything?"), headers=auth())
    assert response.status_code == 404
    assert (
        "No chat request for model 'gpt-4o-mini' is recorded for this tenant."
        in response.json()["error"]["message"]
    )


async def test_replay_only_searches_the_tenant_and_says_when_the_search_was_capped(
    make_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    await record(make_client, chat("one"), chat("two"), chat("three"))
    monkeypatch.setattr(replay, "CANDIDATES", 2)
    client = await make_client(tenants=tenants("replay"))
    with provider_mock():
        capped = await client.post(CHAT, json=chat("four"), headers=auth())
        other = await client.post(CHAT, json=chat("one"), headers=auth("globex"))
    assert "(only the first 2 recorded entries were searched)" in capped.json()["error"]["message"]
    assert other.status_code == 404  # acme's recordings are not globex's
    assert "is recorded for this tenant" in other.json()["error"]["message"]


async def test_replay_ignores_rate_limits(make_client: Any) -> None:
    """No upstream call is made, so nothing is limited: hits (even with limit_cache_hits)
    and misses alike."""
    await record(make_client, chat("Capital of France?"))
    limited = tenants("replay", limits={"requests_per_minute": 1}, limit_cache_hits=True)
    client = await make_client(tenants=limited)
    with provider_mock():
        hits = [await client.post(CHAT, json=chat("Capital of France?"), headers=auth()) for _ in range(3)]
        misses = [await client.post(CHAT, json=chat(f"new {i}"), headers=auth()) for i in range(3)]
    assert [r.status_code for r in hits] == [200, 200, 200]
    assert [r.status_code for r in misses] == [404, 404, 404]


async def test_a_request_that_bypasses_the_cache_cannot_be_replayed(make_client: Any) -> None:
    client = await make_client(tenants=tenants("replay"))
    with provider_mock() as mock:
        response = await client.post(CHAT, json=chat("Keep this", store=True), headers=auth())
        assert not provider_calls(mock)
    assert response.status_code == 404
    error = response.json()["error"]
    assert error["code"] == "no_recorded_answer" and error["param"] == "store"
    assert "never cached (`store` bypasses the cache)" in error["message"]


async def test_shared_scope_does_not_show_other_tenants_requests(make_client: Any) -> None:
    await record(make_client, chat("Capital of France?"), cache={"scope": "shared"})
    client = await make_client(tenants=tenants("replay"), cache={"scope": "shared"})
    with provider_mock():
        response = await client.post(CHAT, json=chat("Capital of Spain?"), headers=auth("globex"))
    message = response.json()["error"]["message"]
    assert response.status_code == 404 and "France" not in message and "cache.scope: shared" in message


EMB_MODELS = [
    {"name": "gpt-4o-mini", "litellm_model": "openai/gpt-4o-mini", "api_base": UPSTREAM_BASE},
    {"name": "emb", "litellm_model": "openai/text-embedding-3-small", "api_base": UPSTREAM_BASE},
]


def embeddings(request: httpx.Request) -> httpx.Response:
    inputs = orjson.loads(request.content)["input"]
    data = [{"object": "embedding", "index": i, "embedding": [0.5, float(i)]} for i in range(len(inputs))]
    return httpx.Response(
        200,
        json={
            "object": "list",
            "data": data,
            "model": "emb",
            "usage": {"prompt_tokens": 2, "total_tokens": 2},
        },
    )


async def test_embeddings_record_each_item_and_replay_names_the_missing_input(
    make_client: Any, redis_sync: redis.Redis, key_prefix: str
) -> None:
    recorder = await make_client(tenants=tenants("record"), models=EMB_MODELS)
    with provider_mock() as mock:
        mock.post(f"{UPSTREAM_BASE}/embeddings").mock(side_effect=embeddings)
        body = {"model": "emb", "input": ["red apple", "green pear"], "dimensions": 2}
        assert (await recorder.post("/v1/embeddings", json=body, headers=auth())).status_code == 200
    kept = [
        orjson.loads(redis_sync.get(k)[1:]) for k in redis_sync.scan_iter(match=f"{key_prefix}:v1:acme:req:*")
    ]
    assert sorted(kept, key=lambda r: r["input"]) == [
        {"dimensions": 2, "input": "green pear", "model": "emb"},
        {"dimensions": 2, "input": "red apple", "model": "emb"},
    ]
    assert keys_without_ttl(redis_sync, key_prefix) == []

    client = await make_client(tenants=tenants("replay"), models=EMB_MODELS)
    with provider_mock() as mock:
        hit = await client.post("/v1/embeddings", json=body, headers=auth())
        miss = await client.post(
            "/v1/embeddings",
            json={"model": "emb", "input": ["red apple", "red apples"], "dimensions": 2},
            headers=auth(),
        )
        assert not provider_calls(mock)
    assert hit.status_code == 200 and hit.headers["x-cache"] == "HIT"
    error = miss.json()["error"]
    assert miss.status_code == 404 and error["param"] == "input[1]"
    assert error["message"].startswith("No recorded answer for 1 of 2 inputs (input[1])")
    assert 'input: "red apple" -> "red apples"' in error["message"]


async def test_replay_with_redis_down_is_a_503_never_an_upstream_call(make_client: Any) -> None:
    client = await make_client(tenants=tenants("replay"), models=EMB_MODELS, url="redis://127.0.0.1:1/0")
    with provider_mock() as mock:
        generation = await client.post(CHAT, json=chat("Anything?"), headers=auth())
        items = await client.post("/v1/embeddings", json={"model": "emb", "input": "x"}, headers=auth())
        assert not provider_calls(mock)
    for response in (generation, items):
        assert response.status_code == 503
        assert "replay mode never calls the provider" in response.json()["error"]["message"]
