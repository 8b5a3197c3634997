"""Reads the stats counters back and turns them into the /stats report.

Windows are sums of time buckets (UTC): "1h" = the last 60 minute buckets, "24h" = the
last 24 hour buckets, "7d" = the last 7 day buckets (each includes the current, partial
bucket), "all" = all-time totals. Latency percentiles are read off fixed histogram
buckets, so they are upper bounds of the bucket the percentile falls in. The cache
footprint is counted with SCAN (never KEYS) and sampled with MEMORY USAGE.
"""

from __future__ import annotations

import random
import time
from collections import Counter, defaultdict
from typing import Any

from proxy.config import Config
from proxy.core.keys import ANSWER_KINDS
from proxy.stats.prices import cost_usd
from proxy.stats.recorder import LATENCY_BOUNDS_MS, stats_key
from proxy.store.connection import RedisGate

WINDOWS: dict[str, tuple[str, int, int] | None] = {
    "1h": ("m", 60, 60),
    "24h": ("h", 3600, 24),
    "7d": ("d", 86400, 7),
    "all": None,
}
_ERRORS = ("bad_request", "upstream", "redis", "internal", "auth")
_KINDS = ("hit", "miss", "bypass")
_FOOTPRINT_SAMPLE = 64
_FOOTPRINT_TTL_S = 30.0


def _decode(raw: dict[bytes, bytes]) -> dict[str, int]:
    return {k.decode(): int(v) for k, v in raw.items()}


class Figures:
    """Counters of one slice (a tenant, a model, or a total) in one window."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.cost_saved = 0.0

    def add(self, other: Figures) -> None:
        self.counts.update(other.counts)
        self.cost_saved += other.cost_saved

    def _percentiles(self, kind: str) -> dict[str, float | int | None]:
        """p50/p95/p99 by linear interpolation inside the histogram bucket (as Prometheus'
        histogram_quantile does); exact to within the bucket's width."""
        buckets = [self.counts.get(f"lat_{kind}|{i}", 0) for i in range(len(LATENCY_BOUNDS_MS))]
        total = sum(buckets)
        out: dict[str, float | int | None] = {"count": total}
        for name, q in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99)):
            out[name] = _quantile(buckets, total, q) if total else None
        return out

    def to_json(self) -> dict[str, Any]:
        c = self.counts
        answered = c["hit"] + c["miss"] + c["bypass"]
        saved_p, saved_c = c["saved_prompt"], c["saved_completion"]
        return {
            "requests": c["requests"],
            "hits": c["hit"],
            "misses": c["miss"],
            "bypasses": c["bypass"],
            "hit_ratio": round(c["hit"] / answered, 4) if answered else 0.0,
            "errors": {name: c[f"err_{name}"] for name in _ERRORS},
            "rate_limited": {
                "requests": c["limited_requests"],
                "tokens": c["limited_tokens"],
                "total": c["limited_requests"] + c["limited_tokens"],
            },
            "limiter_errors": c["limiter_errors"],
            "tokens_saved": {"prompt": saved_p, "completion": saved_c, "total": saved_p + saved_c},
            "upstream_tokens": {
                "prompt": c["upstream_prompt"],
                "completion": c["upstream_completion"],
                "total": c["upstream_prompt"] + c["upstream_completion"],
            },
            "cost_saved_usd": round(self.cost_saved, 10),
            "latency_ms": {kind: self._percentiles(kind) for kind in _KINDS},
        }


