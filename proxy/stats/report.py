"""Reads the stats counters back and turns them into the /stats report and /metrics figures.

Ratios: `hit_ratio` is hits over answered requests (hits, misses, bypasses and coalesced
followers): the share the cache itself answered. `upstream_avoided_ratio` adds the
followers: the share that caused no upstream call (what "tokens saved" counts).

Windows are sums of time buckets (UTC): "1h" = the last 60 minute buckets, "24h" = the
last 24 hour buckets, "7d" = the last 7 day buckets (each includes the current, partial
bucket), "all" = all-time totals. Latency percentiles are read off fixed histogram
buckets, so they are upper bounds of the bucket the percentile falls in. The cache
footprint is counted with SCAN (never KEYS) and sampled with MEMORY USAGE.
Everything is read through proxy.store.stats; fields are decoded only by the schema.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from proxy.config import Config
from proxy.core.prices import FREE, model_prices
from proxy.stats.schema import (
    LATENCY_BOUNDS_MS,
    CacheOutcome,
    Counts,
    ErrorKind,
    LimitKind,
    Metric,
    decode_hash,
)
from proxy.store.connection import RedisGate
from proxy.store.stats import SPAN_SECONDS, Bucket, Span, StatsStore

# window -> (time bucket span, how many buckets), or None for the all-time totals
WINDOWS: dict[str, tuple[Span, int] | None] = {"1h": ("m", 60), "24h": ("h", 24), "7d": ("d", 7), "all": None}
_SERIES_WINDOWS = ("1h", "24h", "7d")  # the windows /stats also gives bucket by bucket
_SERIES_METRICS = (Metric.REQUESTS, Metric.HIT, Metric.MISS, Metric.BYPASS, Metric.COALESCED)
_FOOTPRINT_SAMPLE = 64
_FOOTPRINT_TTL_S = 30.0


class Figures:
    """Counters of one slice (a tenant, a model, or a total) in one window, and money (priced
    per model, so only summed across models): what its cache hits saved, what the
    provider's prompt cache saved on its upstream calls, and what those calls cost."""

    def __init__(
        self,
        counts: Counts | None = None,
        cost_saved: float = 0.0,
        provider_cache_saved: float = 0.0,
        spend: float = 0.0,
    ) -> None:
        self.counts = Counts() if counts is None else counts
        self.cost_saved = cost_saved
        self.provider_cache_saved = provider_cache_saved
        self.spend = spend

    def add(self, other: Figures) -> None:
        self.counts.update(other.counts)
        self.cost_saved += other.cost_saved
        self.provider_cache_saved += other.provider_cache_saved
        self.spend += other.spend

    def _percentiles(self, outcome: CacheOutcome) -> dict[str, float | int | None]:
        """p50/p95/p99 by linear interpolation inside the histogram bucket (as Prometheus'
        histogram_quantile does); exact to within the bucket's width."""
        buckets = self.counts.latency_histogram(outcome)
        total = sum(buckets)
        out: dict[str, float | int | None] = {"count": total}
        for name, q in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99)):
            out[name] = _quantile(buckets, total, q) if total else None
        return out

    def to_json(self) -> dict[str, Any]:
        c = self.counts
        hits, misses, bypasses = c[Metric.HIT], c[Metric.MISS], c[Metric.BYPASS]
        coalesced, answered = c[Metric.COALESCED], c.answered()
        saved_p, saved_c = c[Metric.SAVED_PROMPT], c[Metric.SAVED_COMPLETION]
        paid_p, paid_c = c[Metric.UPSTREAM_PROMPT], c[Metric.UPSTREAM_COMPLETION]
        limited_r, limited_t = c.limited(LimitKind.REQUESTS), c.limited(LimitKind.TOKENS)
        limited_b = c.limited(LimitKind.BUDGET)
        provider_cached = c[Metric.PROVIDER_CACHED_PROMPT]
        return {
            "requests": c[Metric.REQUESTS],
            "hits": hits,
            "misses": misses,
            "bypasses": bypasses,
            "coalesced": coalesced,
            "hit_ratio": round(hits / answered, 4) if answered else 0.0,
            "upstream_avoided_ratio": round((hits + coalesced) / answered, 4) if answered else 0.0,
            "errors": {kind.value: c.errors(kind) for kind in ErrorKind},
            "rate_limited": {"requests": limited_r, "tokens": limited_t, "total": limited_r + limited_t},
            "budget_refused": limited_b,
            "limiter_errors": c[Metric.LIMITER_ERRORS],
            "not_cacheable": c[Metric.NOT_CACHEABLE],
            "tokens_saved": {"prompt": saved_p, "completion": saved_c, "total": saved_p + saved_c},
            "upstream_tokens": {"prompt": paid_p, "completion": paid_c, "total": paid_p + paid_c},
            "cost_saved_usd": round(self.cost_saved, 10),
            # Prompt tokens the provider served from its own prompt cache on upstream calls,
            # and what its cached price saved on them: apart from what this cache saved.
            "provider_cached_tokens": provider_cached,
            "provider_cache_saved_usd": round(self.provider_cache_saved, 10),
            "spend_usd": round(self.spend, 10),  # upstream calls at the model's prices
            "latency_ms": {o.label: self._percentiles(o) for o in CacheOutcome},
        }


