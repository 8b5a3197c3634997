"""Everything one proxy process holds, built from a Config and a Redis URL.

No module-level clients: the app's lifespan builds a Runtime on startup and closes it on
shutdown, so tests and workers each get their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
from dataclasses import dataclass
from typing import Any

from proxy.config import Config, load_config
from proxy.core.budgets import usd
from proxy.errors import ConfigError, StoreUnavailable
from proxy.service.config_watch import ConfigWatcher, file_digest
from proxy.service.pipeline import Pipeline
from proxy.service.stages import Stages
from proxy.service.tracing import Tracing
from proxy.stats.recorder import StatsRecorder
from proxy.stats.report import StatsReport
from proxy.store.cache import CacheStore
from proxy.store.connection import RedisGate, blocking_client, connect, lane_for
from proxy.store.flight import SingleFlight
from proxy.store.l1 import L1Cache, L1Subscriber, l1_channel
from proxy.store.ratelimit import RateLimiter
from proxy.store.review import ReviewQueue
from proxy.upstream.selector import Upstreams

log = logging.getLogger("llmcp")
_DRAIN_S = 10.0  # at shutdown, the longest wait for background streams, then for settlements
_DRAIN_CHECK_S = 0.25  # while settlements are still in flight, how often Redis is probed
_GC_THRESHOLDS = (20_000, 50, 100)  # the collector's generations: allocations, then collections


@dataclass
class Runtime:
    config: Config
    gate: RedisGate  # the Redis client, behind its breaker
    upstreams: Upstreams
    flight: SingleFlight
    pipeline: Pipeline  # every cached endpoint
    limiter: RateLimiter
    stats: StatsRecorder
    report: StatsReport
    review: ReviewQueue
    l1: L1Subscriber | None = None
    l1_cache: L1Cache | None = None
    config_path: str | None = None
    watcher: ConfigWatcher | None = None
    tracing: Tracing | None = None  # None unless tracing.enabled

    @classmethod
    def build(
        cls,
        config: Config,
        redis_url: str,
        upstreams: Upstreams | None = None,
        config_path: str | None = None,
        tracing: Tracing | None = None,
    ) -> Runtime:
        """`tracing` replaces the one tracing.enabled builds from the OTEL_* environment (tests
        pass one with an in-memory exporter)."""
        gate = RedisGate(
            connect(redis_url, config.redis),
            config.redis.retry_after_ms,
            config.redis.breaker_failures,
            timeout_s=config.redis.timeout_ms / 1000,
            lane=lane_for(redis_url, config.redis),
        )
        l1 = None
        if config.cache.l1.enabled:
            l1 = L1Cache(config.cache.l1.max_bytes, config.cache.l1.max_age_ms)
        # Stores always announce their key: other replicas may run an L1 even if this one does not.
        channel = l1_channel(config.redis.key_prefix)
        cache = CacheStore(gate, config.cache.max_entry_bytes, config.cache.compress_min_bytes, l1, channel)
        upstreams = upstreams or Upstreams(config.upstream.timeout_seconds)
        stats, report = StatsRecorder(gate, config), StatsReport(gate, config)
        limiter = RateLimiter(gate, config, on_alert=stats.budget_alert)
        review = ReviewQueue(gate, config)
        flight = SingleFlight(gate, config)
        pipeline = Pipeline(Stages(config, cache, upstreams, limiter, flight, review))
        subscriber = None
        if l1 is not None:
            # Subscriptions idle for long: a connection of their own, with no read timeout.
            subscriber = L1Subscriber(l1, blocking_client(gate.client, None, 2), config.redis.key_prefix)
        tracing = tracing or Tracing.build(config, os.environ)
        return cls(
            config,
            gate,
            upstreams,
            flight,
            pipeline,
            limiter,
            stats,
            report,
            review,
            subscriber,
            l1,
            config_path,
            tracing=tracing,
        )

    def reload(self, new: Config) -> None:
        """Put a new config in force without dropping a request: requests in flight finish
        with the objects they hold; new ones get new ones. Tenants, keys, quotas, TTLs, models
        and prices change; redis, server, upstream, stats, single_flight and cache.l1 settings
        need a restart."""
        # Held by long-lived objects (connections, flusher, flights, HTTP clients): a reload
        # cannot change them, so it refuses rather than ignore them silently.
        for section in ("redis", "server", "upstream", "stats", "single_flight", "tracing"):
            if getattr(new, section) != getattr(self.config, section):
                raise ConfigError(f"{section}.* changed: restart the proxy for that (nothing was reloaded)")
        if new.cache.l1 != self.config.cache.l1:
            raise ConfigError("cache.l1 changed: restart the proxy for that (nothing was reloaded)")
        cache = CacheStore(
            self.gate,
            new.cache.max_entry_bytes,
            new.cache.compress_min_bytes,
            self.l1_cache,
            l1_channel(new.redis.key_prefix),
        )
        limiter = self.limiter.renewed(new)
        self.review = ReviewQueue(self.gate, new)
        self.pipeline = Pipeline(Stages(new, cache, self.upstreams, limiter, self.flight, self.review))
        self.limiter, self.report, self.config = limiter, StatsReport(self.gate, new), new
        if any(m.via_litellm for m in new.models):
            self.upstreams.load_litellm()

    def reload_from_file(self) -> Config:
        """Re-read the config file; on any error the running config stays and ConfigError says why."""
        if self.config_path is None:
            raise ConfigError("this process was not started from a config file")
        if self.watcher is not None:  # this version is being tried now: the watch skips it
            self.watcher.seen = file_digest(self.config_path)
        try:
            new = load_config(self.config_path, os.environ)
            self.reload(new)
        except ConfigError as exc:
            log.error("config reload rejected, the running config stays in force: %s", exc)
            raise
        log.warning(
            "config reloaded from %s: %d models, %d tenants",
            self.config_path,
            len(new.models),
            len(new.tenants),
        )
        return new

    async def budget_status(self, tenants: list[str]) -> dict[str, Any]:
        """Each budgeted tenant's spend (settled and reserved) against its budgets in the
        current UTC day and month, for /stats and the page. End users' budgets are not
        listed (there may be millions)."""
        out: dict[str, Any] = {}
        for name in tenants:
            tenant = self.config.tenant_index.get(name)
            if tenant is None or tenant.budget is None:
                continue
            budgets = self.limiter.plan_budgets(tenant, None)
            try:
                spent = await self.limiter.read_spent(budgets)
            except StoreUnavailable:
                continue
            out[name] = {
                b.window: {
                    "limit_usd": float(usd(b.limit)),
                    "spent_usd": float(usd(value)),
                    "remaining_usd": float(usd(max(0, b.limit - value))),
                    "resets_at": b.resets_at,
                }
                for b, value in zip(budgets, spent, strict=True)
            }
        return out

    async def start(self) -> None:
        self.stats.start()
        interval = self.config.server.watch_config_seconds
        if self.config_path is not None and interval > 0:
            self.watcher = ConfigWatcher(self.config_path, interval, self.reload_from_file)
            self.watcher.start()
        if self.l1 is not None:
            self.l1.start()
        if not await self.gate.ping():
            log.warning("Redis is not reachable at startup; serving without cache until it is")
        if any(m.via_litellm for m in self.config.models):
            # litellm (~3 s to import) loads in a worker thread while the server already
            # serves; only requests for the models routed through it wait for it.
            self.upstreams.load_litellm()
        # Everything loaded so far lives as long as the process: keep it out of the garbage
        # collector, whose full passes over it stall the event loop (the hot-key p99).
        gc.collect()
        gc.freeze()
        # A request allocates hundreds of objects that reference counting frees; at the
        # default thresholds (700, 10, 10) the collector still ran every few requests, and
        # its older generations (the request memo, the L1, pools) every few hundred: 6-8%
        # of a hit's and a miss's CPU, side by side. Cycles wait a little longer for it.
        gc.set_threshold(*_GC_THRESHOLDS)

    async def _drain_settlements(self, drain_s: float) -> None:
        """Wait for the rate-limit settlements still in flight while Redis answers. A
        settlement that cannot reach Redis retries with growing pauses (a budget's for about
        16 s); with Redis unreachable none of them can land, so the shutdown does not wait
        for them (it used to wait out the whole drain): they are given up, as they would be
        when their retries ran out, and the budget reservations stay reserved until their
        window ends."""
        drained = asyncio.ensure_future(self.limiter.drain(drain_s))
        while True:
            done, _ = await asyncio.wait([drained], timeout=_DRAIN_CHECK_S)
            if done:
                return
            if not await self.gate.ping():
                drained.cancel()  # the wait only: the settlements' own tasks go on until the loop ends
                with contextlib.suppress(asyncio.CancelledError):
                    await drained
                log.warning("shutting down with rate-limit settlements unsent: Redis is unreachable")
                return

    async def close(self, drain_s: float = _DRAIN_S) -> None:
        """Shut down: background streams finish, rate-limit settlements are sent (at most
        `drain_s` seconds in all for each), stats are flushed, then connections close."""
        if self.watcher is not None:
            await self.watcher.stop()
        await self.pipeline.stages.drain(drain_s)
        await self._drain_settlements(drain_s)
        await self.stats.stop()
        await self.flight.close()
        if self.l1 is not None:
            await self.l1.stop()
        await self.upstreams.aclose()
        await self.gate.aclose()
        if self.tracing is not None:  # exports the spans still queued (blocking: off the loop)
            await asyncio.to_thread(self.tracing.shutdown)
