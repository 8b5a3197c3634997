"""The response cache over Redis: one GET per lookup, one SET with a TTL per store.

A stored value is a 19-byte header, the model name, then the response JSON
(zlib-compressed when it is large), so a non-stream hit is served without parsing it:

    !B  magic/version (1)
    !B  flags (bit 0: body is zlib-compressed)
    !Q  stored_at, unix milliseconds (for the Age header)
    !I  prompt_tokens    } the answer's usage, so hits can count the tokens they saved
    !I  completion_tokens}    without decoding the body
    !B  length of the model name, then the name (UTF-8): the configured model, so purge
        and inspect can filter by model reading only the header (GETRANGE)
    ... body: an OpenAI `chat.completion` JSON object
"""

from __future__ import annotations

import struct
import time
import zlib
from dataclasses import dataclass
from typing import Any, Literal

from proxy.core.keys import sibling_key
from proxy.store.connection import RedisGate, is_cluster, script
from proxy.store.l1 import L1Cache

_HEADER = struct.Struct("!BBQIIB")
HEADER_MAX = _HEADER.size + 255
_MAGIC = 1
_ZLIB = 1
_U32 = 0xFFFFFFFF
REQUEST_KIND = "req"  # `...:req:{<digest>}`: the request kept beside an answer, for reviewers


@dataclass(frozen=True, slots=True)
class EntryMeta:
    model: str
    stored_at_ms: int
    prompt_tokens: int
    completion_tokens: int
    compressed: bool