class StatsReport:
    def __init__(self, gate: RedisGate, config: Config) -> None:
        self._gate = gate
        self._config = config
        self._footprint: dict[tuple[str, ...], tuple[float, dict[str, Any]]] = {}

    def _slices(self, tenant: str, fields: dict[str, int]) -> dict[str, Figures]:
        """`<model>|<metric>` fields -> Figures per model, with money saved priced per model."""
        per_model: defaultdict[str, Figures] = defaultdict(Figures)
        for fld, n in fields.items():
            model, _, metric = fld.partition("|")
            per_model[model].counts[metric] += n
        for model, figures in per_model.items():
            config = self._config.model_index.get(model)
            if config is not None:
                figures.cost_saved = cost_usd(
                    config, figures.counts["saved_prompt"], figures.counts["saved_completion"]
                )
        return per_model

    async def snapshot(self, tenants: list[str], now: float | None = None) -> dict[str, Any]:
        """The report for these tenants: every window, by tenant and model, plus series."""
        now = time.time() if now is None else now
        plan: list[tuple[str, str, int | None]] = []  # (tenant, window, bucket start) per command
        keys: list[str] = []
        prefix = self._config.redis.key_prefix
        for tenant in tenants:
            for window, spec in WINDOWS.items():
                if spec is None:
                    plan.append((tenant, window, None))
                    keys.append(stats_key(prefix, tenant, "all"))
                    continue
                unit, span, count = spec
                current = int(now // span)
                for b in range(current - count + 1, current + 1):
                    plan.append((tenant, window, b * span))
                    keys.append(stats_key(prefix, tenant, f"{unit}:{b}"))

        async def read(r: Any) -> list[Any]:
            pipe = r.pipeline(transaction=False)
            for key in keys:
                pipe.hgetall(key)
            return list(await pipe.execute())

        replies = await self._gate.run(read)
        windows: dict[str, dict[str, Any]] = {}
        series: dict[str, dict[int, Counter[str]]] = {"1h": defaultdict(Counter), "24h": defaultdict(Counter)}
        grouped: dict[tuple[str, str], Counter[str]] = defaultdict(Counter)
        for (tenant, window, start), raw in zip(plan, replies, strict=True):
            fields = _decode(raw)
            grouped[(window, tenant)].update(fields)
            if window in series and start is not None:
                bucket = series[window][start]
                for fld, n in fields.items():
                    metric = fld.partition("|")[2]
                    if metric in ("requests", "hit", "miss", "bypass"):
                        bucket[metric] += n
        for window in WINDOWS:
            totals, by_model = Figures(), defaultdict[str, Figures](Figures)
            by_tenant: dict[str, Any] = {}
            for tenant in tenants:
                slices = self._slices(tenant, dict(grouped[(window, tenant)]))
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
        }

    async def footprint(self, namespaces: list[str]) -> dict[str, Any]:
        """Cache entries (exact, by SCAN) and their memory (sampled MEMORY USAGE x count)."""
        cache_key = tuple(sorted(namespaces))
        cached = self._footprint.get(cache_key)
        if cached and time.monotonic() - cached[0] < _FOOTPRINT_TTL_S:
            return cached[1]
        prefix = self._config.redis.key_prefix

        async def scan(r: Any) -> dict[str, Any]:
            count, sample = 0, list[Any]()
            patterns = [f"{prefix}:v1:{ns}:{kind}:*" for ns in namespaces for kind in ANSWER_KINDS]
            for pattern in patterns:
                async for key in r.scan_iter(match=pattern, count=1000):
                    count += 1
                    if len(sample) < _FOOTPRINT_SAMPLE:
                        sample.append(key)
                    elif random.random() < _FOOTPRINT_SAMPLE / count:
                        sample[random.randrange(_FOOTPRINT_SAMPLE)] = key
            sizes = [await r.memory_usage(k) or 0 for k in sample]
            mean = sum(sizes) / len(sizes) if sizes else 0
            return {
                "entries": count,
                "memory_bytes": int(mean * count),
                "method": f"entries counted with SCAN; memory = mean MEMORY USAGE of {len(sizes)} "
                "sampled entries x entries (approximate); refreshed at most every 30s",
            }

        result = await self._gate.run(scan)
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


def _series(points: dict[int, Counter[str]]) -> list[dict[str, Any]]:
    out = []
    for start in sorted(points):
        c = points[start]
        answered = c["hit"] + c["miss"] + c["bypass"]
        out.append(
            {
                "t": start,
                "requests": c["requests"],
                "hits": c["hit"],
                "hit_ratio": round(c["hit"] / answered, 4) if answered else None,
            }
        )
    return out
