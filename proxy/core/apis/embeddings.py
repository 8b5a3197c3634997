"""Embeddings (`POST /v1/embeddings`), cached per input item.

A batch of 100 texts of which 90 are cached sends only the 10 missing ones upstream (one
call, split only past the model's batch size), then answers all 100 in order; `usage`
counts only what went upstream. Each item's key covers the upstream model, `dimensions`
and the exact text or token array, not `encoding_format`: the vector is stored once, as
little-endian float32 (half the size of JSON floats, and exactly what OpenAI's base64
format is), and served as either.

    <prefix>:v1:<ns>:emb:{<sha256>}   string: !B version, !Q stored_at ms, !I tokens, float32[]
"""

from __future__ import annotations

import array
import base64
import hashlib
import struct
import sys
from dataclasses import dataclass
from typing import Any

import orjson

from proxy.config import ModelConfig
from proxy.core.apis.base import Adapter, Endpoint
from proxy.core.fields import EMBEDDINGS, EMBEDDINGS_DEFAULTS, keyed
from proxy.core.schemas import EmbeddingItem, embedding_items
from proxy.core.tokens import count_text, encoding, encoding_name
from proxy.core.validation import check_embeddings
from proxy.errors import InvalidRequest

_HEADER = struct.Struct("!BQI")
_VERSION = 1
_LITTLE = sys.byteorder == "little"


@dataclass(frozen=True, slots=True)
class EmbeddingRequest:
    """The parts of an embeddings body the pipeline works with."""

    items: list[EmbeddingItem]
    tokens: list[int]  # estimated per item (tiktoken), for the limiter and "tokens saved"
    base64: bool
    # Every other field that reaches the provider (`dimensions`, `user`, `input_type`, ...),
    # and those of them in every item's key (all but IGNORE ones such as `user`).
    params: dict[str, Any]
    keyed: dict[str, Any]


class EmbeddingsAdapter(Adapter):
    endpoint = Endpoint.EMBEDDINGS
    key_kind = "emb"
    fields = EMBEDDINGS
    defaults = EMBEDDINGS_DEFAULTS

    def check(self, body: dict[str, Any]) -> None:
        check_embeddings(body)

    def parse(self, body: dict[str, Any], model: ModelConfig) -> EmbeddingRequest:
        """The checked body's items, with their token estimates (each within the model's limit)."""
        items = embedding_items(body.get("input"))
        enc = encoding(encoding_name(model))
        tokens = [count_text(i, enc) if isinstance(i, str) else len(i) for i in items]
        limit = model.max_input_tokens
        for i, n in enumerate(tokens):
            if n > limit:
                raise InvalidRequest(
                    f"Input {i} has {n} tokens; this model accepts at most {limit} per input.",
                    param=f"input[{i}]",
                )
        own = self.own_fields | {"input"}
        params = {k: v for k, v in body.items() if k not in own and v is not None}
        keyed_params = {k: v for k, v in keyed(self.fields, body).items() if k != "input"}
        return EmbeddingRequest(items, tokens, body.get("encoding_format") == "base64", params, keyed_params)

    def item_digest(self, model: ModelConfig, keyed_params: dict[str, Any], item: EmbeddingItem) -> str:
        """An item's key digest: the upstream model, `dimensions`, the other keyed fields
        (`input_type`, ...) and the exact input. (Without other fields the digest is the
        one of earlier versions, so those entries stay valid.)"""
        dimensions = keyed_params.get("dimensions")
        others = {k: v for k, v in keyed_params.items() if k != "dimensions"}
        parts: list[Any] = [model.litellm_model, model.api_base or "", dimensions, item]
        if others:
            parts.append(others)
        return hashlib.sha256(orjson.dumps(parts, option=orjson.OPT_SORT_KEYS)).hexdigest()

    def answer(self, model: str, vectors: list[bytes], as_base64: bool, upstream_tokens: int) -> bytes:
        """The OpenAI `list` of embeddings, from little-endian float32 vectors in input order."""
        data = [
            {
                "object": "embedding",
                "index": i,
                "embedding": base64.b64encode(v).decode() if as_base64 else floats_of(v),
            }
            for i, v in enumerate(vectors)
        ]
        usage = {"prompt_tokens": upstream_tokens, "total_tokens": upstream_tokens}
        return orjson.dumps({"object": "list", "data": data, "model": model, "usage": usage})


def le_floats(vector: list[float]) -> bytes:
    """A vector as little-endian float32 bytes: how it is stored, and OpenAI's base64 format."""
    floats = array.array("f", vector)
    if not _LITTLE:
        floats.byteswap()
    return floats.tobytes()


def pack_vector(floats: bytes, tokens: int, now_ms: int) -> bytes:
    """The stored value of one item: header, then its `le_floats`."""
    return _HEADER.pack(_VERSION, now_ms, tokens) + floats


def unpack_vector(raw: bytes) -> tuple[bytes, int] | None:
    """(little-endian float32 bytes, tokens), or None for a value this version cannot read."""
    if len(raw) < _HEADER.size or raw[0] != _VERSION or (len(raw) - _HEADER.size) % 4:
        return None
    _, _, tokens = _HEADER.unpack_from(raw)
    return raw[_HEADER.size :], tokens


def stored_at_of(raw: bytes) -> int:
    """When an item's value (`pack_vector`) was stored, unix ms (0 for an unreadable value)."""
    return int(_HEADER.unpack_from(raw)[1]) if len(raw) >= _HEADER.size else 0


def floats_of(le_bytes: bytes) -> list[float]:
    floats = array.array("f")
    floats.frombytes(le_bytes)
    if not _LITTLE:
        floats.byteswap()
    return floats.tolist()
