"""Counters for /stats and /metrics: summed in-process, flushed to Redis in one pipeline.

Recording a request is a few dict increments (no Redis round trip on the hit path). A
background task writes the sums every `stats.flush_interval_ms` through
proxy.store.stats, which adds them into per-tenant time buckets, so every process and
replica sharing the Redis adds into the same counters. If a flush fails the sums are kept
and retried with the next one (bounded by _MAX_PENDING_FIELDS while Redis is down).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict, deque

from proxy.config import Config
from proxy.core.budgets import Budget, usd
from proxy.errors import StoreUnavailable
from proxy.stats.schema import (
    ERROR_METRIC,
    LATENCY_BUCKETS,
    LATENCY_SUM,
    LIMIT_METRIC,
    NO_MODEL,
    OUTCOME_METRIC,
    OUTCOMES,
    PROXY_TENANT,
    TOKEN_METRICS,
    AnyMetric,
    CacheOutcome,
    Metric,
    RequestRecord,
    budget_alert_fields,
    event_fields,
    field,
    latency_bucket,
)
from proxy.store.connection import RedisGate
from proxy.store.stats import StatsStore

log = logging.getLogger("llmcp.stats")

_MAX_PENDING_FIELDS = 200_000  # while Redis is down, older sums are dropped past this
# (tenant, unix minute, model, metric): one pending hash field of one minute
_Item = tuple[str, int, str, AnyMetric]
# An event as made (a budget alert), or a request's record, time and latency (made at the flush)
_Event = dict[str, str] | tuple[RequestRecord, float, float]


def _made(event: _Event) -> dict[str, str]:
    return event if isinstance(event, dict) else event_fields(*event)


class StatsRecorder:
    def __init__(self, gate: RedisGate, config: Config) -> None:
        self._store = StatsStore(gate, config.redis.key_prefix)
        self._interval = config.stats.flush_interval_ms / 1000
        self._events_max = config.stats.events_max
        self._events_ttl = config.stats.events_ttl_seconds
        self._per_flush = config.stats.events_per_flush
        self._counts: defaultdict[_Item, int] = defaultdict(int)
        # Newest events since the last flush: hits apart, so they cannot push out the rest.
        # A request's event is kept as its record and made at the flush (most hit events
        # are pushed out unread by newer ones).
        self._events: deque[_Event] = deque(maxlen=self._per_flush)
        self._hit_events: deque[_Event] = deque(maxlen=self._per_flush)
        self._hits_seen = 0
        self._task: asyncio.Task[None] | None = None

    def record(self, rec: RequestRecord, now: float | None = None) -> None:
        """Count one answered request. Values outside the vocabulary (schema) are not counted."""
        latency_ms = rec.latency_ms()
        now = time.time() if now is None else now
        minute = int(now // 60)
        counts, tenant, model = self._counts, rec.tenant, rec.model
        counts[(tenant, minute, model, Metric.REQUESTS)] += 1
        outcome = OUTCOMES.get(rec.cache) if rec.cache is not None else None
        if outcome is not None:
            counts[(tenant, minute, model, OUTCOME_METRIC[outcome])] += 1
            counts[(tenant, minute, model, LATENCY_BUCKETS[outcome][latency_bucket(latency_ms)])] += 1
            counts[(tenant, minute, model, LATENCY_SUM[outcome])] += int(latency_ms * 1000)
            prompt, completion = TOKEN_METRICS[outcome]
            if rec.prompt_tokens:
                counts[(tenant, minute, model, prompt)] += rec.prompt_tokens
            if rec.completion_tokens:
                counts[(tenant, minute, model, completion)] += rec.completion_tokens
        if rec.error is not None and rec.error in ERROR_METRIC:
            counts[(tenant, minute, model, ERROR_METRIC[rec.error])] += 1
        if rec.limited is not None and rec.limited in LIMIT_METRIC:
            counts[(tenant, minute, model, LIMIT_METRIC[rec.limited])] += 1
        if rec.redis_error:
            counts[(tenant, minute, model, Metric.ERR_REDIS)] += 1
        if rec.provider_cached_tokens:
            counts[(tenant, minute, model, Metric.PROVIDER_CACHED_PROMPT)] += rec.provider_cached_tokens
        if rec.saved_tokens:
            counts[(tenant, minute, model, Metric.SAVED_PROMPT)] += rec.saved_tokens
        if rec.not_cacheable:
            counts[(tenant, minute, model, Metric.NOT_CACHEABLE)] += 1
        if rec.limiter_error:
            counts[(tenant, minute, model, Metric.LIMITER_ERRORS)] += 1
        if self._events_max:
            event = (rec, now, latency_ms)
            if outcome is CacheOutcome.HIT or outcome is CacheOutcome.COALESCED:
                self._hits_seen += 1
                self._hit_events.append(event)
            else:
                self._events.append(event)

    def budget_alert(self, budget: Budget, spent: int) -> None:
        """A budget crossed its alert threshold: an event beside the requests' (the limiter
        logs the WARNING line)."""
        if self._events_max:
            period = "daily" if budget.window == "day" else "monthly"
            message = f"{budget.scope}: ${usd(spent)} of the {period} budget of ${usd(budget.limit)}"
            self._events.append(budget_alert_fields(budget.tenant, message, time.time()))

    async def flush(self) -> None:
        """Write the pending sums and events in one pipeline; keep the sums if Redis fails."""
        if not self._counts and not self._events and not self._hit_events:
            return
        counts, self._counts = self._counts, defaultdict(int)
        events = list(self._events)
        room = max(0, self._per_flush - len(events))
        hits = list(self._hit_events)[-room:] if room else []
        if self._hits_seen > len(hits):
            skipped = (PROXY_TENANT, int(time.time() // 60), NO_MODEL, Metric.EVENTS_SKIPPED)
            counts[skipped] += self._hits_seen - len(hits)
        made = [_made(e) for e in events + hits]
        made.sort(key=lambda e: e["ts"])
        self._events.clear()
        self._hit_events.clear()
        self._hits_seen = 0
        sums = {
            (tenant, minute, field(model, metric)): n for (tenant, minute, model, metric), n in counts.items()
        }
        try:
            await self._store.add(sums, made, self._events_max, self._events_ttl)
        except StoreUnavailable:
            for item, n in counts.items():
                self._counts[item] += n
            if len(self._counts) > _MAX_PENDING_FIELDS:
                oldest = sorted({m for _, m, _, _ in self._counts})[: len(self._counts) // 4 or 1]
                for item in [k for k in self._counts if k[1] in oldest]:
                    del self._counts[item]

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.flush()
            except Exception:  # never let the flusher die
                log.exception("stats flush failed")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.flush()
