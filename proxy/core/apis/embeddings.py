"""POST /v1/embeddings, cached per input item.

A batch of 100 texts of which 90 are cached sends only the 10 missing ones upstream (one
call, split only past the model's batch size), then answers all 100 in order; `usage`
counts only what went upstream. One MGET looks every item up. Each item's key covers the
tenant (or "shared"), the upstream model, `dimensions` and the exact text or token array,
not `encoding_format`: the vector is stored once, as little-endian float32 (half the
size of JSON floats, and exactly what OpenAI's base64 format is), and served as either.

    <prefix>:v1:<ns>:emb:<sha256>   string: !B version, !Q stored_at ms, !I tokens, float32[]
"""

from __future__ import annotations

import array
import base64
import contextlib
import hashlib
import struct
import sys
import time
from dataclasses import dataclass
from typing import Any

import orjson

from proxy.config import Config, ModelConfig, TenantConfig
from proxy.core.keys import cache_key
from proxy.core.tokens import count_text, encoding, encoding_name
from proxy.core.validation import parse_json_object
from proxy.errors import InvalidRequest, ModelNotFound, StoreUnavailable
from proxy.stats.recorder import RequestRecord
from proxy.store.connection import RedisGate, is_cluster
from proxy.store.ratelimit import RateLimiter
from proxy.upstream.litellm_upstream import Upstreams

_HEADER = struct.Struct("!BQI")
_VERSION = 1
_LITTLE = sys.byteorder == "little"
Item = str | list[int]


def pack_vector(vector: list[float], tokens: int, now_ms: int) -> bytes:
    floats = array.array("f", vector)
    if not _LITTLE:
        floats.byteswap()
    return _HEADER.pack(_VERSION, now_ms, tokens) + floats.tobytes()


def unpack_vector(raw: bytes) -> tuple[bytes, int] | None:
    """(little-endian float32 bytes, tokens), or None for a value this version cannot read."""
    if len(raw) < _HEADER.size or raw[0] != _VERSION or (len(raw) - _HEADER.size) % 4:
        return None
    _, _, tokens = _HEADER.unpack_from(raw)
    return raw[_HEADER.size :], tokens


def floats_of(le_bytes: bytes) -> list[float]:
    floats = array.array("f")
    floats.frombytes(le_bytes)
    if not _LITTLE:
        floats.byteswap()
    return floats.tolist()


@dataclass(frozen=True, slots=True)
class EmbeddingRequest:
    model: ModelConfig
    items: list[Item]
    tokens: list[int]
    base64: bool
    dimensions: int | None
    user: str | None


def parse_embedding_request(raw: bytes, config: Config, record: RequestRecord) -> EmbeddingRequest:
    body = parse_json_object(raw)
    name = body.get("model")
    if not isinstance(name, str) or not name:
        raise InvalidRequest("You must provide a model parameter.", param="model")
    model = config.model_index.get(name)
    if model is None:
        raise ModelNotFound(
            f"The model '{name}' does not exist or you do not have access to it.", param="model"
        )
    record.model = model.name
    items = _items(body.get("input"))
    fmt = body.get("encoding_format") or "float"
    if fmt not in ("float", "base64"):
        raise InvalidRequest(
            "Invalid value for 'encoding_format': expected 'float' or 'base64'.", param="encoding_format"
        )
    dimensions = body.get("dimensions")
    if dimensions is not None and (
        not isinstance(dimensions, int) or isinstance(dimensions, bool) or dimensions < 1
    ):
        raise InvalidRequest(
            "Invalid value for 'dimensions': expected a positive integer.", param="dimensions"
        )
    enc = encoding(encoding_name(model))
    tokens = [count_text(i, enc) if isinstance(i, str) else len(i) for i in items]
    for i, n in enumerate(tokens):
        if n > model.max_input_tokens:
            raise InvalidRequest(
                f"Input {i} has {n} tokens; this model accepts at most {model.max_input_tokens} per input.",
                param=f"input[{i}]",
            )
    user = body.get("user") if isinstance(body.get("user"), str) else None
    return EmbeddingRequest(model, items, tokens, fmt == "base64", dimensions, user)


def _items(value: object) -> list[Item]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value:
        raise InvalidRequest("'input' must be a non-empty string or array.", param="input")
    if all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return [value]  # one token array
    if all(isinstance(v, str) for v in value):
        for i, text in enumerate(value):
            if not text:
                raise InvalidRequest(f"Input {i} is an empty string.", param=f"input[{i}]")
        return list(value)
    if all(
        isinstance(v, list) and v and all(isinstance(t, int) and not isinstance(t, bool) for t in v)
        for v in value
    ):
        return list(value)
    raise InvalidRequest(
        "'input' must be a string, an array of strings, an array of tokens, or an array of token arrays "
        "(not a mix).",
        param="input",
    )


