"""The stats vocabulary: what a request did, and how each of its counters is named.

This module is the only place that knows a counter's name. A counter is one `AnyMetric`
of one model; in Redis it is the hash field `<model>|<metric>` (model names may not
contain `|`), see docs/keyspace.md:

    Metric           requests, hit, miss, bypass, coalesced, err_<ErrorKind>,
                     limited_<LimitKind>, limiter_errors, saved_/upstream_<prompt|completion>,
                     provider_cached_prompt,
                     not_cacheable, events_skipped
    LatencyBucket    lat_<hit|miss|bypass|coalesced>|<i>: answers that took at most
                     LATENCY_BOUNDS_MS[i] (and more than the bound before it)
    LatencySum       lat_<hit|miss|bypass|coalesced>_sum_us: their total time, in microseconds

Each answered request has one CacheOutcome. A single-flight follower (served from another
request's upstream call) is COALESCED, not HIT: it made no upstream call, so its tokens
count as saved, but it waited for one, so its latency is a miss's and has its own
histogram. Counters written before that (followers counted as `hit` and `coalesced`,
with no `lat_coalesced`) are read back right by `decode_hash` (see `_count_old_followers`).

`field` and `parse_field` are the one encode/decode pair; everything else handles typed
metrics. The hash and key layout belong to proxy.store.stats, which sees fields as opaque.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from enum import StrEnum

from proxy.errors import (
    AuthenticationFailed,
    BudgetExceeded,
    InvalidRequest,
    ProxyError,
    RateLimited,
    ServiceUnavailable,
    UpstreamError,
    error_reason,
)

PROXY_TENANT = "_proxy"  # counters with no tenant (failed authentication); not a valid tenant name
NO_MODEL = "-"  # the model of a request that never named a valid one

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


class CacheOutcome(StrEnum):
    """How the cache answered, as counted: the `X-Cache` values, except that a follower
    (`X-Cache: HIT` with `X-Cache-Coalesced: 1`) is COALESCED."""

    HIT = "HIT"
    MISS = "MISS"
    BYPASS = "BYPASS"
    COALESCED = "COALESCED"

    @property
    def label(self) -> str:
        """The lower-case name used in counters, events, /stats and Prometheus labels."""
        return self.value.lower()


class ErrorKind(StrEnum):
    """Why a request failed (RequestRecord.error), as classify() names it."""

    BAD_REQUEST = "bad_request"
    UPSTREAM = "upstream"
    REDIS = "redis"
    INTERNAL = "internal"
    AUTH = "auth"


class LimitKind(StrEnum):
    """Which of the tenant's quotas refused a request (RateLimited.type)."""

    REQUESTS = "requests"
    TOKENS = "tokens"
    BUDGET = "budget"  # a spend budget (BudgetExceeded)


class Metric(StrEnum):
    """The plain counters of one model; the value is the name in the hash field."""

    REQUESTS = "requests"
    HIT = "hit"
    MISS = "miss"
    BYPASS = "bypass"
    ERR_BAD_REQUEST = "err_bad_request"
    ERR_UPSTREAM = "err_upstream"
    ERR_REDIS = "err_redis"
    ERR_INTERNAL = "err_internal"
    ERR_AUTH = "err_auth"
    LIMITED_REQUESTS = "limited_requests"
    LIMITED_TOKENS = "limited_tokens"
    LIMITED_BUDGET = "limited_budget"
    LIMITER_ERRORS = "limiter_errors"
    SAVED_PROMPT = "saved_prompt"  # tokens served from the cache
    SAVED_COMPLETION = "saved_completion"
    UPSTREAM_PROMPT = "upstream_prompt"  # tokens paid for upstream
    UPSTREAM_COMPLETION = "upstream_completion"
    # Prompt tokens of upstream answers the provider served from its own prompt cache
    # (usage.prompt_tokens_details.cached_tokens): billed at its cached price.
    PROVIDER_CACHED_PROMPT = "provider_cached_prompt"
    COALESCED = "coalesced"  # answered by another request's upstream call (CacheOutcome.COALESCED)
    # Served but not stored: the proxy could not be sure to replay the answer exactly (an
    # ambiguous stream, a stream without usage) or it expires too soon (audio).
    NOT_CACHEABLE = "not_cacheable"
    EVENTS_SKIPPED = "events_skipped"  # hit events not written to the stream (events_per_flush)


