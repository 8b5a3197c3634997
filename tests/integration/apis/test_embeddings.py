"""POST /v1/embeddings: cached per input item, one stored vector for float and base64."""

from __future__ import annotations

import base64
import hashlib
import struct
from typing import Any

import httpx
import orjson
import pytest
import redis

from tests.conftest import UPSTREAM_BASE, auth, keys_without_ttl, provider_mock

pytestmark = pytest.mark.anyio
EMB = "/v1/embeddings"
URL = f"{UPSTREAM_BASE}/embeddings"
MODELS = [
    {
        "name": "emb",
        "litellm_model": "openai/text-embedding-3-small",
        "api_base": UPSTREAM_BASE,
        "api_key": "sk-upstream-secret",
        "max_input_tokens": 50,
        "embedding_batch_size": 4,
    }
]
DIMS = 6


def vector_for(item: object) -> list[float]:
    """What the mocked provider answers for an input: deterministic, full float64 precision."""
    digest = hashlib.sha256(repr(item).encode()).digest()
    return [(b - 127.5) / 127.3 for b in digest[:DIMS]]


def float32(values: list[float]) -> list[float]:
    return list(struct.unpack(f"<{len(values)}f", struct.pack(f"<{len(values)}f", *values)))


def provider(request: httpx.Request) -> httpx.Response:
    body = orjson.loads(request.content)
    inputs = body["input"]
    data = [{"object": "embedding", "index": i, "embedding": vector_for(x)} for i, x in enumerate(inputs)]
    tokens = 3 * len(inputs)
    return httpx.Response(
        200,
        json={
            "object": "list",
            "data": data,
            "model": "text-embedding-3-small",
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        },
    )


@pytest.fixture
def upstream() -> Any:
    # Each test asserts its own call count (the bad-input ones: zero).
    with provider_mock(assert_all_called=False) as mock:
        yield mock.post(URL).mock(side_effect=provider)


def texts(n: int, start: int = 0) -> list[str]:
    return [f"document number {i}" for i in range(start, start + n)]


async def test_partial_hit_sends_only_the_missing_items_in_order(make_client: Any, upstream: Any) -> None:
    client = await make_client(
        models=[*MODELS, {**MODELS[0], "name": "emb-big", "embedding_batch_size": 2048}]
    )
    first = await client.post(EMB, json={"model": "emb-big", "input": texts(90)}, headers=auth())
    assert first.headers["x-cache"] == "MISS" and first.headers["x-cache-hits"] == "0/90"
    assert upstream.call_count == 1
    second = await client.post(EMB, json={"model": "emb-big", "input": texts(100)}, headers=auth())
    assert second.headers["x-cache"] == "PARTIAL" and second.headers["x-cache-hits"] == "90/100"
    assert upstream.call_count == 2
    assert orjson.loads(upstream.calls.last.request.content)["input"] == texts(10, start=90)
    body = second.json()
    assert [d["index"] for d in body["data"]] == list(range(100))
    assert [d["embedding"] for d in body["data"]] == [float32(vector_for(t)) for t in texts(100)]
    assert body["usage"] == {"prompt_tokens": 30, "total_tokens": 30}  # only the 10 sent upstream
    third = await client.post(EMB, json={"model": "emb-big", "input": texts(100)}, headers=auth())
    assert third.headers["x-cache"] == "HIT" and third.json()["usage"]["prompt_tokens"] == 0
    assert upstream.call_count == 2


async def test_float_and_base64_from_one_stored_vector(make_client: Any, upstream: Any) -> None:
    client = await make_client(models=MODELS)
    floats = (await client.post(EMB, json={"model": "emb", "input": "hello"}, headers=auth())).json()
    b64 = await client.post(
        EMB, json={"model": "emb", "input": "hello", "encoding_format": "base64"}, headers=auth()
    )
    assert b64.headers["x-cache"] == "HIT"
    assert upstream.call_count == 1
    raw = base64.b64decode(b64.json()["data"][0]["embedding"])
    # What a direct call gives: OpenAI's base64 is little-endian float32, its floats are float32 values.
    assert raw == struct.pack(f"<{DIMS}f", *vector_for("hello"))
    assert floats["data"][0]["embedding"] == float32(vector_for("hello"))
    assert list(struct.unpack(f"<{DIMS}f", raw)) == floats["data"][0]["embedding"]


async def test_batches_past_the_provider_limit_are_split(make_client: Any, upstream: Any) -> None:
    client = await make_client(models=MODELS)  # embedding_batch_size 4
    response = await client.post(EMB, json={"model": "emb", "input": texts(10)}, headers=auth())
    assert response.status_code == 200
    assert upstream.call_count == 3
    sent = [orjson.loads(c.request.content)["input"] for c in upstream.calls]
    assert sent == [texts(4), texts(4, 4), texts(2, 8)]
    assert [d["embedding"] for d in response.json()["data"]] == [float32(vector_for(t)) for t in texts(10)]


