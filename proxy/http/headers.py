"""The response headers of a cached endpoint, built from its `ProxyRequest`: the one place
that decides what a client is told about the cache and its rate limits."""

from __future__ import annotations

from proxy.core.budgets import budget_headers
from proxy.core.limits import rate_headers
from proxy.service.request import ProxyRequest

Headers = list[tuple[bytes, bytes]]


def response_headers(req: ProxyRequest, request_id: str) -> Headers:
    """`X-Cache-Key` (the answer's digest), `X-Cache`, `Age` and `X-Cache-Coalesced` on
    hits, `X-Cache-Hits` for per-item endpoints, OpenAI's `x-ratelimit-*` when the request
    passed a limiter, `x-budget-*` when its tenant has a budget, and `X-Request-Id`."""
    out: Headers = []
    if req.digest:
        out.append((b"x-cache-key", req.digest.encode()))
    out.append((b"x-cache", req.status.value.encode()))
    if req.age_seconds is not None:
        out.append((b"age", str(req.age_seconds).encode()))
    if req.coalesced:
        out.append((b"x-cache-coalesced", b"1"))
    if req.item_hits is not None:
        out.append((b"x-cache-hits", f"{req.item_hits[0]}/{req.item_hits[1]}".encode()))
    if req.rate is not None:
        rate = req.rate
        for name, value in rate_headers(rate.buckets, rate.levels, rate.resets_ms).items():
            out.append((name.encode(), value.encode()))
    if req.budget_view is not None:
        for name, value in budget_headers(*req.budget_view).items():
            out.append((name.encode(), value.encode()))
    out.append((b"x-request-id", request_id.encode()))
    return out


def failure_headers(req: ProxyRequest | None, extra: dict[str, str], request_id: str) -> Headers:
    """An error answer's headers: the error's own (Retry-After, x-ratelimit-*, ...), the
    `x-budget-*` of a request that had reserved in its budgets, and `X-Request-Id`."""
    out: Headers = [(k.lower().encode(), v.encode()) for k, v in extra.items()]
    if req is not None and req.budget_view is not None and "x-budget-limit-usd" not in extra:
        for name, value in budget_headers(*req.budget_view).items():
            out.append((name.encode(), value.encode()))
    out.append((b"x-request-id", request_id.encode()))
    return out
