"""Request -> canonical bytes -> sha256 -> namespaced Redis key.

Two requests that must get the same answer get the same key; any change to a field that
can change the answer gives a different key (tests/unit/core/test_keys.py proves both with
hypothesis). The rules, also in docs/keyspace.md:

1. Only KEY fields are in the key (`proxy.core.fields`: every field is classified; a field
   the tables do not know is KEY). `null` means "not set".
2. A parameter equal to the API's protocol default is dropped (`n: 1`, `stop: []`, ...);
   OpenAI's sampling defaults (`temperature: 1`, ...) only for models whose
   `request_defaults` resolve to `openai` (other servers have their own).
3. `stop: "x"` is `stop: ["x"]`; a float with an integral value is that integer (1.0 == 1);
   a message whose content is one text part is that text.
4. Text is exact: no Unicode normalization (U+2126 and U+03A9 are different prompts).
5. The client's model name is replaced by the upstream it resolves to (litellm_model and
   api_base), so renaming an alias keeps its entries and two backends never share one.
6. Canonical JSON: orjson with sorted keys and no whitespace, with the endpoint and the
   rules' version (`KEY_RULES`): changing the rules orphans old entries (they expire).
"""

from __future__ import annotations

import hashlib
from typing import Any
from urllib.parse import urlsplit

import orjson

from proxy.config import ModelConfig
from proxy.core.fields import CHAT, CHAT_DEFAULTS, Defaults, Fields, keyed

KEY_VERSION = "v1"
# The version of the rules above, inside every digest. 2: exact text, every field
# classified, sampling defaults folded per model.
KEY_RULES = 2

_EXACT_INT_LIMIT = 2**53
# Providers whose servers take OpenAI's sampling defaults (temperature 1, top_p 1, no
# penalties): OpenAI and Azure OpenAI at their own hosts, Anthropic (temperature 1.0).
_OPENAI_DEFAULT_PROVIDERS = ("openai/", "azure/", "text-completion-openai/", "anthropic/")
_OPENAI_HOSTS = ("api.openai.com", ".openai.azure.com", "api.anthropic.com")


def folds_sampling_defaults(model: ModelConfig) -> bool:
    """Whether OpenAI's sampling defaults are this model's (`request_defaults`)."""
    if model.request_defaults != "auto":
        return model.request_defaults == "openai"
    if model.is_demo:
        return True
    if not model.litellm_model.startswith(_OPENAI_DEFAULT_PROVIDERS):
        return False
    if model.api_base is None:
        return True
    host = urlsplit(model.api_base).hostname or ""
    return host == _OPENAI_HOSTS[0] or host.endswith(_OPENAI_HOSTS[1]) or host == _OPENAI_HOSTS[2]


def normalize(
    body: dict[str, Any], model: ModelConfig, api: str, fields: Fields, defaults: Defaults
) -> dict[str, Any]:
    """The request reduced to what determines its answer (rules 1-5)."""
    folded = {**defaults.protocol, **(defaults.sampling if folds_sampling_defaults(model) else {})}
    out: dict[str, Any] = {}
    for name, value in keyed(fields, body).items():
        value = (
            [_message(m) for m in value] if name == "messages" and isinstance(value, list) else _canon(value)
        )
        if name == "stop" and isinstance(value, str):
            value = [value]
        if name in folded and value == folded[name] and type(value) is type(folded[name]):
            continue
        out[name] = value
    if api == "chat" and out.get("tool_choice") == ("auto" if out.get("tools") else "none"):
        del out["tool_choice"]  # chat's default tool_choice depends on whether tools are given
    out["model"] = [model.litellm_model, model.api_base or ""]
    out["api"] = api
    out["rules"] = KEY_RULES
    return out


def request_digest(
    body: dict[str, Any], model: ModelConfig, api: str, fields: Fields, defaults: Defaults
) -> str:
    """sha256 hex of the normalized request."""
    return hashlib.sha256(canonical_bytes(normalize(body, model, api, fields, defaults))).hexdigest()


def chat_digest(body: dict[str, Any], model: ModelConfig) -> str:
    """sha256 hex of a normalized chat request."""
    return request_digest(body, model, "chat", CHAT, CHAT_DEFAULTS)


def canonical_bytes(normalized: dict[str, Any]) -> bytes:
    return orjson.dumps(normalized, option=orjson.OPT_SORT_KEYS)


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


def _message(message: Any) -> Any:
    """A chat message without null fields; content that is one text part is that text."""
    if not isinstance(message, dict):
        return _canon(message)
    out = {k: _canon(v) for k, v in message.items() if v is not None}
    content = out.get("content")
    if (
        isinstance(content, list)
        and len(content) == 1
        and isinstance(content[0], dict)
        and content[0].keys() == {"type", "text"}
        and content[0]["type"] == "text"
        and isinstance(content[0]["text"], str)
    ):
        out["content"] = content[0]["text"]
    return out


def _canon(value: Any) -> Any:
    if isinstance(value, float):
        if value.is_integer() and abs(value) < _EXACT_INT_LIMIT:
            return int(value)
        return value
    if isinstance(value, dict):
        return {k: _canon(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_canon(v) for v in value]
    return value
