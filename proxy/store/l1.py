"""An optional in-process L1 cache in front of Redis, coherent across replicas.

A least-recently-used map of entries, bounded by bytes: the cache keeps them decoded
(`proxy.store.cache.Entry`, immutable), so an L1 hit neither parses nor decompresses. Entries expire with
their Redis TTL (read with the value, in the same round trip) and after `max_age_ms` at
the latest, which bounds what Redis does silently (eviction under maxmemory). Every
write of a cache entry publishes its key on `<prefix>:v1:l1` (pipelined with the SET, so
no extra round trip) and every purge publishes its namespace; each process subscribes
and drops what changed, so an overwrite or purge in one replica reaches all of them
within milliseconds. While the subscription is down the L1 is not used at all: without
invalidations it could serve stale answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from typing import Any

import redis.asyncio as aioredis

from proxy.core.keys import KEY_VERSION
from proxy.store.connection import FAILURES, pubsub

log = logging.getLogger("llmcp.l1")
_PER_ENTRY_OVERHEAD = 200  # dict slot, key string, tuple: counted against max_bytes


def l1_channel(prefix: str) -> str:
    return f"{prefix}:{KEY_VERSION}:l1"


class L1Cache:
    def __init__(self, max_bytes: int, max_age_ms: int) -> None:
        self.max_bytes = max_bytes
        self._max_age = max_age_ms / 1000
        # key -> (value, expires at (monotonic), its cost against max_bytes)
        self._items: OrderedDict[str, tuple[Any, float, int]] = OrderedDict()
        self.size = 0
        self.coherent = False  # only used while subscribed to invalidations

    def get(self, key: str) -> Any:
        if not self.coherent:
            return None
        item = self._items.get(key)
        if item is None:
            return None
        value, expires, _ = item
        if time.monotonic() >= expires:
            self._drop(key)
            return None
        self._items.move_to_end(key)
        return value

    def put(self, key: str, value: Any, ttl_s: float, size: int | None = None) -> None:
        """Keep `value` (never changed once put) for at most `ttl_s`; `size` is what it
        counts against max_bytes (its stored size; `len(value)` by default)."""
        if not self.coherent or ttl_s <= 0:
            return
        cost = (len(value) if size is None else size) + len(key) + _PER_ENTRY_OVERHEAD
        if cost > self.max_bytes // 8:
            return  # one entry may not take a large share of the L1
        self._drop(key)
        self._items[key] = (value, time.monotonic() + min(ttl_s, self._max_age), cost)
        self.size += cost
        while self.size > self.max_bytes and self._items:
            self._drop(next(iter(self._items)))

    def _drop(self, key: str) -> None:
        item = self._items.pop(key, None)
        if item is not None:
            self.size -= item[2]

    def invalidate(self, message: str) -> None:
        """`k <key>` drops one entry, `p <key prefix>` every entry under it, `*` all."""
        kind, _, arg = message.partition(" ")
        if kind == "k":
            self._drop(arg)
        elif kind == "p":
            for key in [k for k in self._items if k.startswith(arg)]:
                self._drop(key)
        else:
            self.clear()

    def clear(self) -> None:
        self._items.clear()
        self.size = 0


class L1Subscriber:
    """Keeps one subscription per process and applies invalidations to the L1."""

    def __init__(self, l1: L1Cache, client: aioredis.Redis, prefix: str) -> None:
        self._l1 = l1
        self._client = client
        self._channel = l1_channel(prefix)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            subscription = None
            try:
                subscription = await pubsub(self._client)
                await subscription.subscribe(self._channel)
                self._l1.coherent = True
                async for message in subscription.listen():
                    if message.get("type") == "message":
                        self._l1.invalidate(message["data"].decode())
            except FAILURES as exc:
                log.warning("L1 invalidation subscription lost (%s); L1 off until it is back", exc)
            finally:
                self._l1.coherent = False
                self._l1.clear()
                if subscription is not None:
                    with contextlib.suppress(*FAILURES):
                        await subscription.aclose()
            await asyncio.sleep(1.0)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._client.aclose()
