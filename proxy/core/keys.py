"""Request normalization -> canonical bytes -> sha256 -> namespaced Redis key.

Two requests that must get the same answer get the same key; any change to a field that
can change the answer gives a different key (tests/unit/core/test_keys.py proves both with
hypothesis). The rules, also in docs/keyspace.md:

1. Fields that do not change the output are dropped (IGNORED_FIELDS).
2. A parameter equal to the API default is dropped (DEFAULTS), so `temperature: 1` and no
   temperature share a key; `null` means "not set" and is dropped too.
3. `stop: "x"` is `stop: ["x"]`; a float with an integral value is that integer (1.0 == 1).
4. Message text is Unicode NFC.
5. The client's model name is replaced by the upstream it resolves to (litellm_model and
   api_base), so renaming an alias keeps its entries and two backends never share one.
6. Canonical JSON: orjson with sorted keys and no whitespace.
"""

from __future__ import annotations

import hashlib
import unicodedata
from typing import Any

import orjson

from proxy.config import ModelConfig

KEY_VERSION = "v1"

# Fields that change delivery, accounting or logging, never the generated answer.
IGNORED_FIELDS = frozenset(
    {
        "model",  # replaced by the resolved upstream (rule 5)
        "stream",
        "stream_options",
        "user",
        "metadata",
        "store",
        "service_tier",
        "safety_identifier",
        "prompt_cache_key",
        "prompt_cache_retention",
    }
)

# The OpenAI API defaults; sending one explicitly is the same request as omitting it.
DEFAULTS: dict[str, Any] = {
    "temperature": 1,
    "top_p": 1,
    "n": 1,
    "presence_penalty": 0,
    "frequency_penalty": 0,
    "logprobs": False,
    "parallel_tool_calls": True,
    "response_format": {"type": "text"},
    "logit_bias": {},
    "stop": [],
}

_EXACT_INT_LIMIT = 2**53


def normalize_chat(body: dict[str, Any], model: ModelConfig) -> dict[str, Any]:
    """The request reduced to what determines its answer (rules 1-5)."""
    out: dict[str, Any] = {}
    for name, value in body.items():
        if value is None or name in IGNORED_FIELDS:
            continue
        value = [_normalize_message(m) for m in value] if name == "messages" else _canon(value)
        if name == "stop" and isinstance(value, str):
            value = [value]
        if name in DEFAULTS and value == DEFAULTS[name] and type(value) is type(DEFAULTS[name]):
            continue
        out[name] = value
    if out.get("tool_choice") == ("auto" if out.get("tools") else "none"):
        del out["tool_choice"]  # the default tool_choice depends on whether tools are given
    out["model"] = [model.litellm_model, model.api_base or ""]
    return out


def params_digest(
    body: dict[str, Any],
    model: ModelConfig,
    api: str,
    defaults: dict[str, Any],
    text_fields: frozenset[str],
    ignored: frozenset[str] = IGNORED_FIELDS,
) -> str:
    """sha256 hex of a non-chat request (legacy completions, Responses API) normalized by
    the same rules: `text_fields` get NFC, `api` keeps the APIs' digests apart."""
    out: dict[str, Any] = {}
    for name, value in body.items():
        if value is None or name in ignored:
            continue
        value = _canon(value, nfc=name in text_fields)
        if name == "stop" and isinstance(value, str):
            value = [value]
        if name in defaults and value == defaults[name] and type(value) is type(defaults[name]):
            continue
        out[name] = value
    out["model"] = [model.litellm_model, model.api_base or ""]
    out["api"] = api
    return hashlib.sha256(canonical_bytes(out)).hexdigest()


def canonical_bytes(normalized: dict[str, Any]) -> bytes:
    return orjson.dumps(normalized, option=orjson.OPT_SORT_KEYS)


def chat_digest(body: dict[str, Any], model: ModelConfig) -> str:
    """sha256 hex of the normalized chat request."""
    return hashlib.sha256(canonical_bytes(normalize_chat(body, model))).hexdigest()


def cache_key(prefix: str, namespace: str, kind: str, digest: str) -> str:
    """`<prefix>:v1:<tenant or "shared">:<kind>:{<sha256 hex>}`.

    The digest is the Redis Cluster hash tag: an entry, the request stored beside it and
    its review keys (`proxy.store.review`) share one slot, so one script can move them together,
    while different entries still spread over the whole cluster."""
    return f"{prefix}:{KEY_VERSION}:{namespace}:{kind}:{{{digest}}}"


def sibling_key(key: str, kind: str) -> str:
    """The key of another kind with the same namespace and digest (`...:chat:{d}` -> `...:req:{d}`)."""
    head, _, tail = key.rsplit(":", 2)
    return f"{head}:{kind}:{tail}"


def digest_in(key_or_digest: str) -> str:
    """The digest a client names: an `X-Cache-Key` as sent, or the whole key it is part of."""
    return key_or_digest.rsplit(":", 1)[-1].strip("{}").lower()


def _normalize_message(message: dict[str, Any]) -> dict[str, Any]:
    return {k: _canon(v, nfc=True) for k, v in message.items() if v is not None}


def _canon(value: Any, nfc: bool = False) -> Any:
    if isinstance(value, str):
        return unicodedata.normalize("NFC", value) if nfc else value
    if isinstance(value, float):
        if value.is_integer() and abs(value) < _EXACT_INT_LIMIT:
            return int(value)
        return value
    if isinstance(value, dict):
        return {k: _canon(v, nfc) for k, v in value.items()}
    if isinstance(value, list):
        return [_canon(v, nfc) for v in value]
    return value
