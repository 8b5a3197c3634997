"""The request memo (`proxy.service.request_memo`) changes no answer: two live apps, one
with the memo and one remembering nothing, get the same requests in the same order (valid
and invalid bodies, every cache header, stream or not, tenants in normal, record and
replay mode, one limiting its hits) and must answer each with the same status, headers and
body. Each body goes to every endpoint, three times, on each app, so the memo's second and third answers
come from it. Real Redis, the built-in demo model (no delay); each app under a key prefix
of its own, so both caches go through the same states."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.http.app import create_app
from proxy.service.pipeline import Pipeline
from proxy.service.request_memo import RequestMemo
from proxy.upstream.demo import DemoUpstream
from proxy.upstream.selector import Upstreams
from tests.conftest import build_config

KEYS = {
    "normal": "sk-memo-normal",
    "record": "sk-memo-record",
    "replay": "sk-memo-replay",
    "hits": "sk-memo-hits",
}
PATHS = ["/v1/chat/completions", "/v1/completions", "/v1/responses"]


def _config(prefix: str) -> Any:
    tenants = [
        {"name": "normal", "api_keys": [KEYS["normal"]]},
        {"name": "record", "api_keys": [KEYS["record"]], "cache_mode": "record"},
        {"name": "replay", "api_keys": [KEYS["replay"]], "cache_mode": "replay"},
        {
            "name": "hits",
            "api_keys": [KEYS["hits"]],
            "limit_cache_hits": True,
            "limits": {"requests_per_minute": 1_000_000, "per_user": {"requests_per_minute": 1_000_000}},
        },
    ]
    models = [
        {"name": "demo", "litellm_model": "demo/echo"},
        {"name": "demo-short", "litellm_model": "demo/echo", "cache_ttl_seconds": 60},
    ]
    return build_config(prefix, models=models, tenants=tenants)


@pytest.fixture(scope="module")
def apps(redis_url: str, redis_sync: Any) -> Iterator[tuple[Any, Any]]:
    from starlette.testclient import TestClient

    prefixes = [f"llmcpmemo{uuid.uuid4().hex[:10]}" for _ in range(2)]
    built = [
        create_app(_config(p), redis_url, Upstreams(5, demo=DemoUpstream(latency_s=0, chunk_delay_s=0)))
        for p in prefixes
    ]
    with TestClient(built[0]) as with_memo, TestClient(built[1]) as without:
        runtime = built[1].state.runtime
        runtime.pipeline = Pipeline(runtime.pipeline.stages, RequestMemo(0))
        assert len(built[0].state.runtime.pipeline._memo) == 0
        yield with_memo, without
    for prefix in prefixes:
        keys = list(redis_sync.scan_iter(match=f"{prefix}:*", count=1000))
        if keys:
            redis_sync.unlink(*keys)


TEXT = st.sampled_from(["hi", "Hello!", "hello", " hi ", "Ω", ""])
MESSAGE = st.fixed_dictionaries(
    {
        "role": st.sampled_from(["user", "system", "robot"]),
        "content": TEXT | st.just([{"type": "text", "text": "hi"}]),
    }
)
OPTIONAL = {
    "stream": st.booleans() | st.just("yes"),
    "temperature": st.sampled_from([0, 0.5, 1, 1.0, -3, "hot"]),
    "n": st.sampled_from([1, 2]),
    "user": st.sampled_from(["u1", "u2", 7]),
    "stop": st.sampled_from(["x", ["x"], []]),
    "store": st.booleans(),
    "stream_options": st.sampled_from([{"include_usage": True}, {"include_usage": False}, None]),
    "max_tokens": st.sampled_from([5, 0, None]),
}
BODY = st.fixed_dictionaries(
    {
        "model": st.sampled_from(["demo", "demo-short", "nope", 3]),
        "messages": st.lists(MESSAGE, max_size=2),
        "prompt": TEXT,
        "input": TEXT,
    },
    optional=OPTIONAL,
).map(orjson.dumps)
RAW = st.sampled_from([b"", b"{", b"[]", b'{"model": "demo"}', b"[" * 80 + b"]" * 80])
HEADERS = st.fixed_dictionaries(
    {},
    optional={
        "cache-control": st.sampled_from(
            ["no-cache", "no-store", "no-cache, no-store", "max-age=0", "NO-STORE"]
        ),
        "x-cache-ttl": st.sampled_from(["0", "5", "10000000", "-1", "soon"]),
        "x-end-user": st.sampled_from(["alice", "bob"]),
    },
)


def _comparable(response: Any) -> tuple[int, dict[str, str], Any]:
    """Status, headers and body, less what the demo model makes from the clock (`id`,
    `item_id`, `created`, `created_at`, fresh on every upstream call) and `Age`."""
    headers = {k: v for k, v in response.headers.items() if k != "age"}
    raw = response.content
    if headers.get("content-type", "").startswith("text/event-stream"):
        return response.status_code, headers, [_unclocked(e) for e in raw.split(b"\n\n") if e]
    return response.status_code, headers, _unclocked(raw)


def _unclocked(raw: bytes) -> Any:
    head, _, data = raw.rpartition(b"data: ")
    try:
        return head, _without(orjson.loads(data))
    except orjson.JSONDecodeError:
        return raw


def _without(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            k: _without(v) for k, v in value.items() if k not in ("id", "item_id", "created", "created_at")
        }
    if isinstance(value, list):
        return [_without(v) for v in value]
    return value


@settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    tenant=st.sampled_from(list(KEYS)),
    body=BODY | RAW,
    headers=HEADERS,
)
def test_same_answers_with_and_without_the_memo(
    apps: tuple[Any, Any], tenant: str, body: bytes, headers: dict[str, str]
) -> None:
    with_memo, without = apps
    sent = {
        **headers,
        "authorization": f"Bearer {KEYS[tenant]}",
        "content-type": "application/json",
        "x-request-id": "memo-test",
    }
    for path in [*PATHS, *PATHS, *PATHS]:  # the same bytes to every endpoint, three times
        expected = _comparable(without.post(path, content=body, headers=sent))
        assert _comparable(with_memo.post(path, content=body, headers=sent)) == expected


def test_the_memo_is_bounded_by_bytes() -> None:
    from proxy.core.cache_controls import RequestMeta

    memo = RequestMemo(64 * 1024)
    keyed: Any = object()
    for i in range(2000):
        memo.put((None, "t", RequestMeta(), b"x" * 500 + str(i).encode()), keyed)
    assert memo.size <= 64 * 1024 and 0 < len(memo) < 2000
    assert memo.get((None, "t", RequestMeta(), b"x" * 500 + b"1999")) is keyed  # newest kept
    assert memo.get((None, "t", RequestMeta(), b"x" * 500 + b"0")) is None  # oldest went first
    memo.put((None, "t", RequestMeta(), b"y" * 2000), keyed)  # over 1/64 of the bound: left out
    assert memo.get((None, "t", RequestMeta(), b"y" * 2000)) is None
