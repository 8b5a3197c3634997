"""The values a request passes through the pipeline, and the pure helpers on them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import orjson

from proxy.config import Config, ModelConfig, TenantConfig
from proxy.core.apis.base import Api, Usage
from proxy.errors import InvalidRequest
from proxy.stats.recorder import RequestRecord
from proxy.store.cache import Entry
from proxy.store.flight import Flight
from proxy.store.ratelimit import Reservation

JSON = "application/json"
SSE = "text/event-stream"


@dataclass(frozen=True, slots=True)
class RequestMeta:
    """The request headers the pipeline reads (names already lower-cased by the server)."""

    cache_control: str | None = None
    cache_ttl: str | None = None
    end_user: str | None = None


@dataclass(slots=True)
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes = b""
    stream: AsyncIterator[bytes] | None = None
    media_type: str = JSON


@dataclass(frozen=True, slots=True)
class CacheControls:
    lookup: bool
    store: bool
    ttl: int


def cache_controls(
    meta: RequestMeta, config: Config, tenant: TenantConfig, model: ModelConfig
) -> CacheControls:
    """`Cache-Control: no-cache` skips the lookup, `no-store` skips the write; X-Cache-TTL
    sets the TTL (capped by cache.max_ttl_seconds; 0 means do not store)."""
    directives = {d.strip().lower() for d in (meta.cache_control or "").split(",")}
    ttl = tenant.cache_ttl_seconds or model.cache_ttl_seconds or config.cache.ttl_seconds
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
    ttl = min(ttl, config.cache.max_ttl_seconds)
    return CacheControls(
        lookup="no-cache" not in directives,
        store="no-store" not in directives and ttl > 0,
        ttl=ttl,
    )


@dataclass(slots=True)
class Call:
    """What one request resolved to, passed between the pipeline's steps."""

    api: Api
    tenant: TenantConfig
    model: ModelConfig
    body: dict[str, Any]
    key: str
    controls: CacheControls
    stream: bool
    include_usage: bool
    headers: dict[str, str] = field(default_factory=dict)
    record: RequestRecord = field(default_factory=RequestRecord)
    reservation: Reservation | None = None
    prompt_estimate: int = 0
    flight: Flight | None = None  # set while this request leads a single flight


def hit_reply(call: Call, entry: Entry) -> Reply:
    """A cached answer as this request wants it (JSON, or replayed as SSE)."""
    call.headers["X-Cache"] = "HIT"
    call.headers["Age"] = str(entry.age_seconds())
    call.record.cache = "HIT"
    call.record.prompt_tokens = entry.prompt_tokens
    call.record.completion_tokens = entry.completion_tokens
    if not call.stream:
        return Reply(200, call.headers, entry.body)
    replayed = call.api.replay(orjson.loads(entry.body), call.include_usage)
    return Reply(200, call.headers, replayed, media_type=SSE)


def note_usage(record: RequestRecord, usage: Usage | None) -> int:
    """Put an answer's usage on the record; returns prompt + completion tokens."""
    record.prompt_tokens, record.completion_tokens = usage or (0, 0)
    return record.prompt_tokens + record.completion_tokens