class StatsReport:
    def __init__(self, gate: RedisGate, config: Config) -> None:
        self._store = StatsStore(gate, config.redis.key_prefix)
        self._config = config
        self._footprint: dict[tuple[str, ...], tuple[float, dict[str, Any]]] = {}

    def _priced(self, model: str, counts: Counts) -> Figures:
        """One model's counters, with the tokens its hits saved priced (0 for unknown models)."""
        config = self._config.model_index.get(model)
        if config is None:
            return Figures(counts)
        prices = model_prices(config) or FREE
        cached = counts[Metric.PROVIDER_CACHED_PROMPT]
        return Figures(
            counts,
            prices.cost_usd(counts[Metric.SAVED_PROMPT], counts[Metric.SAVED_COMPLETION]),
            prices.cached_saving_usd(cached),
            prices.cost_usd(counts[Metric.UPSTREAM_PROMPT], counts[Metric.UPSTREAM_COMPLETION], cached),
        )

    async def snapshot(self, tenants: list[str], now: float | None = None) -> dict[str, Any]:
        """The report for these tenants: every window, by tenant and model, plus series."""
        now = time.time() if now is None else now
        plan: list[tuple[str, str, int | None]] = []  # (tenant, window, bucket start) per hash
        buckets: list[Bucket] = []
        for tenant in tenants:
            for window, spec in WINDOWS.items():
                if spec is None:
                    plan.append((tenant, window, None))
                    buckets.append(Bucket(tenant))
                    continue
                span, count = spec
                length = SPAN_SECONDS[span]
                current = int(now // length)
                for b in range(current - count + 1, current + 1):
                    plan.append((tenant, window, b * length))
                    buckets.append(Bucket(tenant, span, b))
        hashes = await self._store.read(buckets)
        series: dict[str, defaultdict[int, Counts]] = {w: defaultdict(Counts) for w in _SERIES_WINDOWS}
        # (window, tenant) -> model -> counters
        grouped: defaultdict[tuple[str, str], defaultdict[str, Counts]] = defaultdict(
            lambda: defaultdict(Counts)
        )
        for (tenant, window, start), fields in zip(plan, hashes, strict=True):
            point = series[window][start] if window in series and start is not None else None
            for model, counts in decode_hash(fields).items():
                grouped[(window, tenant)][model].update(counts)
                if point is not None:
                    point.update({m: counts[m] for m in _SERIES_METRICS})
        windows: dict[str, dict[str, Any]] = {}
        for window in WINDOWS:
            totals, by_model = Figures(), defaultdict[str, Figures](Figures)
            by_tenant: dict[str, Any] = {}
            for tenant in tenants:
                slices = {m: self._priced(m, c) for m, c in grouped[(window, tenant)].items()}
                tenant_total = Figures()
                for model, figures in slices.items():
                    tenant_total.add(figures)
                    by_model[model].add(figures)
                totals.add(tenant_total)
                by_tenant[tenant] = {
                    "totals": tenant_total.to_json(),
                    "models": {m: f.to_json() for m, f in sorted(slices.items())},
                }
            windows[window] = {
                "totals": totals.to_json(),
                "tenants": by_tenant,
                "models": {m: f.to_json() for m, f in sorted(by_model.items())},
            }
        return {
            "generated_at": int(now),
            "tenants": tenants,
            "windows": windows,
            "series": {name: _series(points) for name, points in series.items()},
            # Seconds per series point: the page's time axis (minutes, hours, days).
            "series_step_seconds": {w: _step(w) for w in _SERIES_WINDOWS},
        }

    async def all_time(self, tenants: Sequence[str]) -> dict[tuple[str, str], Figures]:
        """All-time figures per (tenant, model), priced as in /stats: what /metrics exposes."""
        hashes = await self._store.read([Bucket(t) for t in tenants])
        return {
            (tenant, model): self._priced(model, counts)
            for tenant, fields in zip(tenants, hashes, strict=True)
            for model, counts in decode_hash(fields).items()
        }

    async def recent_events(self, limit: int) -> list[dict[str, str]]:
        """The newest `limit` request events, newest first (docs/keyspace.md)."""
        return await self._store.recent_events(limit)

    async def footprint(self, namespaces: list[str]) -> dict[str, Any]:
        """Cache entries (exact, by SCAN) and their memory (sampled MEMORY USAGE x count)."""
        cache_key = tuple(sorted(namespaces))
        cached = self._footprint.get(cache_key)
        if cached and time.monotonic() - cached[0] < _FOOTPRINT_TTL_S:
            return cached[1]
        count, sizes = await self._store.cache_footprint(namespaces, _FOOTPRINT_SAMPLE)
        mean = sum(sizes) / len(sizes) if sizes else 0
        result = {
            "entries": count,
            "memory_bytes": int(mean * count),
            "method": f"entries counted with SCAN; memory = mean MEMORY USAGE of {len(sizes)} "
            "sampled entries x entries (approximate); refreshed at most every 30s",
        }
        self._footprint[cache_key] = (time.monotonic(), result)
        return result


def _quantile(buckets: list[int], total: int, q: float) -> float:
    target, running, lower = q * total, 0, 0.0
    for i, n in enumerate(buckets):
        upper = LATENCY_BOUNDS_MS[i]
        if n and running + n >= target:
            if upper == float("inf"):
                return lower  # beyond the last finite bound: report that bound
            return round(lower + (upper - lower) * (target - running) / n, 2)
        running += n
        lower = upper
    return lower


def _step(window: str) -> int:
    spec = WINDOWS[window]
    assert spec is not None  # series windows are time windows
    return SPAN_SECONDS[spec[0]]


def _series(points: dict[int, Counts]) -> list[dict[str, Any]]:
    out = []
    for start in sorted(points):
        c = points[start]
        hits, answered = c[Metric.HIT], c.answered()
        out.append(
            {
                "t": start,
                "requests": c[Metric.REQUESTS],
                "hits": hits,
                "coalesced": c[Metric.COALESCED],
                "hit_ratio": round(hits / answered, 4) if answered else None,
                "upstream_avoided_ratio": (
                    round((hits + c[Metric.COALESCED]) / answered, 4) if answered else None
                ),
            }
        )
    return out
