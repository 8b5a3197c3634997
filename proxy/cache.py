"""The response cache over Redis: one GET per lookup, one SET with a TTL per store.

A stored value is an 18-byte header followed by the response JSON (zlib-compressed when
it is large), so a non-stream hit is served without parsing the answer:

    !B  magic/version (1)
    !B  flags (bit 0: body is zlib-compressed)
    !Q  stored_at, unix milliseconds (for the Age header)
    !I  prompt_tokens    } the answer's usage, so hits can count the tokens they saved
    !I  completion_tokens}    without decoding the body
    ... body: an OpenAI `chat.completion` JSON object
"""

from __future__ import annotations

import struct
import time
import zlib
from dataclasses import dataclass

from proxy.redis_conn import RedisGate

_HEADER = struct.Struct("!BBQII")
_MAGIC = 1
_ZLIB = 1
_U32 = 0xFFFFFFFF


@dataclass(frozen=True, slots=True)
class Entry:
    body: bytes
    stored_at_ms: int
    prompt_tokens: int
    completion_tokens: int

    def age_seconds(self, now_ms: int | None = None) -> int:
        now_ms = now_ms if now_ms is not None else int(time.time() * 1000)
        return max(0, (now_ms - self.stored_at_ms) // 1000)


def encode_entry(
    body: bytes, prompt_tokens: int, completion_tokens: int, compress_min_bytes: int, now_ms: int
) -> bytes:
    flags = 0
    if len(body) >= compress_min_bytes:
        packed = zlib.compress(body, 6)
        if len(packed) < len(body):
            body, flags = packed, _ZLIB
    header = _HEADER.pack(_MAGIC, flags, now_ms, min(prompt_tokens, _U32), min(completion_tokens, _U32))
    return header + body


def decode_entry(raw: bytes) -> Entry | None:
    """The entry, or None for a value this version cannot read (treated as a miss)."""
    if len(raw) < _HEADER.size:
        return None
    magic, flags, stored_at, prompt, completion = _HEADER.unpack_from(raw)
    if magic != _MAGIC:
        return None
    body = raw[_HEADER.size :]
    if flags & _ZLIB:
        try:
            body = zlib.decompress(body)
        except zlib.error:
            return None
    return Entry(body, stored_at, prompt, completion)


class CacheStore:
    """Get and put whole responses; every key written carries a TTL."""

    def __init__(self, gate: RedisGate, max_entry_bytes: int, compress_min_bytes: int) -> None:
        self._gate = gate
        self.max_entry_bytes = max_entry_bytes
        self._compress_min = compress_min_bytes

    async def get(self, key: str) -> Entry | None:
        """One round trip. Raises StoreUnavailable when Redis fails."""
        raw = await self._gate.run(lambda r: r.get(key))
        # The client is created without decode_responses, so values are bytes.
        return decode_entry(raw) if isinstance(raw, bytes) else None

    async def put(
        self, key: str, body: bytes, prompt_tokens: int, completion_tokens: int, ttl_seconds: int
    ) -> bool:
        """Store a complete answer; False (nothing written) when it is over the size cap."""
        if len(body) > self.max_entry_bytes:
            return False
        value = encode_entry(
            body, prompt_tokens, completion_tokens, self._compress_min, int(time.time() * 1000)
        )
        await self._gate.run(lambda r: r.set(key, value, ex=ttl_seconds))
        return True
