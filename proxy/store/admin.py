"""Cache administration: purge and inspect, with SCAN + UNLINK in batches (never KEYS,
never FLUSHDB), scoped to cache keys so tenants' limiter and stats keys are never touched."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

from proxy.core.apis import ANSWER_KINDS, ITEM_KINDS
from proxy.core.keys import KEY_VERSION, cache_key, sibling_key
from proxy.store.cache import HEADER_MAX, REQUEST_KIND, decode_entry, decode_meta
from proxy.store.connection import RedisGate, is_cluster
from proxy.store.l1 import l1_channel

_BATCH = 500
_ADMIN_TIMEOUT_S = 30.0


def cache_pattern(prefix: str, namespace: str, kind: str = "chat") -> str:
    return f"{prefix}:{KEY_VERSION}:{namespace}:{kind}:*"


async def purge(
    gate: RedisGate,
    prefix: str,
    namespaces: list[str],
    model: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> int:
    """Delete the cache entries (chat answers, the requests kept beside them, embeddings) of
    these namespaces; returns how many answers and embeddings. With `model`, only that model's
    chat answers (embedding values carry no model). Review items are not touched: they have
    their own retention, and a rejected answer is purged by its decision."""
    removed = scanned = 0
    for namespace in namespaces:
        # The requests kept beside answers go with them; embeddings record no model.
        kinds = list(ANSWER_KINDS) if model is not None else [*ANSWER_KINDS, REQUEST_KIND, *ITEM_KINDS]
        for kind in kinds:
            async for keys in key_pages(gate, cache_pattern(prefix, namespace, kind)):
                scanned += len(keys)
                if model is not None and keys:
                    keys = await _of_model(gate, keys, model)
                    beside = [sibling_key(k.decode(), REQUEST_KIND).encode() for k in keys]
                    if beside:
                        await _unlink(gate, beside)
                if keys:
                    unlinked = await _unlink(gate, keys)
                    removed += (
                        unlinked if kind != REQUEST_KIND else 0
                    )  # answers are counted, not their requests
                if progress is not None:
                    progress(scanned, removed)
        # Every replica's L1 drops this namespace's answers too (of every kind).
        await announce_purge(gate, prefix, f"{prefix}:{KEY_VERSION}:{namespace}:")
    return removed


async def announce_purge(gate: RedisGate, prefix: str, namespace_prefix: str) -> None:
    async def publish(r: Any) -> None:
        await r.publish(l1_channel(prefix), f"p {namespace_prefix}")

    await gate.run(publish)


async def key_pages(gate: RedisGate, pattern: str) -> AsyncIterator[list[bytes]]:
    """The keys matching `pattern`, a SCAN page at a time, on every primary of a cluster."""
    nodes: list[Any] = [None]
    if is_cluster(gate.client):
        # A client that has sent nothing yet does not know the nodes: ask (once; then a no-op).
        await gate.run(lambda r: r.initialize())
        nodes = gate.client.get_primaries()  # type: ignore[attr-defined]
    for node in nodes:
        cursor = 0
        while True:
            cursor, keys = await _scan_page(gate, cursor, pattern, node)
            yield keys
            if cursor == 0:
                break


async def _scan_page(gate: RedisGate, cursor: int, pattern: str, node: Any) -> tuple[int, list[bytes]]:
    async def page(r: Any) -> tuple[int, list[bytes]]:
        if node is None:
            next_cursor, keys = await r.scan(cursor, match=pattern, count=_BATCH)
        else:  # the cluster client answers {node name: cursor}
            cursors, keys = await r.scan(cursor=cursor, match=pattern, count=_BATCH, target_nodes=node)
            next_cursor = cursors[node.name]
        return int(next_cursor), list(keys)

    return await gate.run(page, _ADMIN_TIMEOUT_S)


async def _unlink(gate: RedisGate, keys: list[bytes]) -> int:
    async def unlink(r: Any) -> int:
        return int(await r.unlink(*keys))

    return await gate.run(unlink, _ADMIN_TIMEOUT_S)


async def _of_model(gate: RedisGate, keys: list[bytes], model: str) -> list[bytes]:
    async def headers(r: Any) -> list[Any]:
        pipe = r.pipeline(transaction=False)
        for key in keys:
            pipe.getrange(key, 0, HEADER_MAX)
        return list(await pipe.execute())

    out = []
    for key, raw in zip(keys, await gate.run(headers, _ADMIN_TIMEOUT_S), strict=True):
        meta = decode_meta(raw) if raw else None
        if meta is not None and meta[0].model == model:
            out.append(key)
    return out


async def inspect(
    gate: RedisGate, prefix: str, digest: str, namespaces: list[str], with_answer: bool = False
) -> list[dict[str, Any]]:
    """Metadata of the entries with this digest (one per namespace that has it)."""
    found = []
    for namespace in namespaces:
        for kind in ANSWER_KINDS:
            item = await _inspect_one(gate, cache_key(prefix, namespace, kind, digest), with_answer)
            if item is not None:
                found.append({**item, "tenant": namespace})
    return found


async def _inspect_one(gate: RedisGate, key: str, with_answer: bool) -> dict[str, Any] | None:
    async def read(r: Any) -> list[Any]:
        pipe = r.pipeline(transaction=False)
        pipe.get(key) if with_answer else pipe.getrange(key, 0, HEADER_MAX)
        pipe.ttl(key)
        pipe.strlen(key)
        return list(await pipe.execute())

    raw, ttl, size = await gate.run(read)
    decoded = decode_meta(raw) if raw else None
    if decoded is None:
        return None
    meta = decoded[0]
    item: dict[str, Any] = {
        "key": key,
        "model": meta.model,
        "stored_at_ms": meta.stored_at_ms,
        "ttl_seconds": ttl,
        "size_bytes": size,
        "compressed": meta.compressed,
        "usage": {"prompt_tokens": meta.prompt_tokens, "completion_tokens": meta.completion_tokens},
    }
    if with_answer:
        entry = decode_entry(raw)
        item["answer"] = entry.body.decode(errors="replace") if entry else None
    return item
