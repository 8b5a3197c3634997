"""How many Redis round trips a request makes, counted at the one gate every Redis call
goes through: a hit one, a miss (non-stream or stream) three."""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import orjson
import pytest
import redis

from proxy.store.flight import flight_lock
from tests.conftest import (
    UPSTREAM_BASE,
    asgi_post,
    auth,
    cache_keys,
    openai_completion,
    openai_sse,
    provider_mock,
)

pytestmark = pytest.mark.anyio
CHAT = "/v1/chat/completions"
GATE_FILE = "proxy/store/connection.py"


def count_round_trips(client: httpx.AsyncClient) -> list[str]:
    """Every call through the app's RedisGate (its breaker, which every call passes: `run`,
    and `command`, `commands` and `script` on the lane), by the name of the function outside
    the gate that made it."""
    gate = client._transport.app.state.runtime.gate  # type: ignore[attr-defined]
    calls: list[str] = []
    guarded = gate._guarded

    async def counted(call: Callable[[], Awaitable[Any]], limit: float | None = None) -> Any:
        frame = sys._getframe(1)
        while frame.f_back is not None and frame.f_code.co_filename.endswith(GATE_FILE):
            frame = frame.f_back
        calls.append(frame.f_code.co_qualname)
        return await guarded(call, limit)

    gate._guarded = counted
    return calls


@pytest.mark.parametrize("stream", [False, True])
async def test_a_miss_makes_three_round_trips_and_a_hit_one(make_client: Any, stream: bool) -> None:
    client = await make_client()
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"count {stream}"}]}
    with provider_mock() as mock:
        if stream:
            sse = openai_sse(["a", "b", "c"])
            reply = httpx.Response(200, content=sse, headers={"content-type": "text/event-stream"})
        else:
            reply = httpx.Response(200, json=openai_completion("counted"))
        mock.post(f"{UPSTREAM_BASE}/chat/completions").mock(return_value=reply)
        calls = count_round_trips(client)
        miss = await client.post(CHAT, json={**body, "stream": stream}, headers=auth())
        assert miss.headers["x-cache"] == "MISS"
        # The lookup; the flight lock taken in the same script that looks again; the answer
        # stored in the same script that releases the flight. Chunks shared with followers
        # are written off the client's path (none here before the first).
        sequential = [c for c in calls if "write_queued" not in c]
        assert len(sequential) == 3, calls
        calls.clear()
        hit = await client.post(CHAT, json={**body, "stream": stream}, headers=auth())
        assert hit.headers["x-cache"] == "HIT" and len(calls) == 1, calls


async def test_a_miss_is_answered_before_its_store_round_trip(
    make_client: Any, redis_sync: redis.Redis, key_prefix: str
) -> None:
    """The client gets the answer after two round trips (lookup, flight); storing it and
    releasing the flight come after the answer went out, and before the request ends."""
    client = await make_client()
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "store after sending"}]}
    seen_when_answered: list[tuple[int, list[bytes]]] = []
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": orjson.dumps(body), "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)
        if message["type"] == "http.response.body":
            seen_when_answered.append((len(calls), cache_keys(redis_sync, key_prefix)))

    # (Driven as raw ASGI: respx's pass-through route for the app goes unused.)
    with provider_mock(assert_all_called=False) as mock:
        route = mock.post(f"{UPSTREAM_BASE}/chat/completions")
        route.mock(return_value=httpx.Response(200, json=openai_completion("sent first")))
        calls = count_round_trips(client)
        await client._transport.app(asgi_post(CHAT, auth()), receive, send)  # type: ignore[attr-defined]
    assert (
        sent[0]["status"] == 200
        and orjson.loads(sent[1]["body"])["choices"][0]["message"]["content"] == "sent first"
    )
    assert seen_when_answered == [(2, [])], (seen_when_answered, calls)  # not stored yet
    assert len(calls) == 3, calls  # ...and stored (the flight released) before the request ended
    digest = dict(sent[0]["headers"])[b"x-cache-key"].decode()
    assert len(cache_keys(redis_sync, key_prefix)) == 1
    assert redis_sync.exists(flight_lock(key_prefix, "acme", digest)) == 0
    again = await client.post(CHAT, json=body, headers=auth())
    assert (
        again.headers["x-cache"] == "HIT" and again.json()["choices"][0]["message"]["content"] == "sent first"
    )