@dataclass(frozen=True, slots=True)
class LatencyBucket:
    outcome: CacheOutcome
    index: int  # into LATENCY_BOUNDS_MS


@dataclass(frozen=True, slots=True)
class LatencySum:
    outcome: CacheOutcome


AnyMetric = Metric | LatencyBucket | LatencySum

# Typed lookups, built once: the recorder uses them on every request.
# Keyed by the plain strings RequestRecord holds (an enum member finds its entry too).
OUTCOMES: dict[str, CacheOutcome] = {o.value: o for o in CacheOutcome}
OUTCOME_METRIC: dict[CacheOutcome, Metric] = {o: Metric(o.label) for o in CacheOutcome}
ERROR_METRIC: dict[str, Metric] = {k.value: Metric(f"err_{k.value}") for k in ErrorKind}
LIMIT_METRIC: dict[str, Metric] = {k.value: Metric(f"limited_{k.value}") for k in LimitKind}
LATENCY_BUCKETS: dict[CacheOutcome, tuple[LatencyBucket, ...]] = {
    o: tuple(LatencyBucket(o, i) for i in range(len(LATENCY_BOUNDS_MS))) for o in CacheOutcome
}
LATENCY_SUM: dict[CacheOutcome, LatencySum] = {o: LatencySum(o) for o in CacheOutcome}
# (prompt, completion) metrics the answer's tokens count under: a hit or a follower saved them.
TOKEN_METRICS: dict[CacheOutcome, tuple[Metric, Metric]] = {
    CacheOutcome.HIT: (Metric.SAVED_PROMPT, Metric.SAVED_COMPLETION),
    CacheOutcome.COALESCED: (Metric.SAVED_PROMPT, Metric.SAVED_COMPLETION),
    CacheOutcome.MISS: (Metric.UPSTREAM_PROMPT, Metric.UPSTREAM_COMPLETION),
    CacheOutcome.BYPASS: (Metric.UPSTREAM_PROMPT, Metric.UPSTREAM_COMPLETION),
}


def metric_name(metric: AnyMetric) -> str:
    if isinstance(metric, LatencyBucket):
        return f"lat_{metric.outcome.label}|{metric.index}"
    if isinstance(metric, LatencySum):
        return f"lat_{metric.outcome.label}_sum_us"
    return metric.value


ALL_METRICS: tuple[AnyMetric, ...] = (
    *Metric,
    *(b for buckets in LATENCY_BUCKETS.values() for b in buckets),
    *LATENCY_SUM.values(),
)
_NAME: dict[AnyMetric, str] = {m: metric_name(m) for m in ALL_METRICS}
_BY_NAME: dict[str, AnyMetric] = {name: m for m, name in _NAME.items()}


def field(model: str, metric: AnyMetric) -> str:
    """The hash field of one model's counter."""
    return f"{model}|{_NAME[metric]}"


def parse_field(raw: str) -> tuple[str, AnyMetric] | None:
    """(model, metric) of a hash field; None for a name this version does not know (one a
    newer replica writes), which readers skip."""
    model, sep, name = raw.partition("|")
    metric = _BY_NAME.get(name)
    return (model, metric) if sep and metric is not None else None


def latency_bucket(ms: float) -> int:
    """The index of the histogram bucket an answer that took `ms` falls in."""
    for i, bound in enumerate(LATENCY_BOUNDS_MS):
        if ms <= bound:
            return i
    return len(LATENCY_BOUNDS_MS) - 1


class Counts(Counter[AnyMetric]):
    """One slice's counters (a model, a tenant, a total), read by metric."""

    def answered(self) -> int:
        """Requests answered with an outcome (hit, miss, bypass or coalesced)."""
        return sum(self[m] for m in OUTCOME_METRIC.values())

    def latency_histogram(self, outcome: CacheOutcome) -> list[int]:
        """Answers per LATENCY_BOUNDS_MS bucket (not cumulative)."""
        return [self[b] for b in LATENCY_BUCKETS[outcome]]

    def latency_sum_us(self, outcome: CacheOutcome) -> int:
        return self[LATENCY_SUM[outcome]]

    def errors(self, kind: ErrorKind) -> int:
        return self[ERROR_METRIC[kind]]

    def limited(self, kind: LimitKind) -> int:
        return self[LIMIT_METRIC[kind]]


