"""The Redis connection: bounded timeouts, and a breaker that stops paying them.

Every Redis call the proxy makes goes through `RedisGate.run`, which turns any Redis or
socket failure into `StoreUnavailable` (the caller degrades: cache BYPASS, limiter open or
closed). After a failure the gate stays shut for `retry_after_ms`, so while Redis is down
requests skip it at once instead of each waiting for a connect timeout; the first request
after that probes it, and the proxy recovers by itself when Redis is back.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from proxy.config import RedisConfig
from proxy.errors import StoreUnavailable

log = logging.getLogger("llmcp.redis")
T = TypeVar("T")

FAILURES = (RedisError, OSError, asyncio.TimeoutError)


def connect(url: str, cfg: RedisConfig) -> aioredis.Redis:
    """A client with bounded timeouts. The plain pool (not BlockingConnectionPool, whose
    per-checkout condition wait costs ~5% of a hit): past max_connections a call fails at
    once with "Too many connections", which bypasses the cache for that request only."""
    pool = aioredis.ConnectionPool.from_url(
        url,
        max_connections=cfg.max_connections,
        socket_timeout=cfg.timeout_ms / 1000,
        socket_connect_timeout=cfg.connect_timeout_ms / 1000,
        health_check_interval=30,
        # No retries: a failure opens the breaker instead; retrying only multiplies timeouts.
        retry=Retry(NoBackoff(), 0),
    )
    return aioredis.Redis.from_pool(pool)  # owns the pool: aclose() closes its connections


def blocking_client(
    client: aioredis.Redis, read_timeout_s: float | None, max_connections: int
) -> aioredis.Redis:
    """A second client to the same server for blocking reads (XREAD BLOCK, pub/sub): the
    hot path's short socket timeout would cut those off and open the breaker for everyone."""
    pool = client.connection_pool
    kwargs = {**pool.connection_kwargs, "socket_timeout": read_timeout_s}
    blocking = aioredis.ConnectionPool(
        connection_class=pool.connection_class, max_connections=max_connections, **kwargs
    )
    return aioredis.Redis.from_pool(blocking)


def _is_pool_exhausted(exc: BaseException) -> bool:
    return isinstance(exc, RedisConnectionError) and "Too many connections" in str(exc)


def _is_timeout(exc: BaseException) -> bool:
    return isinstance(exc, RedisTimeoutError | asyncio.TimeoutError)


def _opens_breaker(exc: BaseException, timeouts_in_a_row: int, threshold: int) -> bool:
    """Down (refused, reset): open now. Slow: open after `threshold` timeouts in a row.
    Busy (our own pool is full): never."""
    if _is_pool_exhausted(exc):
        return False
    if _is_timeout(exc):
        return timeouts_in_a_row >= threshold
    return True


class RedisGate:
    """Runs Redis calls; remembers failure for a moment so the next calls fail fast."""

    def __init__(self, client: aioredis.Redis, retry_after_ms: int, breaker_failures: int = 3) -> None:
        self.client = client
        self._retry_after = retry_after_ms / 1000
        self._threshold = breaker_failures
        self._timeouts_in_a_row = 0
        self._down_until = 0.0
        self._down_since: float | None = None

    async def run(self, call: Callable[[aioredis.Redis], Awaitable[T]], timeout_s: float | None = None) -> T:
        """Run one call; `timeout_s` overrides the per-call ceiling (admin scans take longer)."""
        if self._down_since is not None and time.monotonic() < self._down_until:
            raise StoreUnavailable("Redis is unavailable (circuit open)")
        try:
            if timeout_s is None:
                # Bounded already: connect, pool wait and every read have their own timeouts.
                result = await call(self.client)
            else:
                async with asyncio.timeout(timeout_s):
                    result = await call(self.client)
        except FAILURES as exc:
            if _opens_breaker(exc, self._timeouts_in_a_row + 1, self._threshold):
                self._failed(exc)
            elif _is_timeout(exc):
                self._timeouts_in_a_row += 1
            raise StoreUnavailable(f"Redis call failed: {type(exc).__name__}: {exc}") from exc
        self._timeouts_in_a_row = 0
        if self._down_since is not None:
            log.warning("Redis is reachable again after %.1fs", time.monotonic() - self._down_since)
            self._down_since = None
        return result

    def _failed(self, exc: BaseException) -> None:
        self._timeouts_in_a_row = 0
        now = time.monotonic()
        if self._down_since is None:
            self._down_since = now
            log.warning(
                "Redis failed (%s: %s); serving without cache, retrying every %.1fs",
                type(exc).__name__,
                exc,
                self._retry_after,
            )
        self._down_until = now + self._retry_after

    async def ping(self) -> bool:
        """Readiness: reach Redis now, ignoring the breaker (it is a probe too)."""
        self._down_until = 0.0
        try:
            await self.run(lambda r: r.ping())
        except StoreUnavailable:
            return False
        return True