async def test_token_arrays_dimensions_and_tenants_key_separately(make_client: Any, upstream: Any) -> None:
    client = await make_client(models=MODELS)
    tokens = {"model": "emb", "input": [[1, 2, 3], [4, 5]]}
    assert (await client.post(EMB, json=tokens, headers=auth())).headers["x-cache"] == "MISS"
    assert (await client.post(EMB, json=tokens, headers=auth())).headers["x-cache"] == "HIT"
    single = await client.post(EMB, json={"model": "emb", "input": [7, 8, 9]}, headers=auth())
    assert single.status_code == 200 and len(single.json()["data"]) == 1
    text = {"model": "emb", "input": "same text"}
    await client.post(EMB, json=text, headers=auth())
    assert (await client.post(EMB, json={**text, "dimensions": 4}, headers=auth())).headers[
        "x-cache"
    ] == "MISS"
    assert (await client.post(EMB, json=text, headers=auth("globex"))).headers["x-cache"] == "MISS"
    assert orjson.loads(upstream.calls.last.request.content).get("dimensions") is None


@pytest.mark.parametrize(
    "body, param",
    [
        ({"model": "emb", "input": []}, "input"),
        ({"model": "emb", "input": ""}, "input[0]"),
        ({"model": "emb", "input": ["a", ""]}, "input[1]"),
        ({"model": "emb", "input": ["a", 1]}, "input"),
        ({"model": "emb", "input": [[1], "a"]}, "input"),
        ({"model": "emb"}, "input"),
        ({"model": "emb", "input": "a", "encoding_format": "hex"}, "encoding_format"),
        ({"model": "emb", "input": "a", "dimensions": 0}, "dimensions"),
        ({"model": "emb", "input": ["ok", "word " * 80]}, "input[1]"),  # over max_input_tokens (50)
        ({"input": "a"}, "model"),
    ],
)
async def test_bad_input(make_client: Any, upstream: Any, body: dict[str, Any], param: str) -> None:
    client = await make_client(models=MODELS)
    response = await client.post(EMB, json=body, headers=auth())
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param
    assert upstream.call_count == 0


async def test_unknown_model_and_auth(make_client: Any, upstream: Any) -> None:
    client = await make_client(models=MODELS)
    assert (await client.post(EMB, json={"model": "nope", "input": "a"}, headers=auth())).status_code == 404
    assert (await client.post(EMB, json={"model": "emb", "input": "a"})).status_code == 401


async def test_upstream_failure_is_not_cached(make_client: Any, upstream: Any) -> None:
    client = await make_client(models=MODELS)
    upstream.mock(return_value=httpx.Response(500, json={"error": {"message": "down"}}))
    assert (await client.post(EMB, json={"model": "emb", "input": "x"}, headers=auth())).status_code == 502
    upstream.mock(side_effect=provider)
    assert (await client.post(EMB, json={"model": "emb", "input": "x"}, headers=auth())).headers[
        "x-cache"
    ] == "MISS"


async def test_keys_have_ttls_and_saved_tokens_count(
    make_client: Any, upstream: Any, redis_sync: redis.Redis, key_prefix: str
) -> None:
    client = await make_client(models=MODELS)
    await client.post(EMB, json={"model": "emb", "input": texts(3)}, headers=auth())
    await client.post(EMB, json={"model": "emb", "input": texts(5)}, headers=auth())
    assert len(list(redis_sync.scan_iter(match=f"{key_prefix}:v1:acme:emb:*"))) == 5
    report = (await client.get("/stats", headers=auth("admin"))).json()
    figures = report["windows"]["all"]["tenants"]["acme"]["models"]["emb"]
    assert figures["tokens_saved"]["prompt"] > 0  # the 3 items served from cache on the partial hit
    assert keys_without_ttl(redis_sync, key_prefix) == []


async def test_purge_removes_embeddings_too(
    make_client: Any, upstream: Any, redis_sync: redis.Redis, key_prefix: str
) -> None:
    client = await make_client(models=MODELS)
    await client.post(EMB, json={"model": "emb", "input": texts(3)}, headers=auth())
    await client.post(EMB, json={"model": "emb", "input": texts(2)}, headers=auth("globex"))
    purged = await client.delete("/admin/cache?tenant=acme", headers=auth("admin"))
    assert purged.json()["deleted"] == 3
    assert not list(redis_sync.scan_iter(match=f"{key_prefix}:v1:acme:emb:*"))
    assert len(list(redis_sync.scan_iter(match=f"{key_prefix}:v1:globex:emb:*"))) == 2