def decode_hash(fields: Mapping[str, int]) -> dict[str, Counts]:
    """One counter hash (field -> value) as Counts per model."""
    per_model: dict[str, Counts] = {}
    for raw, n in fields.items():
        parsed = parse_field(raw)
        if parsed is not None:
            model, metric = parsed
            per_model.setdefault(model, Counts())[metric] += n
    for counts in per_model.values():
        counts[Metric.HIT] -= _count_old_followers(counts)
    return per_model


def _count_old_followers(counts: Counts) -> int:
    """Followers counted the old way, as `hit` plus `coalesced` (by a version, or a replica
    in a rolling upgrade, from before COALESCED was an outcome): `coalesced` minus the
    followers with a `lat_coalesced` bucket. Taking them off `hit` keeps hits, and so the
    hit ratio, true for old counters; their time stays in the hit histogram (the windows
    age it out, the all-time one keeps it)."""
    timed = sum(counts[b] for b in LATENCY_BUCKETS[CacheOutcome.COALESCED])
    return max(0, min(counts[Metric.COALESCED] - timed, counts[Metric.HIT]))


@dataclass(slots=True)
class RequestRecord:
    """What one request did; the pipeline fills it in, the recorder counts it. The string
    fields take the values of CacheOutcome, ErrorKind and LimitKind (or those enums)."""

    tenant: str = PROXY_TENANT
    model: str = NO_MODEL
    cache: str | None = None  # HIT | MISS | BYPASS | COALESCED
    error: str | None = None  # bad_request | upstream | redis | internal | auth
    limited: str | None = None  # requests | tokens | budget
    reason: str | None = None  # the access line's short error reason (proxy.errors.error_reason)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    digest: str = ""
    redis_error: bool = False
    limiter_error: bool = False
    not_cacheable: bool = False  # served, not stored: its answer could not be replayed exactly
    saved_tokens: int = 0  # prompt tokens served from cache on a partial hit (embeddings)
    provider_cached_tokens: int = 0  # prompt tokens the provider served from its prompt cache
    prompt: str | None = None  # the request body, only with server.log_prompts (for the log line)
    started: float = dataclass_field(default_factory=time.perf_counter)
    answered: float | None = None  # when the answer went out, if work followed it (`Reply.then`)

    def latency_ms(self) -> float:
        """From the request's start to its answer: work done after the answer was sent
        (storing a miss's answer) is not the client's wait."""
        end = time.perf_counter() if self.answered is None else self.answered
        return (end - self.started) * 1000


def classify(record: RequestRecord, exc: BaseException) -> None:
    """Note on the record what kind of failure answered the request."""
    record.reason = error_reason(exc)
    if isinstance(exc, RateLimited):
        record.limited = exc.type
    elif isinstance(exc, BudgetExceeded):
        record.limited = LimitKind.BUDGET
    elif isinstance(exc, AuthenticationFailed):
        record.error = ErrorKind.AUTH
    elif isinstance(exc, InvalidRequest):
        record.error = ErrorKind.BAD_REQUEST
    elif isinstance(exc, UpstreamError):
        record.error = ErrorKind.UPSTREAM
    elif isinstance(exc, ServiceUnavailable):
        record.error = ErrorKind.REDIS
    elif isinstance(exc, ProxyError) and 400 <= exc.status < 500:
        record.error = ErrorKind.BAD_REQUEST
    else:
        record.error = ErrorKind.INTERNAL


def event_fields(record: RequestRecord, now: float, latency_ms: float) -> dict[str, str]:
    """One entry of the events stream: what happened, never the prompt or the answer."""
    outcome = record.cache or ("limited" if record.limited else "error")
    return {
        "ts": f"{now:.3f}",
        "event": outcome.lower(),
        "tenant": record.tenant,
        "model": record.model,
        "key": record.digest,
        "latency_ms": f"{latency_ms:.2f}",
        "tokens": str(record.prompt_tokens + record.completion_tokens),
        "error": str(record.error or record.limited or ""),
    }


def budget_alert_fields(tenant: str, message: str, now: float) -> dict[str, str]:
    """One entry of the events stream: a budget crossed its alert threshold (once per window)."""
    return {
        "ts": f"{now:.3f}",
        "event": "budget_alert",
        "tenant": tenant,
        "model": NO_MODEL,
        "key": "",
        "latency_ms": "0",
        "tokens": "0",
        "error": message,
    }