def item_key(prefix: str, namespace: str, model: ModelConfig, dimensions: int | None, item: Item) -> str:
    canonical = orjson.dumps([model.litellm_model, model.api_base or "", dimensions, item])
    return cache_key(prefix, namespace, "emb", hashlib.sha256(canonical).hexdigest())


class EmbeddingService:
    def __init__(self, config: Config, gate: RedisGate, upstreams: Upstreams, limiter: RateLimiter) -> None:
        self.config = config
        self._gate = gate
        self._upstreams = upstreams
        self._limiter = limiter

    async def embed(
        self, tenant: TenantConfig, raw: bytes, record: RequestRecord, end_user: str | None = None
    ) -> tuple[bytes, dict[str, str]]:
        req = parse_embedding_request(raw, self.config, record)
        ttl = tenant.cache_ttl_seconds or req.model.cache_ttl_seconds or self.config.cache.ttl_seconds
        namespace = self.config.cache.namespace(tenant.name)
        keys = [
            item_key(self.config.redis.key_prefix, namespace, req.model, req.dimensions, i) for i in req.items
        ]
        found: list[bytes | None] = [None] * len(keys)
        saved = 0
        try:
            values = await self._gate.run(lambda r: _mget(r, keys))
        except StoreUnavailable:
            values, record.redis_error = [None] * len(keys), True
        for i, value in enumerate(values):
            unpacked = unpack_vector(value) if isinstance(value, bytes) else None
            if unpacked is not None:
                found[i], saved = unpacked[0], saved + unpacked[1]
        missing = [i for i, v in enumerate(found) if v is None]
        headers = {"X-Cache-Hits": f"{len(keys) - len(missing)}/{len(keys)}"}
        upstream_tokens = 0
        if missing:
            upstream_tokens = await self._fetch(
                tenant, req, keys, missing, found, headers, end_user or req.user, ttl
            )
        status = "HIT" if not missing else ("MISS" if len(missing) == len(keys) else "PARTIAL")
        headers["X-Cache"] = status
        record.cache = "HIT" if status == "HIT" else "MISS"
        record.saved_tokens, record.prompt_tokens = saved, upstream_tokens
        data = [
            {
                "object": "embedding",
                "index": i,
                "embedding": base64.b64encode(v).decode() if req.base64 else floats_of(v),
            }
            for i, v in enumerate(found)
            if v is not None
        ]
        body = {
            "object": "list",
            "data": data,
            "model": req.model.name,
            "usage": {"prompt_tokens": upstream_tokens, "total_tokens": upstream_tokens},
        }
        return orjson.dumps(body), headers

    async def _fetch(
        self,
        tenant: TenantConfig,
        req: EmbeddingRequest,
        keys: list[str],
        missing: list[int],
        found: list[bytes | None],
        headers: dict[str, str],
        end_user: str | None,
        ttl: int,
    ) -> int:
        """Embed the missing items upstream (in batches), store them, fill `found`; returns tokens used."""
        buckets = self._limiter.plan(tenant, req.model.name, end_user)
        reservation = None
        if buckets:
            reservation = await self._limiter.acquire(buckets, sum(req.tokens[i] for i in missing))
            if reservation is not None:
                headers.update(reservation.headers())
        upstream = self._upstreams.for_model(req.model)
        used = 0
        batch = req.model.embedding_batch_size
        try:
            for start in range(0, len(missing), batch):
                part = missing[start : start + batch]
                vectors, tokens = await upstream.embed(
                    req.model, [req.items[i] for i in part], req.dimensions
                )
                used += tokens
                now_ms = int(time.time() * 1000)
                packed = [pack_vector(v, req.tokens[i], now_ms) for i, v in zip(part, vectors, strict=True)]
                for i, value in zip(part, packed, strict=True):
                    found[i] = value[_HEADER.size :]
                await self._store([keys[i] for i in part], packed, ttl)
        except BaseException:
            self._limiter.settle(reservation, used)
            raise
        self._limiter.settle(reservation, used)
        return used

    async def _store(self, keys: list[str], values: list[bytes], ttl: int) -> None:
        async def write(r: Any) -> None:
            pipe = r.pipeline(transaction=False)
            for key, value in zip(keys, values, strict=True):
                pipe.set(key, value, ex=ttl)
            await pipe.execute()

        with contextlib.suppress(StoreUnavailable):  # the answer is served; it is just not cached
            await self._gate.run(write)


async def _mget(r: Any, keys: list[str]) -> list[Any]:
    if is_cluster(r):  # the items live in many slots: one MGET per slot, sent together
        return list(await r.mget_nonatomic(keys))
    return list(await r.mget(keys))
