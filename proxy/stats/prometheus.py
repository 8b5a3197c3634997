"""Prometheus exposition of the all-time counters in Redis (the same numbers as /stats).

Computed from Redis (through the report) rather than from process memory, so every
replica serves the totals of all of them and a restart loses nothing; prometheus-client
does the text format. Takes the report's typed figures: no field names, no Redis here.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from proxy.stats import schema
from proxy.stats.report import Figures
from proxy.stats.schema import LATENCY_BOUNDS_MS, OUTCOME_METRIC, CacheOutcome, ErrorKind, LimitKind

# Kinds of llmcp_request_errors: upstream and redis errors have metrics of their own.
_REQUEST_ERRORS = (ErrorKind.BAD_REQUEST, ErrorKind.INTERNAL, ErrorKind.AUTH)
_BUCKET_LABELS = tuple("+Inf" if b == float("inf") else repr(b / 1000) for b in LATENCY_BOUNDS_MS)


class _ReportCollector(Collector):
    def __init__(self, figures: Mapping[tuple[str, str], Figures], footprint: dict[str, Any] | None) -> None:
        self._figures = figures  # (tenant, model) -> all-time figures
        self._footprint = footprint

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "llmcp_requests",
            "Requests answered, by cache outcome (hit, miss, bypass, coalesced).",
            labels=["tenant", "model", "cache"],
        )
        saved = CounterMetricFamily(
            "llmcp_tokens_saved",
            "Tokens served from cache instead of upstream.",
            labels=["tenant", "model", "kind"],
        )
        cost = CounterMetricFamily(
            "llmcp_cost_saved_usd",
            "Estimated upstream cost avoided by cache hits (USD).",
            labels=["tenant", "model"],
        )
        provider_cached = CounterMetricFamily(
            "llmcp_provider_cached_tokens",
            "Prompt tokens of upstream calls the provider served from its own prompt cache.",
            labels=["tenant", "model"],
        )
        provider_saved = CounterMetricFamily(
            "llmcp_provider_cache_saved_usd",
            "What the provider's prompt cache saved on upstream calls (USD), apart from this cache.",
            labels=["tenant", "model"],
        )
        spend = CounterMetricFamily(
            "llmcp_spend_usd", "Upstream calls at the model's prices (USD).", labels=["tenant", "model"]
        )
        limited = CounterMetricFamily(
            "llmcp_rate_limited",
            "Requests refused by the tenant's rate limits (kind requests, tokens) or spend budgets (budget).",
            labels=["tenant", "kind"],
        )
        upstream = CounterMetricFamily(
            "llmcp_upstream_errors", "Upstream provider failures.", labels=["tenant", "model"]
        )
        not_cacheable = CounterMetricFamily(
            "llmcp_not_cacheable",
            "Answers served but not stored: the proxy could not be sure to replay them exactly.",
            labels=["tenant", "model"],
        )
        redis_err = CounterMetricFamily(
            "llmcp_redis_errors", "Requests that found Redis unavailable.", labels=["tenant"]
        )
        errors = CounterMetricFamily(
            "llmcp_request_errors", "Requests answered with an error, by kind.", labels=["tenant", "kind"]
        )
        latency = HistogramMetricFamily(
            "llmcp_request_duration_seconds",
            "Time to answer, by cache outcome.",
            labels=["tenant", "model", "cache"],
        )
        limited_totals: dict[tuple[str, str], int] = {}
        redis_totals: dict[str, int] = {}
        error_totals: dict[tuple[str, str], int] = {}
        for (tenant, model), figures in sorted(self._figures.items()):
            c = figures.counts
            for outcome in CacheOutcome:
                kind = outcome.label
                requests.add_metric([tenant, model, kind], c[OUTCOME_METRIC[outcome]])
                buckets, running = [], 0
                for label, n in zip(_BUCKET_LABELS, c.latency_histogram(outcome), strict=True):
                    running += n
                    buckets.append((label, running))
                if running:
                    latency.add_metric([tenant, model, kind], buckets, c.latency_sum_us(outcome) / 1e6)
            saved.add_metric([tenant, model, "prompt"], c[schema.Metric.SAVED_PROMPT])
            saved.add_metric([tenant, model, "completion"], c[schema.Metric.SAVED_COMPLETION])
            cost.add_metric([tenant, model], figures.cost_saved)
            provider_cached.add_metric([tenant, model], c[schema.Metric.PROVIDER_CACHED_PROMPT])
            provider_saved.add_metric([tenant, model], figures.provider_cache_saved)
            spend.add_metric([tenant, model], figures.spend)
            upstream.add_metric([tenant, model], c.errors(ErrorKind.UPSTREAM))
            not_cacheable.add_metric([tenant, model], c[schema.Metric.NOT_CACHEABLE])
            for limit in LimitKind:
                key = (tenant, limit.value)
                limited_totals[key] = limited_totals.get(key, 0) + c.limited(limit)
            redis_totals[tenant] = redis_totals.get(tenant, 0) + c.errors(ErrorKind.REDIS)
            for error in _REQUEST_ERRORS:
                key = (tenant, error.value)
                error_totals[key] = error_totals.get(key, 0) + c.errors(error)
        for (tenant, kind), n in sorted(limited_totals.items()):
            limited.add_metric([tenant, kind], n)
        for tenant, n in sorted(redis_totals.items()):
            redis_err.add_metric([tenant], n)
        for (tenant, kind), n in sorted(error_totals.items()):
            errors.add_metric([tenant, kind], n)
        yield from (requests, saved, cost, provider_cached, provider_saved, spend, limited, upstream)
        yield from (not_cacheable, redis_err, errors, latency)
        if self._footprint is not None:
            entries = GaugeMetricFamily("llmcp_cache_entries", "Cached answers in Redis.")
            entries.add_metric([], self._footprint["entries"])
            memory = GaugeMetricFamily(
                "llmcp_cache_memory_bytes", "Approximate Redis memory of cached answers."
            )
            memory.add_metric([], self._footprint["memory_bytes"])
            yield from (entries, memory)


def render(figures: Mapping[tuple[str, str], Figures], footprint: dict[str, Any] | None) -> bytes:
    """The text exposition of the report's all-time figures (StatsReport.all_time)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_ReportCollector(figures, footprint))
    return generate_latest(registry)