@dataclass(frozen=True, slots=True)
class Entry:
    body: bytes
    stored_at_ms: int
    prompt_tokens: int
    completion_tokens: int
    model: str = ""

    def age_seconds(self, now_ms: int | None = None) -> int:
        now_ms = now_ms if now_ms is not None else int(time.time() * 1000)
        return max(0, (now_ms - self.stored_at_ms) // 1000)


def encode_entry(
    body: bytes,
    prompt_tokens: int,
    completion_tokens: int,
    compress_min_bytes: int,
    now_ms: int,
    model: str = "",
) -> bytes:
    flags = 0
    if len(body) >= compress_min_bytes:
        packed = zlib.compress(body, 6)
        if len(packed) < len(body):
            body, flags = packed, _ZLIB
    name = model.encode()[:255]
    header = _HEADER.pack(
        _MAGIC, flags, now_ms, min(prompt_tokens, _U32), min(completion_tokens, _U32), len(name)
    )
    return header + name + body


def decode_meta(raw: bytes) -> tuple[EntryMeta, int] | None:
    """The header alone (works on a GETRANGE prefix), and where the body starts."""
    if len(raw) < _HEADER.size:
        return None
    magic, flags, stored_at, prompt, completion, name_len = _HEADER.unpack_from(raw)
    start = _HEADER.size + name_len
    if magic != _MAGIC or len(raw) < start:
        return None
    model = raw[_HEADER.size : start].decode(errors="replace")
    return EntryMeta(model, stored_at, prompt, completion, bool(flags & _ZLIB)), start


def pack_blob(data: bytes, compress_min_bytes: int) -> bytes:
    """A flag byte (1: zlib) then the data: how the request beside an entry is stored."""
    if len(data) >= compress_min_bytes:
        packed = zlib.compress(data, 6)
        if len(packed) < len(data):
            return b"\x01" + packed
    return b"\x00" + data


def unpack_blob(raw: bytes) -> bytes | None:
    if not raw:
        return None
    try:
        return zlib.decompress(raw[1:]) if raw[0] == 1 else raw[1:]
    except zlib.error:
        return None


def decode_entry(raw: bytes) -> Entry | None:
    """The entry, or None for a value this version cannot read (treated as a miss)."""
    decoded = decode_meta(raw)
    if decoded is None:
        return None
    meta, start = decoded
    body = raw[start:]
    if meta.compressed:
        try:
            body = zlib.decompress(body)
        except zlib.error:
            return None
    return Entry(body, meta.stored_at_ms, meta.prompt_tokens, meta.completion_tokens, meta.model)


# What a put did: stored, or not because the answer is over cache.max_entry_bytes or the key
# holds an answer a reviewer pinned.
Stored = Literal["stored", "too_large", "pinned"]


class CacheStore:
    """Get and put whole responses; every key written carries a TTL."""

    def __init__(
        self,
        gate: RedisGate,
        max_entry_bytes: int,
        compress_min_bytes: int,
        l1: L1Cache | None = None,
        l1_channel: str = "",
    ) -> None:
        self._gate = gate
        self.max_entry_bytes = max_entry_bytes
        self._compress_min = compress_min_bytes
        self._l1 = l1
        self._l1_channel = l1_channel
        self._store = script(gate.client, "store.lua")

    @property
    def gate(self) -> RedisGate:
        """The Redis connection behind the cache (record and replay read and write beside it)."""
        return self._gate

    async def get(self, key: str) -> Entry | None:
        """At most one round trip (none on an L1 hit). Raises StoreUnavailable when Redis fails."""
        l1 = self._l1
        if l1 is None:
            raw = await self._gate.command("GET", key)
            # The client is created without decode_responses, so values are bytes.
            return decode_entry(raw) if isinstance(raw, bytes) else None
        entry: Entry | None = l1.get(key)
        if entry is None:
            raw, pttl = await self._gate.commands([("GET", key), ("PTTL", key)])
            if not isinstance(raw, bytes):
                return None
            entry = decode_entry(raw)
            if entry is not None:  # kept decoded: immutable, and a hit then decodes nothing
                l1.put(key, entry, pttl / 1000, len(entry.body) + len(entry.model))
        return entry

    async def put(
        self,
        key: str,
        body: bytes,
        prompt_tokens: int,
        completion_tokens: int,
        ttl_seconds: int,
        model: str = "",
        request: bytes | None = None,
        release: tuple[list[str], list[Any]] | None = None,
    ) -> Stored:
        """Store a complete answer (and, when given, its request beside it, for reviewers)
        in one round trip, unless it is over the size cap or a reviewer pinned the answer
        this key holds. `release` (`SingleFlight.release_spec`) ends a leader's flight in
        the same script; it is released only when the script ran ("stored" or "pinned")."""
        if len(body) > self.max_entry_bytes:
            return "too_large"
        now_ms = int(time.time() * 1000)
        value = encode_entry(body, prompt_tokens, completion_tokens, self._compress_min, now_ms, model)
        # The pin check, SET, the request beside it, the L1 announcement and the flight's
        # release (lua/store.lua).
        kept = pack_blob(request, self._compress_min) if request is not None else b""
        keys = [key, sibling_key(key, "rv:item"), sibling_key(key, REQUEST_KIND)]
        args: list[Any] = [value, ttl_seconds, self._l1_channel, kept]
        if release is not None:
            keys += release[0]
            args += release[1]
        done = await self._gate.script(self._store, keys, args)
        return "stored" if done == 1 else "pinned"

    async def get_items(self, keys: list[str]) -> list[bytes | None]:
        """Raw values of per-item entries (embeddings), in order: one MGET (one per slot,
        sent together, on a cluster). Raises StoreUnavailable when Redis fails."""

        async def mget(r: Any) -> list[Any]:
            if is_cluster(r):  # the items live in many slots
                return list(await r.mget_nonatomic(keys))
            return list(await r.mget(keys))

        values = await self._gate.run(mget)
        return [v if isinstance(v, bytes) else None for v in values]

    async def put_items(self, keys: list[str], values: list[bytes], ttl_seconds: int) -> int:
        """Store per-item entries in one pipeline, each with the TTL, skipping any over
        cache.max_entry_bytes; returns how many were written."""
        fitting = [(k, v) for k, v in zip(keys, values, strict=True) if len(v) <= self.max_entry_bytes]

        async def write(r: Any) -> None:
            pipe = r.pipeline(transaction=False)
            for key, value in fitting:
                pipe.set(key, value, ex=ttl_seconds)
            await pipe.execute()

        if fitting:
            await self._gate.run(write)
        return len(fitting)
