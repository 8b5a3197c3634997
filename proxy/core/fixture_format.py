"""Fixture files: cached answers as JSON lines, and the checks a line must pass to load.

One line per cached answer (one per input item for embeddings), its fields in a fixed
order and every object inside with sorted keys, lines sorted by tenant, endpoint, model and
request, so exporting the same cache twice gives the same bytes and a fixture diffs
cleanly in review:

    {"key_version": "v1", "key_rules": 2, "tenant": "ci", "endpoint": "chat",
     "model": "gpt-4o-mini", "request": {"messages": [...], "model": "gpt-4o-mini"},
     "answer": {...}, "meta": {"completion_tokens": 9, "digest": "<sha256>",
     "prompt_tokens": 12, "stored_at_ms": 1718000000000}}

`request` is the canonical request: the configured model's name and the fields in the
cache key (`proxy.core.fields.keyed`), exact, never `user`, `metadata` or `stream`. An
embeddings line holds one item: `request.input` is one text (or token array) and
`answer.embedding` its vector as OpenAI's base64 (little-endian float32), exact.

A line is checked against the config it is loaded with (`place`): its tenant and model
must exist, its request must be a valid, cacheable request of its endpoint, and its answer
whole. The digest is computed again with the current key rules (`KEY_RULES`), so a fixture
recorded under older rules still loads; `Placed.rekeyed` says the digest changed.

Pure: no I/O (`proxy.store.fixtures` reads and writes Redis).
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any

import orjson

from proxy.config import Config, ModelConfig
from proxy.core.apis import CHAT, COMPLETIONS, EMBEDDINGS, RESPONSES
from proxy.core.apis.base import Adapter, GenerationAdapter
from proxy.core.fields import keyed
from proxy.core.keys import KEY_RULES, KEY_VERSION
from proxy.errors import InvalidRequest

# What `--endpoint` and a line's `endpoint` name, and the adapter behind each.
ENDPOINTS: dict[str, Adapter] = {
    "chat": CHAT,
    "completions": COMPLETIONS,
    "responses": RESPONSES,
    "embeddings": EMBEDDINGS,
}
ENDPOINT_OF_KIND: dict[str, str] = {api.key_kind: name for name, api in ENDPOINTS.items()}
_FIELDS = ("answer", "endpoint", "meta", "model", "request", "tenant")


class FixtureError(ValueError):
    """A line that cannot be loaded; the message says why (the caller adds the line number)."""


@dataclass(frozen=True, slots=True)
class Fixture:
    tenant: str  # the namespace it was exported from: a tenant, or "shared"
    endpoint: str  # a key of ENDPOINTS
    model: str  # the configured model name
    request: dict[str, Any]
    answer: dict[str, Any]
    meta: dict[str, Any]

    def line(self) -> bytes:
        """The JSON line (no newline): the fields in a fixed order, what says where it
        belongs first and the answer last, and every object inside with its keys sorted."""
        fields = {
            "key_version": KEY_VERSION,
            "key_rules": KEY_RULES,
            "tenant": self.tenant,
            "endpoint": self.endpoint,
            "model": self.model,
            "request": self.request,
            "answer": self.answer,
            "meta": self.meta,
        }
        parts = [
            orjson.dumps(k) + b":" + orjson.dumps(v, option=orjson.OPT_SORT_KEYS) for k, v in fields.items()
        ]
        return b"{" + b",".join(parts) + b"}"

    def sort_key(self) -> tuple[str, str, str, bytes, str]:
        request = orjson.dumps(self.request, option=orjson.OPT_SORT_KEYS)
        return self.tenant, self.endpoint, self.model, request, str(self.meta.get("digest", ""))


@dataclass(frozen=True, slots=True)
class Placed:
    """A checked line: where it goes under the current key rules, and what to write."""

    fixture: Fixture
    namespace: str
    kind: str  # the cache key's kind segment
    digest: str
    rekeyed: bool  # the line names a digest, and the current rules give another
    model: ModelConfig
    vector: bytes | None = None  # embeddings: little-endian float32


def canonical_request(api: Adapter, body: dict[str, Any], model: str) -> dict[str, Any]:
    """What a fixture keeps of a request: the model's name and the keyed fields, exact."""
    return {**keyed(api.fields, body), "model": model}


