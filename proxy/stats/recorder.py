"""Counters for /stats and /metrics: summed in-process, flushed to Redis in one pipeline.

Recording a request is a few dict increments (no Redis round trip on the hit path). A
background task writes the sums every `stats.flush_interval_ms` with HINCRBY into
per-tenant time buckets, so every process and replica sharing the Redis adds into the
same counters:

    <prefix>:v1:{<tenant>}:stats:m:<unix minute>   hash, TTL 2 h    (last hour)
    <prefix>:v1:{<tenant>}:stats:h:<unix hour>     hash, TTL 8 days (last 24 h)
    <prefix>:v1:{<tenant>}:stats:d:<unix day>      hash, TTL 35 days (last 7 days)
    <prefix>:v1:{<tenant>}:stats:all               hash, no TTL: all-time totals, bounded
                                                   by models x fields (docs/keyspace.md)
    <prefix>:v1:events                             stream, XADD MAXLEN ~ N, TTL refreshed

Hash fields are `<model>|<metric>`, and `<model>|lat_<hit|miss|bypass>|<bucket>` for the
latency histograms. If a flush fails the sums are kept and retried with the next one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field
from typing import Any

from proxy.config import Config
from proxy.core.keys import KEY_VERSION
from proxy.errors import (
    AuthenticationFailed,
    InvalidRequest,
    ProxyError,
    RateLimited,
    ServiceUnavailable,
    StoreUnavailable,
    UpstreamError,
)
from proxy.store.connection import RedisGate

log = logging.getLogger("llmcp.stats")

# Upper bounds (ms) of the latency histogram buckets; the last one is +Inf.
LATENCY_BOUNDS_MS: tuple[float, ...] = (
    0.5,
    1,
    2,
    5,
    10,
    25,
    50,
    100,
    250,
    500,
    1000,
    2500,
    5000,
    10000,
    30000,
    60000,
    float("inf"),
)
PROXY_TENANT = "_proxy"  # counters with no tenant (failed authentication); not a valid tenant name
WINDOW_TTL = {"m": 2 * 3600, "h": 8 * 86400, "d": 35 * 86400}
_SPAN = {"m": 60, "h": 3600, "d": 86400}
_MAX_PENDING_FIELDS = 200_000  # while Redis is down, older sums are dropped past this


def stats_key(prefix: str, tenant: str, suffix: str) -> str:
    return f"{prefix}:{KEY_VERSION}:{{{tenant}}}:stats:{suffix}"


def events_key(prefix: str) -> str:
    return f"{prefix}:{KEY_VERSION}:events"


def latency_bucket(ms: float) -> int:
    for i, bound in enumerate(LATENCY_BOUNDS_MS):
        if ms <= bound:
            return i
    return len(LATENCY_BOUNDS_MS) - 1


@dataclass(slots=True)
class RequestRecord:
    """What one request did; the pipeline fills it in, the route hands it to the recorder."""

    tenant: str = PROXY_TENANT
    model: str = "-"
    cache: str | None = None  # HIT | MISS | BYPASS
    error: str | None = None  # bad_request | upstream | redis | internal | auth
    limited: str | None = None  # requests | tokens
    prompt_tokens: int = 0
    completion_tokens: int = 0
    digest: str = ""
    redis_error: bool = False
    limiter_error: bool = False
    coalesced: bool = False  # served from another request's upstream call (single flight)
    saved_tokens: int = 0  # prompt tokens served from cache on a partial hit (embeddings)
    prompt: str | None = None  # the request body, only with server.log_prompts (for the log line)
    started: float = field(default_factory=time.perf_counter)


def classify(record: RequestRecord, exc: BaseException) -> None:
    """Note on the record what kind of failure answered the request."""
    if isinstance(exc, RateLimited):
        record.limited = exc.type
    elif isinstance(exc, AuthenticationFailed):
        record.error = "auth"
    elif isinstance(exc, InvalidRequest):
        record.error = "bad_request"
    elif isinstance(exc, UpstreamError):
        record.error = "upstream"
    elif isinstance(exc, ServiceUnavailable):
        record.error = "redis"
    elif isinstance(exc, ProxyError) and 400 <= exc.status < 500:
        record.error = "bad_request"
    else:
        record.error = "internal"


class StatsRecorder:
    def __init__(self, gate: RedisGate, config: Config) -> None:
        self._gate = gate
        self._prefix = config.redis.key_prefix
        self._interval = config.stats.flush_interval_ms / 1000
        self._events_max = config.stats.events_max
        self._events_ttl = config.stats.events_ttl_seconds
        self._per_flush = config.stats.events_per_flush
        # (tenant, unix minute, field) -> count
        self._counts: defaultdict[tuple[str, int, str], int] = defaultdict(int)
        # Newest events since the last flush: hits apart, so they cannot push out the rest.
        self._events: deque[dict[str, Any]] = deque(maxlen=self._per_flush)
        self._hit_events: deque[dict[str, Any]] = deque(maxlen=self._per_flush)
        self._hits_seen = 0
        self._task: asyncio.Task[None] | None = None

    def record(self, rec: RequestRecord, now: float | None = None) -> None:
        latency_ms = (time.perf_counter() - rec.started) * 1000
        now = time.time() if now is None else now
        minute = int(now // 60)
        counts, tenant, model = self._counts, rec.tenant, rec.model
        counts[(tenant, minute, f"{model}|requests")] += 1
        if rec.cache is not None:
            kind = rec.cache.lower()
            counts[(tenant, minute, f"{model}|{kind}")] += 1
            counts[(tenant, minute, f"{model}|lat_{kind}|{latency_bucket(latency_ms)}")] += 1
            counts[(tenant, minute, f"{model}|lat_{kind}_sum_us")] += int(latency_ms * 1000)
            side = "saved" if kind == "hit" else "upstream"
            if rec.prompt_tokens:
                counts[(tenant, minute, f"{model}|{side}_prompt")] += rec.prompt_tokens
            if rec.completion_tokens:
                counts[(tenant, minute, f"{model}|{side}_completion")] += rec.completion_tokens
        if rec.error is not None:
            counts[(tenant, minute, f"{model}|err_{rec.error}")] += 1
        if rec.limited is not None:
            counts[(tenant, minute, f"{model}|limited_{rec.limited}")] += 1
        if rec.redis_error:
            counts[(tenant, minute, f"{model}|err_redis")] += 1
        if rec.saved_tokens:
            counts[(tenant, minute, f"{model}|saved_prompt")] += rec.saved_tokens
        if rec.coalesced:
            counts[(tenant, minute, f"{model}|coalesced")] += 1
        if rec.limiter_error:
            counts[(tenant, minute, f"{model}|limiter_errors")] += 1
        if self._events_max:
            outcome = rec.cache or ("limited" if rec.limited else "error")
            if outcome == "HIT":
                self._hits_seen += 1
            (self._hit_events if outcome == "HIT" else self._events).append(
                {
                    "ts": f"{now:.3f}",
                    "event": outcome.lower(),
                    "tenant": tenant,
                    "model": model,
                    "key": rec.digest,
                    "latency_ms": f"{latency_ms:.2f}",
                    "tokens": str(rec.prompt_tokens + rec.completion_tokens),
                    "error": rec.error or rec.limited or "",
                }
            )

    async def flush(self) -> None:
        """Write the pending sums and events in one pipeline; keep them if Redis fails."""
        if not self._counts and not self._events and not self._hit_events:
            return
        counts, self._counts = self._counts, defaultdict(int)
        events = list(self._events)
        room = max(0, self._per_flush - len(events))
        hits = list(self._hit_events)[-room:] if room else []
        if self._hits_seen > len(hits):
            counts[(PROXY_TENANT, int(time.time() // 60), "-|events_skipped")] += self._hits_seen - len(hits)
        events = sorted(events + hits, key=lambda e: e["ts"])
        self._events.clear()
        self._hit_events.clear()
        self._hits_seen = 0
        try:
            await self._gate.run(lambda r: self._write(r, counts, events))
        except StoreUnavailable:
            for item, n in counts.items():
                self._counts[item] += n
            if len(self._counts) > _MAX_PENDING_FIELDS:
                oldest = sorted({m for _, m, _ in self._counts})[: len(self._counts) // 4 or 1]
                for item in [k for k in self._counts if k[1] in oldest]:
                    del self._counts[item]

    async def _write(
        self, r: Any, counts: dict[tuple[str, int, str], int], events: list[dict[str, Any]]
    ) -> None:
        pipe = r.pipeline(transaction=False)
        expire: dict[str, int] = {}
        for (tenant, minute, fld), n in counts.items():
            seconds = minute * 60
            for window in ("m", "h", "d"):
                key = stats_key(self._prefix, tenant, f"{window}:{seconds // _SPAN[window]}")
                pipe.hincrby(key, fld, n)
                expire[key] = WINDOW_TTL[window]
            pipe.hincrby(stats_key(self._prefix, tenant, "all"), fld, n)
        for key, ttl in expire.items():
            pipe.expire(key, ttl)
        if events:
            stream = events_key(self._prefix)
            for event in events:
                pipe.xadd(stream, event, maxlen=self._events_max, approximate=True)
            pipe.expire(stream, self._events_ttl)
        await pipe.execute()

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
