"""Everything one proxy process holds, built from a Config and a Redis URL.

No module-level clients: the app's lifespan builds a Runtime on startup and closes it on
shutdown, so tests and workers each get their own.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from dataclasses import dataclass

import redis.asyncio as aioredis

from proxy.cache import CacheStore
from proxy.config import Config
from proxy.flight import SingleFlight
from proxy.ratelimit import RateLimiter
from proxy.redis_conn import RedisGate, connect
from proxy.service import ChatService
from proxy.stats import StatsRecorder
from proxy.stats_report import StatsReport
from proxy.upstream import Upstreams, preload

log = logging.getLogger("llmcp")


@dataclass
class Runtime:
    config: Config
    redis: aioredis.Redis
    gate: RedisGate
    chat: ChatService
    limiter: RateLimiter
    stats: StatsRecorder
    report: StatsReport

    @classmethod
    def build(cls, config: Config, redis_url: str, upstreams: Upstreams | None = None) -> Runtime:
        client = connect(redis_url, config.redis)
        gate = RedisGate(client, config.redis.retry_after_ms, config.redis.breaker_failures)
        cache = CacheStore(gate, config.cache.max_entry_bytes, config.cache.compress_min_bytes)
        upstreams = upstreams or Upstreams(config.upstream.timeout_seconds)
        limiter = RateLimiter(gate, config)
        chat = ChatService(config, cache, upstreams, limiter, SingleFlight(gate, config))
        return cls(
            config, client, gate, chat, limiter, StatsRecorder(gate, config), StatsReport(gate, config)
        )

    async def start(self) -> None:
        self.stats.start()
        if not await self.gate.ping():
            log.warning("Redis is not reachable at startup; serving without cache until it is")
        if any(not m.is_demo for m in self.config.models):
            # Import litellm (~3 s) before accepting requests: importing it in the background
            # while serving holds the GIL long enough to stall the loop and time out Redis calls.
            await asyncio.get_running_loop().run_in_executor(None, preload)
        # Everything loaded so far (litellm alone is millions of objects) lives as long as the
        # process: keep it out of the garbage collector, whose full passes over it stalled the
        # event loop for ~100 ms (the hot-key p99).
        gc.collect()
        gc.freeze()

    async def close(self) -> None:
        await self.limiter.drain()
        await self.stats.stop()
        await self.chat.flight.close()
        await self.redis.aclose()
