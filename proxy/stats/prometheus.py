"""Prometheus exposition of the all-time counters in Redis (the same numbers as /stats).

Computed from Redis rather than from process memory, so every replica serves the totals
of all of them and a restart loses nothing; prometheus-client does the text format.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from proxy.config import ModelConfig
from proxy.stats.prices import cost_usd
from proxy.stats.recorder import LATENCY_BOUNDS_MS

_KINDS = ("hit", "miss", "bypass")


class _ReportCollector(Collector):
    def __init__(
        self,
        models: dict[str, ModelConfig],
        counts: dict[tuple[str, str], dict[str, int]],
        footprint: dict[str, Any] | None,
    ) -> None:
        self._models = models  # to price the tokens saved, as /stats does
        self._counts = counts  # (tenant, model) -> raw all-time counters
        self._footprint = footprint

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "llmcp_requests", "Chat requests answered, by cache outcome.", labels=["tenant", "model", "cache"]
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
        limited = CounterMetricFamily(
            "llmcp_rate_limited", "Requests refused by the tenant's rate limits.", labels=["tenant", "kind"]
        )
        upstream = CounterMetricFamily(
            "llmcp_upstream_errors", "Upstream provider failures.", labels=["tenant", "model"]
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
        for (tenant, model), c in sorted(self._counts.items()):
            for kind in _KINDS:
                requests.add_metric([tenant, model, kind], c.get(kind, 0))
                buckets, running = [], 0
                for i, bound in enumerate(LATENCY_BOUNDS_MS):
                    running += c.get(f"lat_{kind}|{i}", 0)
                    buckets.append(("+Inf" if bound == float("inf") else repr(bound / 1000), running))
                if running:
                    latency.add_metric([tenant, model, kind], buckets, c.get(f"lat_{kind}_sum_us", 0) / 1e6)
            saved.add_metric([tenant, model, "prompt"], c.get("saved_prompt", 0))
            saved.add_metric([tenant, model, "completion"], c.get("saved_completion", 0))
            config = self._models.get(model)
            saved_cost = (
                cost_usd(config, c.get("saved_prompt", 0), c.get("saved_completion", 0)) if config else 0.0
            )
            cost.add_metric([tenant, model], saved_cost)
            upstream.add_metric([tenant, model], c.get("err_upstream", 0))
            for kind in ("requests", "tokens"):
                limited_totals[(tenant, kind)] = limited_totals.get((tenant, kind), 0) + c.get(
                    f"limited_{kind}", 0
                )
            redis_totals[tenant] = redis_totals.get(tenant, 0) + c.get("err_redis", 0)
            for kind in ("bad_request", "internal", "auth"):
                error_totals[(tenant, kind)] = error_totals.get((tenant, kind), 0) + c.get(f"err_{kind}", 0)
        for (tenant, kind), n in sorted(limited_totals.items()):
            limited.add_metric([tenant, kind], n)
        for tenant, n in sorted(redis_totals.items()):
            redis_err.add_metric([tenant], n)
        for (tenant, kind), n in sorted(error_totals.items()):
            errors.add_metric([tenant, kind], n)
        yield from (requests, saved, cost, limited, upstream, redis_err, errors, latency)
        if self._footprint is not None:
            entries = GaugeMetricFamily("llmcp_cache_entries", "Cached answers in Redis.")
            entries.add_metric([], self._footprint["entries"])
            memory = GaugeMetricFamily(
                "llmcp_cache_memory_bytes", "Approximate Redis memory of cached answers."
            )
            memory.add_metric([], self._footprint["memory_bytes"])
            yield from (entries, memory)


def render(
    models: dict[str, ModelConfig],
    counts: dict[tuple[str, str], dict[str, int]],
    footprint: dict[str, Any] | None,
) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_ReportCollector(models, counts, footprint))
    return generate_latest(registry)
