"""Stats in Redis: the counter hashes, the events stream, the cache footprint.

The only code that sends stats commands, and the only one that knows their key names
(docs/keyspace.md). A counter arrives summed per (tenant, unix minute, field) and is
added into that minute's, hour's and day's hash and the all-time hash, in one pipeline:

    <prefix>:v1:{<tenant>}:stats:m:<unix minute>   hash, TTL 2 h    (last hour)
    <prefix>:v1:{<tenant>}:stats:h:<unix hour>     hash, TTL 8 days (last 24 h)
    <prefix>:v1:{<tenant>}:stats:d:<unix day>      hash, TTL 35 days (last 7 days)
    <prefix>:v1:{<tenant>}:stats:all               hash, no TTL: all-time totals, bounded
                                                   by models x fields (docs/keyspace.md)
    <prefix>:v1:events                             stream, XADD MAXLEN ~ N, TTL refreshed

Fields are opaque strings here: what they mean is proxy.stats.schema's business (the
layer above; this module imports nothing from it).
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from proxy.core.apis import ANSWER_KINDS
from proxy.core.keys import KEY_VERSION
from proxy.store.admin import cache_pattern
from proxy.store.connection import RedisGate

Span = Literal["m", "h", "d"]
SPAN_SECONDS: dict[Span, int] = {"m": 60, "h": 3600, "d": 86400}
SPAN_TTL: dict[Span, int] = {"m": 2 * 3600, "h": 8 * 86400, "d": 35 * 86400}

# (tenant, unix minute, field) -> amount to add
Sums = Mapping[tuple[str, int, str], int]


def stats_key(prefix: str, tenant: str, suffix: str) -> str:
    """`{tenant}` is a hash tag: one tenant's hashes share a cluster slot."""
    return f"{prefix}:{KEY_VERSION}:{{{tenant}}}:stats:{suffix}"


def events_key(prefix: str) -> str:
    return f"{prefix}:{KEY_VERSION}:events"


@dataclass(frozen=True, slots=True)
class Bucket:
    """One counter hash: a tenant's time bucket `index` (unix seconds // SPAN_SECONDS[span]),
    or with no span its all-time totals."""

    tenant: str
    span: Span | None = None
    index: int = 0


class StatsStore:
    def __init__(self, gate: RedisGate, prefix: str) -> None:
        self._gate = gate
        self._prefix = prefix

    def key(self, bucket: Bucket) -> str:
        suffix = "all" if bucket.span is None else f"{bucket.span}:{bucket.index}"
        return stats_key(self._prefix, bucket.tenant, suffix)

    async def add(
        self, sums: Sums, events: Sequence[Mapping[str, str]], events_max: int, events_ttl_s: int
    ) -> None:
        """HINCRBY every sum into its buckets and XADD the events, in one pipeline; every
        time bucket and the stream get their TTL. Raises StoreUnavailable (nothing is
        known to be written then: the caller keeps its sums)."""

        commands: list[tuple[Any, ...]] = []
        expire: dict[str, int] = {}
        for (tenant, minute, fld), n in sums.items():
            seconds = minute * 60
            for span, length in SPAN_SECONDS.items():
                key = self.key(Bucket(tenant, span, seconds // length))
                commands.append(("HINCRBY", key, fld, n))
                expire[key] = SPAN_TTL[span]
            commands.append(("HINCRBY", self.key(Bucket(tenant)), fld, n))
        commands += [("EXPIRE", key, ttl) for key, ttl in expire.items()]
        if events:
            stream = events_key(self._prefix)
            for event in events:
                fields = [part for pair in event.items() for part in pair]
                commands.append(("XADD", stream, "MAXLEN", "~", events_max, "*", *fields))
            commands.append(("EXPIRE", stream, events_ttl_s))
        if commands:
            await self._gate.commands(commands)  # one round trip (the pipelined lane)

    async def read(self, buckets: Sequence[Bucket]) -> list[dict[str, int]]:
        """The hashes (field -> value), in the order asked, in one pipeline."""

        async def read(r: Any) -> list[Any]:
            pipe = r.pipeline(transaction=False)
            for bucket in buckets:
                pipe.hgetall(self.key(bucket))
            return list(await pipe.execute())

        replies = await self._gate.run(read)
        return [{k.decode(): int(v) for k, v in raw.items()} for raw in replies]

    async def recent_events(self, count: int) -> list[dict[str, str]]:
        """The newest `count` events, newest first, each with its stream `id`."""
        key = events_key(self._prefix)

        async def read(r: Any) -> list[dict[str, str]]:
            rows = await r.xrevrange(key, count=count)
            return [{"id": i.decode(), **{k.decode(): v.decode() for k, v in f.items()}} for i, f in rows]

        return await self._gate.run(read)

    async def cache_footprint(self, namespaces: Sequence[str], sample_size: int) -> tuple[int, list[int]]:
        """(cache entries, MEMORY USAGE of up to `sample_size` of them, sampled uniformly):
        entries counted with SCAN, never KEYS."""
        patterns = [cache_pattern(self._prefix, ns, kind) for ns in namespaces for kind in ANSWER_KINDS]

        async def scan(r: Any) -> tuple[int, list[int]]:
            count, sample = 0, list[Any]()
            for pattern in patterns:
                async for key in r.scan_iter(match=pattern, count=1000):
                    count += 1
                    if len(sample) < sample_size:
                        sample.append(key)
                    elif random.random() < sample_size / count:
                        sample[random.randrange(sample_size)] = key
            return count, [await r.memory_usage(k) or 0 for k in sample]

        return await self._gate.run(scan)
