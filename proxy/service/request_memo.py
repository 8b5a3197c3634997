"""What a request's bytes resolve to, remembered: a repeated identical request (the hot
key of a cache) skips validation, key normalization, sha256 and the cache controls.

Keyed by everything those read: the endpoint's adapter, the tenant, the headers the
pipeline reads (`RequestMeta`: Cache-Control, X-Cache-TTL, X-End-User) and the body's
exact bytes. One memo per `Pipeline`, i.e. per config generation, so a reload (models,
TTLs, tenants) starts empty. Only requests that passed every check are remembered; the
body is still parsed per request, so every request owns its `body` dict (later stages may
change theirs). Bounded by bytes (LRU), with large bodies left out: those are rarely
repeated, and a few would evict all the rest.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from proxy.config import ModelConfig
from proxy.core.cache_controls import CacheControls, RequestMeta

_PER_ENTRY_OVERHEAD = 400  # the key tuple, the Keyed object, the dict slot: counted too
DEFAULT_MAX_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Keyed:
    """What `Stages.prepare` and the digest made of one request."""

    model: ModelConfig
    controls: CacheControls
    stream: bool
    digest: str
    key: str
    include_usage: bool


MemoKey = tuple[Any, str, RequestMeta, bytes]


class RequestMemo:
    """An LRU map `(adapter, tenant, meta, body bytes) -> Keyed`, bounded by bytes."""

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.max_bytes = max_bytes
        self._largest = max_bytes // 64
        self._items: OrderedDict[MemoKey, Keyed] = OrderedDict()
        self.size = 0

    def get(self, key: MemoKey) -> Keyed | None:
        found = self._items.get(key)
        if found is not None:
            self._items.move_to_end(key)
        return found

    def put(self, key: MemoKey, keyed: Keyed) -> None:
        cost = _cost(key)
        if cost > self._largest or key in self._items:
            return
        self._items[key] = keyed
        self.size += cost
        while self.size > self.max_bytes:
            oldest, _ = self._items.popitem(last=False)
            self.size -= _cost(oldest)

    def __len__(self) -> int:
        return len(self._items)


def _cost(key: MemoKey) -> int:
    meta = key[2]
    headers = sum(len(v) for v in (meta.cache_control, meta.cache_ttl, meta.end_user) if v is not None)
    return len(key[3]) + len(key[1]) + headers + _PER_ENTRY_OVERHEAD
