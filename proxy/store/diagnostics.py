"""`doctor`'s look at Redis: reachable, which version, and whether its eviction policy can
take keys the proxy cannot afford to lose.

Every key the proxy writes has a TTL except the per-tenant all-time stats counters
(docs/keyspace.md), so `volatile-*` policies evict only what can be rebuilt (cached
answers first); `allkeys-*` may evict anything, rate-limit buckets and those counters
included; `noeviction` makes writes fail once Redis is full.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from proxy.store.connection import RedisGate

Verdict = Literal["ok", "warn", "fail"]
# Features the scripts rely on (Lua with redis.call('TIME'), GETEX, ZADD NX/GT, ...) are
# all in Redis 6.2; older servers are not tested.
MIN_VERSION = (6, 2)


@dataclass(frozen=True, slots=True)
class RedisFacts:
    version: str
    policy: str
    maxmemory: int


async def redis_facts(gate: RedisGate) -> RedisFacts:
    """Version and memory policy, from INFO (CONFIG GET is often refused on managed Redis).
    Raises StoreUnavailable when Redis cannot be reached."""

    async def read(r: Any) -> tuple[Any, Any]:
        server = await r.info("server")
        memory = await r.info("memory")
        return server, memory

    server, memory = await gate.run(read)
    server, memory = _one_node(server), _one_node(memory)
    return RedisFacts(
        version=str(server.get("redis_version", "?")),
        policy=str(memory.get("maxmemory_policy", "?")),
        maxmemory=int(memory.get("maxmemory", 0) or 0),
    )


def _one_node(info: dict[str, Any]) -> dict[str, Any]:
    """A cluster client answers INFO per node ({node: {...}}); any primary will do."""
    if "redis_version" in info or "maxmemory_policy" in info:
        return info
    nested = [v for v in info.values() if isinstance(v, dict)]
    return nested[0] if nested else info


def version_verdict(version: str) -> tuple[Verdict, str]:
    try:
        parts = tuple(int(p) for p in version.split(".")[:2])
    except ValueError:
        return "warn", f"version {version!r} not understood"
    if parts < MIN_VERSION:
        needed = ".".join(map(str, MIN_VERSION))
        return "warn", f"version {version}: older than {needed}, which the proxy is tested on"
    return "ok", f"version {version}"


def eviction_verdict(policy: str, maxmemory: int) -> tuple[Verdict, str]:
    """Whether `policy` can evict keys the proxy cannot afford to lose."""
    limit = f"maxmemory {maxmemory} bytes" if maxmemory else "no maxmemory (grows until the host is full)"
    if policy.startswith("volatile-"):
        return "ok", f"maxmemory-policy {policy}, {limit}: only keys with a TTL (cached answers) are evicted"
    if policy.startswith("allkeys-"):
        return "warn", (
            f"maxmemory-policy {policy}, {limit}: Redis may evict any key, rate-limit buckets and "
            "the all-time stats counters included; use volatile-lru (every other key has a TTL)"
        )
    if policy == "noeviction" and not maxmemory:
        return "warn", (
            "maxmemory-policy noeviction and no maxmemory: Redis grows until the host runs out of "
            "memory; set maxmemory and maxmemory-policy volatile-lru"
        )
    if policy == "noeviction":
        return "warn", (
            f"maxmemory-policy noeviction, {limit}: once full, Redis refuses writes and nothing is "
            "cached any more; use volatile-lru"
        )
    return "warn", f"maxmemory-policy {policy!r} not understood, {limit}"
