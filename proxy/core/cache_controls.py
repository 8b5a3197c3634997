"""The request-level values every endpoint shares: the headers the pipeline reads, the
cache controls they resolve to, and the cache status a response reports."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from proxy.config import Config, ModelConfig, TenantConfig
from proxy.errors import InvalidRequest


class CacheStatus(StrEnum):
    """What `X-Cache` says: served from the cache, fetched (the cache was asked and had no
    answer), fetched without asking the cache, or (embeddings) some items from each."""

    HIT = "HIT"
    MISS = "MISS"
    BYPASS = "BYPASS"
    PARTIAL = "PARTIAL"


@dataclass(frozen=True, slots=True)
class RequestMeta:
    """The request headers the pipeline reads (names already lower-cased by the server)."""

    cache_control: str | None = None
    cache_ttl: str | None = None
    end_user: str | None = None


@dataclass(frozen=True, slots=True)
class CacheControls:
    lookup: bool
    store: bool
    ttl: int
    # Keep the request beside the stored answer even without `review.keep_prompts`: a
    # tenant in `cache_mode: record` (its answers become fixtures, which need the request).
    keep_request: bool = False


def cache_controls(
    meta: RequestMeta, config: Config, tenant: TenantConfig, model: ModelConfig
) -> CacheControls:
    """`Cache-Control: no-cache` skips the lookup, `no-store` skips the write; X-Cache-TTL
    sets the TTL (capped by cache.max_ttl_seconds; 0 means do not store). The same rules
    for every endpoint.

    A tenant in `cache_mode: record` stores with its `record_ttl_seconds` (X-Cache-TTL
    still applies, capped by it) and keeps every request; one in `replay` always looks up
    (`no-cache` would send the request upstream, which replay never does) and never
    stores."""
    directives = {d.strip().lower() for d in (meta.cache_control or "").split(",")}
    record = tenant.cache_mode == "record"
    ttl = tenant.cache_ttl_seconds or model.cache_ttl_seconds or config.cache.ttl_seconds
    if record:
        ttl = tenant.record_ttl_seconds
    if meta.cache_ttl is not None:
        try:
            ttl = int(meta.cache_ttl)
        except ValueError:
            ttl = -1
        if ttl < 0:
            raise InvalidRequest(
                "X-Cache-TTL must be a whole number of seconds (0 = do not store).",
                param="X-Cache-TTL",
            )
    ttl = min(ttl, tenant.record_ttl_seconds if record else config.cache.max_ttl_seconds)
    if tenant.cache_mode == "replay":
        return CacheControls(lookup=True, store=False, ttl=ttl)
    return CacheControls(
        lookup="no-cache" not in directives,
        store="no-store" not in directives and ttl > 0,
        ttl=ttl,
        keep_request=record,
    )
