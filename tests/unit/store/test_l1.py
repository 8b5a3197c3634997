"""The L1 map: bounded by bytes, least recently used first out, expiry, invalidation."""

from __future__ import annotations

import time

from proxy.store.l1 import L1Cache


def make(max_bytes: int = 1024 * 1024, max_age_ms: int = 60_000) -> L1Cache:
    l1 = L1Cache(max_bytes, max_age_ms)
    l1.coherent = True
    return l1


def test_bounded_by_bytes_lru_first_out() -> None:
    l1 = make(max_bytes=1024 * 1024)
    for i in range(2000):
        l1.put(f"k{i}", b"x" * 1000, 60)
        if i == 10:
            assert l1.get("k0") is not None  # touched: k0 is now recent
    assert l1.size <= l1.max_bytes
    assert l1.get("k1999") is not None
    assert l1.get("k1") is None  # oldest untouched ones went first


def test_expiry_by_ttl_and_max_age() -> None:
    l1 = make(max_age_ms=100)
    l1.put("short", b"v", 0.05)
    l1.put("long", b"v", 3600)
    time.sleep(0.06)
    assert l1.get("short") is None
    assert l1.get("long") is not None
    time.sleep(0.05)
    assert l1.get("long") is None  # max_age caps what Redis might have evicted


def test_invalidation_messages() -> None:
    l1 = make()
    for key in ("p:v1:acme:chat:1", "p:v1:acme:chat:2", "p:v1:globex:chat:1"):
        l1.put(key, b"v", 60)
    l1.invalidate("k p:v1:acme:chat:1")
    assert l1.get("p:v1:acme:chat:1") is None and l1.get("p:v1:acme:chat:2") is not None
    l1.invalidate("p p:v1:acme:chat:")
    assert l1.get("p:v1:acme:chat:2") is None and l1.get("p:v1:globex:chat:1") is not None
    l1.invalidate("*")
    assert l1.size == 0


def test_not_used_without_invalidations() -> None:
    l1 = make()
    l1.put("k", b"v", 60)
    l1.coherent = False
    assert l1.get("k") is None
    l1.put("other", b"v", 60)
    l1.coherent = True
    assert l1.get("other") is None


def test_one_entry_cannot_take_a_large_share() -> None:
    l1 = make(max_bytes=1024 * 1024)
    l1.put("big", b"x" * 200_000, 60)
    assert l1.get("big") is None
