"""Two replicas with an L1 each, sharing one Redis: overwrites and purges reach both."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
import redis

from tests.conftest import UPSTREAM_BASE, auth, cache_keys, eventually, openai_completion, provider_mock

pytestmark = pytest.mark.anyio
CHAT = "/v1/chat/completions"
URL = f"{UPSTREAM_BASE}/chat/completions"
ASK = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "cached in two places"}]}
L1 = {"l1": {"enabled": True, "max_bytes": 8 * 1024 * 1024}}


def answer(text: str) -> httpx.Response:
    return httpx.Response(200, json=openai_completion(text))


async def content(client: httpx.AsyncClient, **headers: str) -> tuple[str, str]:
    response = await client.post(CHAT, json=ASK, headers={**auth(), **headers})
    return response.headers["x-cache"], response.json()["choices"][0]["message"]["content"]


async def test_l1_serves_and_stays_coherent(
    make_client: Any, redis_sync: redis.Redis, key_prefix: str
) -> None:
    a = await make_client(cache=L1)
    b = await make_client(cache=L1)
    await asyncio.sleep(0.2)  # both subscribed
    with provider_mock() as mock:
        route = mock.post(URL).mock(return_value=answer("first"))
        assert await content(a) == ("MISS", "first")
        assert await content(b) == ("HIT", "first")  # from Redis, now in b's L1

        # Remove the entry behind the proxies' backs (no announcement, like an eviction):
        # b still answers from its L1, which proves the L1 serves.
        [key] = cache_keys(redis_sync, key_prefix)
        redis_sync.delete(key)
        assert await content(b) == ("HIT", "first")

        # An overwrite in a (no-cache fetches and stores anew) reaches b's L1 at once.
        route.mock(return_value=answer("second"))
        assert await content(a, **{"Cache-Control": "no-cache"}) == ("BYPASS", "second")

        async def b_sees_second() -> bool:
            return await content(b) == ("HIT", "second")

        await eventually(b_sees_second)

        # A purge through a reaches b's L1 too: b misses and fetches again.
        purged = await a.delete("/admin/cache?tenant=acme", headers=auth("admin"))
        assert purged.json()["deleted"] == 1
        route.mock(return_value=answer("third"))

        async def b_misses() -> bool:
            status, text = await content(b)
            return status == "MISS" and text == "third"

        await eventually(b_misses)