def item_request(model: str, keyed_params: dict[str, Any], item: Any) -> dict[str, Any]:
    """The canonical request of one embeddings item (what record mode keeps beside it)."""
    return {**keyed_params, "model": model, "input": item}


def parse_line(raw: bytes) -> Fixture:
    """A line's fields, shape-checked (not yet against a config)."""
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise FixtureError(f"not JSON ({str(exc).split(': line ')[0]})") from None
    if not isinstance(obj, dict):
        raise FixtureError("not a JSON object")
    missing = [f for f in _FIELDS if f not in obj]
    if missing:
        raise FixtureError(f"missing {', '.join(missing)}")
    for name in ("tenant", "endpoint", "model"):
        if not isinstance(obj[name], str) or not obj[name]:
            raise FixtureError(f"{name} must be a non-empty string")
    for name in ("request", "answer", "meta"):
        if not isinstance(obj[name], dict):
            raise FixtureError(f"{name} must be an object")
    if obj["endpoint"] not in ENDPOINTS:
        raise FixtureError(f"unknown endpoint {obj['endpoint']!r} (one of {', '.join(ENDPOINTS)})")
    return Fixture(obj["tenant"], obj["endpoint"], obj["model"], obj["request"], obj["answer"], obj["meta"])


def place(fixture: Fixture, config: Config, tenant: str | None = None) -> Placed:
    """Check a line against `config` and key it with the current rules. `tenant` loads it
    into that tenant instead of the one it names."""
    namespace = _namespace(config, tenant or fixture.tenant)
    model = config.model_index.get(fixture.model)
    if model is None:
        raise FixtureError(f"model {fixture.model!r} is not configured")
    api = ENDPOINTS[fixture.endpoint]
    request = {**fixture.request, "model": model.name}
    try:
        api.check(request)
    except InvalidRequest as exc:
        raise FixtureError(f"request: {exc.message}") from None
    if api.uncacheable(request):
        raise FixtureError("request: never cached (it bypasses the cache)")
    _check_meta(fixture.meta)
    old = fixture.meta.get("digest")
    if isinstance(api, GenerationAdapter):
        listed = fixture.answer.get(api.endpoint.answer_list)
        if not isinstance(listed, list) or not listed or not api.is_whole(request, fixture.answer):
            raise FixtureError(f"answer: not a whole answer (needs a complete '{api.endpoint.answer_list}')")
        if len(orjson.dumps(fixture.answer)) > config.cache.max_entry_bytes:
            raise FixtureError("answer: larger than cache.max_entry_bytes")
        digest = api.digest(request, model)
        return Placed(fixture, namespace, api.key_kind, digest, old is not None and digest != old, model)
    assert api is EMBEDDINGS
    try:
        parsed = EMBEDDINGS.parse(request, model)
    except InvalidRequest as exc:
        raise FixtureError(f"request: {exc.message}") from None
    if len(parsed.items) != 1:
        raise FixtureError("request: an embeddings line holds exactly one input")
    vector = _vector(fixture.answer)
    digest = EMBEDDINGS.item_digest(model, parsed.keyed, parsed.items[0])
    return Placed(
        fixture, namespace, EMBEDDINGS.key_kind, digest, old is not None and digest != old, model, vector
    )


def _namespace(config: Config, name: str) -> str:
    if name == "shared" and config.cache.scope == "shared":
        return "shared"
    if name not in config.tenant_index:
        raise FixtureError(f"tenant {name!r} is not configured (load it into another with --tenant)")
    return config.cache.namespace(name)


def _check_meta(meta: dict[str, Any]) -> None:
    for name in ("prompt_tokens", "completion_tokens", "tokens", "stored_at_ms"):
        value = meta.get(name, 0)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise FixtureError(f"meta.{name} must be a whole number >= 0")


def _vector(answer: dict[str, Any]) -> bytes:
    encoded = answer.get("embedding")
    if not isinstance(encoded, str):
        raise FixtureError("answer.embedding must be the vector in base64 (little-endian float32)")
    try:
        vector = base64.b64decode(encoded, validate=True)
    except binascii.Error:
        raise FixtureError("answer.embedding is not valid base64") from None
    if not vector or len(vector) % 4:
        raise FixtureError("answer.embedding is not a float32 vector")
    return vector
