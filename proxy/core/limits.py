"""Which token buckets a request must pass, and how their state reads in OpenAI's headers.

Pure: the buckets a request needs follow from the tenant's config, the model and the end
user; `proxy.store.ratelimit` debits them in Redis. Plans are memoized in a bounded LRU
(end users are unbounded: one entry each would grow forever), so a busy end user's plan
is built once, and 10,000 distinct end users cost at most `max_plans` entries.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass
from typing import Literal

from proxy.config import BucketLimits, TenantConfig
from proxy.core.keys import KEY_VERSION

Kind = Literal["requests", "tokens"]
DEFAULT_MAX_PLANS = 4096


@dataclass(frozen=True, slots=True)
class Bucket:
    key: str
    kind: Kind
    scope: str  # how a 429 names it: "acme", "acme (model gpt-4o)", "acme (end user)"
    per_minute: int
    capacity: int


def _scope_buckets(base: str, scope: str, limits: BucketLimits) -> list[Bucket]:
    out = []
    if limits.requests_per_minute:
        cap = limits.burst_requests or limits.requests_per_minute
        out.append(Bucket(f"{base}:requests", "requests", scope, limits.requests_per_minute, cap))
    if limits.tokens_per_minute:
        cap = limits.burst_tokens or limits.tokens_per_minute
        out.append(Bucket(f"{base}:tokens", "tokens", scope, limits.tokens_per_minute, cap))
    return out


def end_user_id(user: str) -> str:
    """End users are stored hashed: their ids may be emails."""
    return hashlib.sha256(user.encode("utf-8", "surrogateescape")).hexdigest()[:24]


def plan_buckets(prefix: str, tenant: TenantConfig, model: str, end_user: str | None) -> tuple[Bucket, ...]:
    """Every bucket this request must pass; empty for an unlimited tenant."""
    limits = tenant.limits
    if limits is None:
        return ()
    # {tenant} is a hash tag: one request's buckets live in one Redis Cluster slot.
    base = f"{prefix}:{KEY_VERSION}:{{{tenant.name}}}:rl"
    buckets = _scope_buckets(f"{base}:t", tenant.name, limits)
    if model in limits.models:
        buckets += _scope_buckets(f"{base}:m:{model}", f"{tenant.name} (model {model})", limits.models[model])
    if limits.per_user and end_user:
        uid = end_user_id(end_user)
        buckets += _scope_buckets(f"{base}:u:{uid}", f"{tenant.name} (end user)", limits.per_user)
    return tuple(buckets)


class BucketPlanner:
    """`plan_buckets`, memoized per (tenant, model, end user) in a bounded LRU. One planner
    per config: a reload builds a new one, so a plan never outlives the limits it read."""

    def __init__(self, prefix: str, max_plans: int = DEFAULT_MAX_PLANS) -> None:
        self._prefix = prefix
        self.max_plans = max_plans
        self._plans: OrderedDict[tuple[str, str, str | None], tuple[Bucket, ...]] = OrderedDict()

    def plan(self, tenant: TenantConfig, model: str, end_user: str | None) -> tuple[Bucket, ...]:
        limits = tenant.limits
        if limits is None:
            return ()
        # Keyed by the end user's short hash, and only where per-user limits apply: the
        # raw id comes from the client (a `user` field may be megabytes) and must not be kept.
        uid = end_user_id(end_user) if limits.per_user and end_user else None
        key = (tenant.name, model, uid)
        plan = self._plans.get(key)
        if plan is not None:
            self._plans.move_to_end(key)
            return plan
        plan = plan_buckets(self._prefix, tenant, model, end_user)
        self._plans[key] = plan
        if len(self._plans) > self.max_plans:
            self._plans.popitem(last=False)
        return plan

    def __len__(self) -> int:
        return len(self._plans)


def rate_headers(buckets: tuple[Bucket, ...], levels: list[int], resets_ms: list[int]) -> dict[str, str]:
    """OpenAI's x-ratelimit-* headers, from the tightest bucket of each kind."""
    out: dict[str, str] = {}
    for kind in ("requests", "tokens"):
        idx = [i for i, b in enumerate(buckets) if b.kind == kind]
        if not idx:
            continue
        i = min(idx, key=lambda j: levels[j])
        out[f"x-ratelimit-limit-{kind}"] = str(buckets[i].per_minute)
        out[f"x-ratelimit-remaining-{kind}"] = str(max(0, levels[i]))
        out[f"x-ratelimit-reset-{kind}"] = duration(resets_ms[i])
    return out


def duration(ms: int) -> str:
    """OpenAI's reset format: 20ms, 1s, 1.5s, 6m0s."""
    if ms < 1000:
        return f"{max(ms, 0)}ms"
    seconds = ms / 1000
    if seconds < 60:
        return f"{seconds:.3f}".rstrip("0").rstrip(".") + "s"
    minutes, rest = divmod(seconds, 60)
    return f"{int(minutes)}m{rest:.3f}".rstrip("0").rstrip(".") + "s"
