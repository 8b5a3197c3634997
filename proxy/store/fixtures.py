"""Record and replay in Redis: cached answers out to fixture lines and back, the requests
kept beside embeddings items in record mode, and the recorded requests replay mode
compares a miss with. The line format and its checks are `proxy.core.fixture_format`.

Every read scans (SCAN, every primary of a cluster: never KEYS) one entry kind of one
namespace and reads each entry with the request beside it (`...:req:{<digest>}`) in one
pipeline per page. Every write is a per-key SET with a TTL, the request before the answer
(both in the entry's `{<digest>}` slot), pipelined; so an import runs unchanged on Redis
Cluster, and a reader never finds an imported answer without its request.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from proxy.core.apis.embeddings import pack_vector, stored_at_of, unpack_vector
from proxy.core.fixture_format import ENDPOINT_OF_KIND, ENDPOINTS, Fixture, Placed, canonical_request
from proxy.core.keys import KEY_VERSION, cache_key, digest_in, sibling_key
from proxy.store.admin import announce_purge, cache_pattern, key_pages
from proxy.store.cache import (
    HEADER_MAX,
    REQUEST_KIND,
    decode_entry,
    decode_meta,
    encode_entry,
    pack_blob,
    unpack_blob,
)
from proxy.store.connection import RedisGate

_TIMEOUT_S = 30.0
_WRITE_BATCH = 200
Progress = Callable[[int], None]


@dataclass
class Exported:
    fixtures: list[Fixture] = field(default_factory=list)
    without_request: int = 0  # answers stored with no request beside them: not exportable


async def export(
    gate: RedisGate,
    prefix: str,
    namespaces: list[str],
    kinds: list[str],
    model: str | None = None,
    progress: Progress | None = None,
) -> Exported:
    """Every entry of these kinds in these namespaces (of `model` only, when given), as
    fixture lines sorted so that exporting the same cache twice gives the same file."""
    out = Exported()
    for namespace in namespaces:
        for kind in kinds:
            async for keys in key_pages(gate, cache_pattern(prefix, namespace, kind)):
                for key, value, request in await _read_beside(gate, keys, full=True):
                    fixture = _fixture(namespace, kind, key, value, request)
                    if fixture is None:
                        out.without_request += value is not None and request is None
                    elif model is None or fixture.model == model:
                        out.fixtures.append(fixture)
                if progress is not None:
                    progress(len(keys))
    out.fixtures.sort(key=Fixture.sort_key)
    return out


def _fixture(namespace: str, kind: str, key: str, value: bytes | None, raw: bytes | None) -> Fixture | None:
    if value is None or raw is None:
        return None
    body = _json_object(unpack_blob(raw))
    if body is None:
        return None
    endpoint = ENDPOINT_OF_KIND[kind]
    digest = digest_in(key)
    if endpoint == "embeddings":
        unpacked = unpack_vector(value)
        model = body.get("model")
        if unpacked is None or not isinstance(model, str):
            return None
        meta = {"digest": digest, "tokens": unpacked[1], "stored_at_ms": stored_at_of(value)}
        vector = {"object": "embedding", "embedding": base64.b64encode(unpacked[0]).decode()}
        return Fixture(namespace, endpoint, model, body, vector, meta)
    entry = decode_entry(value)
    answer = _json_object(entry.body) if entry is not None else None
    if entry is None or answer is None:
        return None
    meta = {
        "digest": digest,
        "prompt_tokens": entry.prompt_tokens,
        "completion_tokens": entry.completion_tokens,
        "stored_at_ms": entry.stored_at_ms,
    }
    request_of = canonical_request(ENDPOINTS[endpoint], body, entry.model)
    return Fixture(namespace, endpoint, entry.model, request_of, answer, meta)


def _json_object(raw: bytes | None) -> dict[str, Any] | None:
    """A stored JSON object, or None for anything this version cannot read (skipped)."""
    try:
        value = orjson.loads(raw) if raw else None
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


async def _read_beside(
    gate: RedisGate, keys: list[bytes], full: bool
) -> list[tuple[str, bytes | None, bytes | None]]:
    """(key, the entry's value or header, the request beside it) for each key, one pipeline."""
    if not keys:
        return []
    names = [k.decode() for k in keys]

    async def read(r: Any) -> list[Any]:
        pipe = r.pipeline(transaction=False)
        for name in names:
            pipe.get(name) if full else pipe.getrange(name, 0, HEADER_MAX)
            pipe.get(sibling_key(name, REQUEST_KIND))
        return list(await pipe.execute())

    values = await gate.run(read, _TIMEOUT_S)
    return [(name, values[2 * i] or None, values[2 * i + 1] or None) for i, name in enumerate(names)]


async def write(
    gate: RedisGate,
    prefix: str,
    placed: list[Placed],
    ttls: list[int],
    compress_min_bytes: int,
    progress: Progress | None = None,
) -> int:
    """Write checked fixture lines (each with its TTL): the request, then the answer, per
    key; then every replica's L1 drops the namespaces written, as after a purge. Returns
    how many were written."""
    now_ms = int(time.time() * 1000)
    written = 0
    for start in range(0, len(placed), _WRITE_BATCH):
        batch = list(
            zip(placed[start : start + _WRITE_BATCH], ttls[start : start + _WRITE_BATCH], strict=True)
        )
        pairs = [_values(p, compress_min_bytes, now_ms) for p, _ in batch]
        keys = [cache_key(prefix, p.namespace, p.kind, p.digest) for p, _ in batch]

        async def put(r: Any, batch: Any = batch, pairs: Any = pairs, keys: Any = keys) -> None:
            pipe = r.pipeline(transaction=False)
            for key, (value, request), (_, ttl) in zip(keys, pairs, batch, strict=True):
                pipe.set(sibling_key(key, REQUEST_KIND), request, ex=ttl)
                pipe.set(key, value, ex=ttl)
            await pipe.execute()

        await gate.run(put, _TIMEOUT_S)
        written += len(batch)
        if progress is not None:
            progress(len(batch))
    for namespace in sorted({p.namespace for p in placed}):
        await announce_purge(gate, prefix, f"{prefix}:{KEY_VERSION}:{namespace}:")  # replicas' L1s
    return written


def _values(placed: Placed, compress_min_bytes: int, now_ms: int) -> tuple[bytes, bytes]:
    """The entry's value and the request's, as the proxy itself writes them."""
    fixture, meta = placed.fixture, placed.fixture.meta
    stored_at = meta.get("stored_at_ms") or now_ms
    request = {**fixture.request, "model": placed.model.name}
    kept = pack_blob(orjson.dumps(request), compress_min_bytes)
    if placed.vector is not None:
        return pack_vector(placed.vector, meta.get("tokens", 0), stored_at), kept
    body = orjson.dumps(fixture.answer)
    prompt, completion = meta.get("prompt_tokens", 0), meta.get("completion_tokens", 0)
    return encode_entry(body, prompt, completion, compress_min_bytes, stored_at, placed.model.name), kept


async def keep_item_requests(
    gate: RedisGate, keys: list[str], requests: list[dict[str, Any]], ttl: int, compress_min_bytes: int
) -> None:
    """Record mode: each embeddings item's request beside its vector, so it can be exported."""

    async def put(r: Any) -> None:
        pipe = r.pipeline(transaction=False)
        for key, request in zip(keys, requests, strict=True):
            pipe.set(
                sibling_key(key, REQUEST_KIND), pack_blob(orjson.dumps(request), compress_min_bytes), ex=ttl
            )
        await pipe.execute()

    await gate.run(put)


@dataclass
class Recorded:
    """Recorded requests of one endpoint and model, for replay's nearest-request search."""

    requests: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # (digest, body)
    capped: bool = False  # more entries exist than were looked at


async def recorded_requests(
    gate: RedisGate, prefix: str, namespace: str, kind: str, model: str, cap: int = 1000
) -> Recorded:
    """The requests kept beside this namespace's entries of `kind` and `model`, looking at
    no more than `cap` entries (a replay miss pays for this, nothing else does)."""
    out, seen = Recorded(), 0
    items = ENDPOINT_OF_KIND[kind] == "embeddings"
    async for keys in key_pages(gate, cache_pattern(prefix, namespace, kind)):
        if seen + len(keys) > cap:
            keys, out.capped = keys[: cap - seen], True
        seen += len(keys)
        for key, head, raw in await _read_beside(gate, keys, full=False):
            body = _json_object(unpack_blob(raw)) if raw else None
            if body is None:
                continue
            if items:
                stored_model = body.get("model")
            else:
                decoded = decode_meta(head) if head else None
                stored_model = decoded[0].model if decoded else None
            if stored_model == model:
                out.requests.append((digest_in(key), body))
        if out.capped:
            break
    return out
