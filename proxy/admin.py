"""Cache administration: purge and inspect, with SCAN + UNLINK in batches (never KEYS,
never FLUSHDB), scoped to cache keys so tenants' limiter and stats keys are never touched."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from proxy.cache import HEADER_MAX, decode_entry, decode_meta
from proxy.keys import KEY_VERSION
from proxy.l1 import l1_channel
from proxy.redis_conn import RedisGate

_BATCH = 500
_ADMIN_TIMEOUT_S = 30.0


def cache_pattern(prefix: str, namespace: str, digest: str = "*") -> str:
    return f"{prefix}:{KEY_VERSION}:{namespace}:chat:{digest}"


async def purge(
    gate: RedisGate,
    prefix: str,
    namespaces: list[str],
    model: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> int:
    """Delete the cache entries (chat answers and embeddings) of these namespaces; returns how
    many. With `model`, only that model's chat answers (embedding values carry no model)."""
    removed = scanned = 0
    for namespace in namespaces:
        chat = cache_pattern(prefix, namespace)
        patterns = [chat] if model is not None else [chat, f"{prefix}:{KEY_VERSION}:{namespace}:emb:*"]
        for pattern in patterns:
            cursor = 0
            while True:
                cursor, keys = await _scan_page(gate, cursor, pattern)
                scanned += len(keys)
                if model is not None and keys:
                    keys = await _of_model(gate, keys, model)
                if keys:
                    removed += await _unlink(gate, keys)
                if progress is not None:
                    progress(scanned, removed)
                if cursor == 0:
                    break
        # Every replica's L1 drops this namespace's entries too.
        await _announce_purge(gate, prefix, chat)
    return removed


async def _announce_purge(gate: RedisGate, prefix: str, pattern: str) -> None:
    async def publish(r: Any) -> None:
        await r.publish(l1_channel(prefix), f"p {pattern.rstrip('*')}")

    await gate.run(publish)


async def _scan_page(gate: RedisGate, cursor: int, pattern: str) -> tuple[int, list[bytes]]:
    async def page(r: Any) -> tuple[int, list[bytes]]:
        next_cursor, keys = await r.scan(cursor, match=pattern, count=_BATCH)
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
        key = cache_pattern(prefix, namespace, digest)

        async def read(r: Any, k: str = key) -> list[Any]:
            pipe = r.pipeline(transaction=False)
            pipe.get(k) if with_answer else pipe.getrange(k, 0, HEADER_MAX)
            pipe.ttl(k)
            pipe.strlen(k)
            return list(await pipe.execute())

        raw, ttl, size = await gate.run(read)
        decoded = decode_meta(raw) if raw else None
        if decoded is None:
            continue
        meta = decoded[0]
        item: dict[str, Any] = {
            "key": key,
            "tenant": namespace,
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
        found.append(item)
    return found
