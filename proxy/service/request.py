"""One typed object per request, and what the pipeline answers with.

`ProxyRequest` is the one place a request's state lives while it is served: who asked
(tenant, end user, cache headers), what it resolved to (adapter, model, body, digest,
key, cache controls), what the pipeline decided (cache status, age, coalesced, the rate
limit it passed) and the stats record. The cache status changes only through the methods
below, which keep the response's status and the counted one in step; the HTTP layer
reads the object to build the response headers (`proxy.http.headers`), never the other
way round.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from proxy.config import ModelConfig, TenantConfig
from proxy.core.apis.base import Adapter, Usage
from proxy.core.budgets import Budget
from proxy.core.cache_controls import CacheControls, CacheStatus, RequestMeta
from proxy.stats.schema import CacheOutcome, RequestRecord
from proxy.store.flight import Flight
from proxy.store.ratelimit import Reservation

if TYPE_CHECKING:
    from proxy.service.tracing import RequestTrace

JSON = "application/json"
SSE = "text/event-stream"
_NO_CONTROLS = CacheControls(lookup=False, store=False, ttl=0)


@dataclass(slots=True)
class Reply:
    """The answer's bytes (or a stream of them); its headers come from the ProxyRequest.

    `then` is work the answer need not wait for (storing a miss's answer and
    releasing its flight): the HTTP layer runs it once the whole answer is sent, before
    the request is counted and logged; whoever else serves a `Reply` must call `finish`."""

    body: bytes = b""
    stream: AsyncIterator[bytes] | None = None
    media_type: str = JSON
    status: int = 200
    then: Callable[[], Awaitable[None]] | None = None

    async def finish(self) -> None:
        """Run `then` (once)."""
        then, self.then = self.then, None
        if then is not None:
            await then()


@dataclass(slots=True)
class ProxyRequest:
    tenant: TenantConfig
    meta: RequestMeta
    record: RequestRecord
    api: Adapter | None = None
    model: ModelConfig | None = None
    body: dict[str, Any] = field(default_factory=dict)
    digest: str = ""  # X-Cache-Key: the answer's digest (empty for per-item endpoints)
    key: str = ""  # the answer's cache key
    controls: CacheControls = _NO_CONTROLS
    stream: bool = False
    include_usage: bool = False
    # Decided by the pipeline:
    status: CacheStatus = CacheStatus.BYPASS
    age_seconds: int | None = None
    coalesced: bool = False
    item_hits: tuple[int, int] | None = None  # (cached, total) items, per-item endpoints
    rate: Reservation | None = None  # the buckets it passed: the x-ratelimit-* headers
    # The budgets that apply, their spend, and when: the x-budget-* headers
    budget_view: tuple[tuple[Budget, ...], list[int], float] | None = None
    # Held while it is served:
    reservation: Reservation | None = None  # to settle with the real usage
    prompt_estimate: int = 0
    flight: Flight | None = None  # set while this request leads a single flight
    flight_digest: str = ""
    trace: RequestTrace | None = None  # its spans, when tracing is on (proxy.service.tracing)

    @property
    def end_user(self) -> str | None:
        """`X-End-User`, else the body's `user`: whose per-user limits apply."""
        user = self.meta.end_user or self.body.get("user")
        return user if isinstance(user, str) else None

    def looked_up(self) -> None:
        """The cache was asked (and had no whole answer): a MISS unless it is served later.
        Left BYPASS when the lookup was skipped or Redis failed."""
        self.status = CacheStatus.MISS

    def served_hit(self, prompt_tokens: int, completion_tokens: int, age_seconds: int | None) -> None:
        """Answered from the cache (or, coalesced, from another request's upstream call)."""
        self.status = CacheStatus.HIT
        self.age_seconds = age_seconds
        self.record.cache = CacheStatus.HIT.value
        self.record.prompt_tokens, self.record.completion_tokens = prompt_tokens, completion_tokens

    def served_coalesced(self) -> None:
        """A single-flight follower: the client sees a hit (`X-Cache: HIT`,
        `X-Cache-Coalesced: 1`); the stats count it as its own outcome, COALESCED, since
        it waited for an upstream call instead of reading the cache."""
        self.coalesced = True
        self.record.cache = CacheOutcome.COALESCED.value

    def answered_upstream(self, partial: bool = False) -> None:
        """The provider answered: the request counts as the miss (or bypass) it reported.
        `partial` (some items were cached) shows as PARTIAL and counts as a miss; the
        cached items count as tokens saved."""
        if partial and self.status == CacheStatus.MISS:
            self.status = CacheStatus.PARTIAL
        counted = CacheStatus.MISS if self.status == CacheStatus.PARTIAL else self.status
        self.record.cache = counted.value

    def note_usage(self, usage: Usage | None, provider_cached: int = 0) -> int:
        """Put an answer's usage on the record (with the prompt tokens the provider served
        from its own prompt cache); returns prompt + completion tokens."""
        self.record.prompt_tokens, self.record.completion_tokens = usage or (0, 0)
        self.record.provider_cached_tokens = provider_cached
        return self.record.prompt_tokens + self.record.completion_tokens
