"""A client that hangs up mid-stream (the stream is closed, or the task serving it is
cancelled): `upstream.on_client_disconnect: cancel` stops the provider call and caches
nothing; `finish` reads the answer to its end in the background and caches it. Either
way the reservation is settled and the single-flight lock released."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest
import redis

from proxy.core.apis.chat import ChatAdapter
from proxy.core.cache_controls import RequestMeta
from proxy.service.request import ProxyRequest
from proxy.service.runtime import Runtime
from proxy.stats.schema import RequestRecord
from proxy.upstream.demo import DemoUpstream
from proxy.upstream.selector import Upstreams
from tests.conftest import build_config, keys_without_ttl

pytestmark = pytest.mark.anyio
CHAT = "/v1/chat/completions"
LIMITS = {"requests_per_minute": 1000, "tokens_per_minute": 100_000}


async def runtime_with(redis_url: str, key_prefix: str, mode: str) -> Runtime:
    tenants = [{"name": "acme", "api_keys": ["sk-acme-test-key"], "limits": LIMITS}]
    config = build_config(key_prefix, upstream={"on_client_disconnect": mode}, tenants=tenants)
    slow = Upstreams(5, demo=DemoUpstream(latency_s=0, chunk_delay_s=0.05))
    runtime = Runtime.build(config, redis_url, slow)
    await runtime.start()
    return runtime


async def hang_up(runtime: Runtime, content: str, how: str) -> str:
    """Start a stream, read its first event, then leave; returns the cache key digest."""
    body = {"model": "demo", "messages": [{"role": "user", "content": content}], "stream": True}
    req = ProxyRequest(runtime.config.tenants[0], RequestMeta(), RequestRecord())
    reply = await runtime.pipeline.answer(ChatAdapter(), req, orjson.dumps(body))
    assert reply.stream is not None
    stream: Any = reply.stream
    await anext(stream)
    if how == "close":
        await stream.aclose()
    else:  # cancelled while waiting for the provider's next chunk
        reader = asyncio.ensure_future(anext(stream))
        await asyncio.sleep(0.01)
        reader.cancel()
        with pytest.raises(asyncio.CancelledError):
            await reader
        await stream.aclose()
    return req.digest


@pytest.mark.parametrize("how", ["close", "cancel"])
@pytest.mark.parametrize("mode", ["cancel", "finish"])
async def test_hang_up_mid_stream(
    redis_url: str, key_prefix: str, redis_sync: redis.Redis, mode: str, how: str
) -> None:
    runtime = await runtime_with(redis_url, key_prefix, mode)
    try:
        content = "one two three four five six seven eight nine ten"
        digest = await hang_up(runtime, content, how)
        entry = runtime.pipeline.stages.cache
        deadline = asyncio.get_running_loop().time() + 5
        while mode == "finish" and await entry.get(f"{key_prefix}:v1:acme:chat:{{{digest}}}") is None:
            assert asyncio.get_running_loop().time() < deadline, "the answer was never finished and cached"
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)  # a cancelled call would have finished by now if it were not stopped
        cached = await entry.get(f"{key_prefix}:v1:acme:chat:{{{digest}}}")
        if mode == "finish":
            assert (
                cached is not None
                and content in orjson.loads(cached.body)["choices"][0]["message"]["content"]
            )
        else:
            assert cached is None
        await runtime.limiter.drain()
        # The reservation (prompt + 1024 completion tokens) was settled to what was used.
        level = redis_sync.hget(f"{key_prefix}:v1:{{acme}}:rl:t:tokens", "level")
        assert level is not None and float(level) > LIMITS["tokens_per_minute"] - 100
        # The lock is released (its chunk stream lingers 30 s for late followers, by design).
        assert not redis_sync.keys(f"{key_prefix}:v1:*:flight:*[0-9a-f]")
        assert keys_without_ttl(redis_sync, key_prefix) == []
    finally:
        await runtime.close()
