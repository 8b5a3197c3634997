"""The stored value format: header + body, compressed when large, unreadable -> miss."""

from __future__ import annotations

from proxy.store.cache import HEADER_MAX, decode_entry, decode_meta, encode_entry


def test_round_trip_small_is_not_compressed() -> None:
    raw = encode_entry(b'{"a":1}', 12, 34, compress_min_bytes=2048, now_ms=1_000_000, model="gpt")
    entry = decode_entry(raw)
    assert entry is not None
    assert (entry.body, entry.prompt_tokens, entry.completion_tokens, entry.stored_at_ms) == (
        b'{"a":1}',
        12,
        34,
        1_000_000,
    )
    assert raw.endswith(b'{"a":1}')
    assert entry.model == "gpt"
    meta = decode_meta(raw[:HEADER_MAX])
    assert meta is not None and meta[0].model == "gpt" and meta[0].prompt_tokens == 12


def test_large_body_is_compressed_to_under_half() -> None:
    body = ('{"choices":[{"message":{"content":"' + "The quick brown fox jumps. " * 200 + '"}}]}').encode()
    raw = encode_entry(body, 1, 2, compress_min_bytes=2048, now_ms=0)
    assert len(raw) < len(body) / 2
    entry = decode_entry(raw)
    assert entry is not None and entry.body == body


def test_unreadable_values_are_misses() -> None:
    assert decode_entry(b"") is None
    assert decode_entry(b"garbage-that-is-long-enough") is None
    raw = bytearray(encode_entry(b"x" * 5000, 0, 0, compress_min_bytes=10, now_ms=0))
    raw[-5:] = b"\x00\x00\x00\x00\x00"
    assert decode_entry(bytes(raw)) is None


def test_age() -> None:
    entry = decode_entry(encode_entry(b"{}", 0, 0, 2048, now_ms=10_000))
    assert entry is not None
    assert entry.age_seconds(now_ms=15_999) == 5
