"""What differs between the cached endpoints, as one adapter object per endpoint.

The pipeline (`proxy.service.pipeline`) runs the same stages for every endpoint: parse,
validate, key, cache controls, lookup, single flight, limit, upstream, store, stats. An
adapter supplies only the parts that differ, as pure functions of the request body:

    Adapter                        validation, key, token estimate, how it is called upstream
    ├── GenerationAdapter          one cached answer per request; stream assembly and replay
    │   ├── ChatAdapter            (chat.py)
    │   ├── CompletionsAdapter     (completions.py)
    │   └── ResponsesAdapter       (responses.py)
    └── EmbeddingsAdapter          one cached vector per input item (embeddings.py)

Nothing downstream compares API names: the upstream layer reads `endpoint` and the
adapter's flags, and the pipeline picks the per-item flow by the adapter's type.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from enum import Enum
from functools import cached_property
from typing import Any, ClassVar, Protocol

import orjson

from proxy.config import ModelConfig
from proxy.core.apis.sse import DONE, event
from proxy.core.fields import Defaults, Fields, bypass_reason, own_fields
from proxy.core.keys import request_digest
from proxy.core.tokens import count_text, encoding, encoding_name
from proxy.errors import ProxyError

Usage = tuple[int, int]  # (prompt tokens, completion tokens)


class Endpoint(Enum):
    """The OpenAI operation an adapter serves: its path under the provider's base URL, and
    the list a whole answer carries (an answer without it is not an answer)."""

    CHAT = ("/chat/completions", "choices", "chat.completions")
    COMPLETIONS = ("/completions", "choices", "completions")
    RESPONSES = ("/responses", "output", "responses")
    EMBEDDINGS = ("/embeddings", "data", "embeddings")

    def __init__(self, path: str, answer_list: str, label: str) -> None:
        self.path = path
        self.answer_list = answer_list
        self.label = label  # how review items and logs name the API


class Adapter(ABC):
    """The parts every endpoint has."""

    endpoint: ClassVar[Endpoint]
    key_kind: ClassVar[str]  # the cache key's kind segment (`...:<tenant>:<kind>:{digest}`)
    # What the cache does with each request field (`proxy.core.fields`): KEY, IGNORE, OWN,
    # and the values that bypass the cache; and which defaults fold for the key.
    fields: ClassVar[Fields]
    defaults: ClassVar[Defaults]
    # Legacy completions: OpenAI-compatible servers are called directly even with
    # `route: litellm` (litellm's text-completion stream hides a cut-off stream).
    direct_for_openai_models: ClassVar[bool] = False

    @abstractmethod
    def check(self, body: dict[str, Any]) -> None:
        """Raise InvalidRequest (with `param`) unless the body is a plausible request."""

    @cached_property
    def own_fields(self) -> frozenset[str]:
        """Fields of the client's body the proxy handles itself and never forwards (read on
        every miss: computed once)."""
        return own_fields(self.fields)

    def uncacheable(self, body: dict[str, Any]) -> bool:
        """Requests that need the provider's server-side state: forwarded, never cached."""
        return bypass_reason(self.fields, body) is not None


class Assembler(Protocol):
    """Folds a live stream into the answer a non-stream call would have returned."""

    def add(self, chunk: dict[str, Any]) -> None: ...

    @property
    def ended(self) -> bool:
        """The stream reached its proper end (it was not cut off)."""
        ...

    @property
    def complete(self) -> bool:
        """It ended with a successful answer: the answer may be stored."""
        ...

    def response(self) -> dict[str, Any]:
        """The answer a non-stream call would have returned."""
        ...

    def usage_counts(self) -> Usage | None: ...

    def cached_tokens(self) -> int:
        """Prompt tokens the provider served from its own prompt cache (0 when not told)."""
        ...

    def text(self) -> str:
        """Generated text so far (to estimate the tokens of a stream that broke off)."""
        ...


class GenerationAdapter(Adapter):
    """Endpoints with one cached answer per request, served as JSON or replayed as a stream:
    one stored answer serves stream and non-stream requests alike."""

    done: ClassVar[bytes] = DONE  # what ends a stream
    # Ask the provider for usage in streams (`stream_options.include_usage`), so stored
    # answers carry it; the Responses API reports it in its final event anyway.
    asks_stream_usage: ClassVar[bool] = True

    def digest(self, body: dict[str, Any], model: ModelConfig) -> str:
        """sha256 hex of what determines the answer (the cache key's digest, `X-Cache-Key`)."""
        return request_digest(body, model, self.key_kind, self.fields, self.defaults)

    @abstractmethod
    def prompt_tokens(self, body: dict[str, Any], model: ModelConfig) -> int:
        """Estimated prompt tokens, for the limiter (settled with the real usage later)."""

    def include_usage(self, body: dict[str, Any]) -> bool:
        """Whether the client asked to see usage in a stream."""
        options = body.get("stream_options") or {}
        return (
            body.get("stream") is True and isinstance(options, dict) and options.get("include_usage") is True
        )

    @abstractmethod
    def completion_allowance(self, body: dict[str, Any], default_max_tokens: int) -> int:
        """Completion tokens to reserve before the call."""

    def usage_of(self, answer: dict[str, Any]) -> Usage:
        """The tokens a whole answer reports."""
        return usage_counts(answer.get("usage")) or (0, 0)

    def charged_usage(self, body: dict[str, Any], model: ModelConfig, answer: dict[str, Any]) -> Usage:
        """What a whole answer is charged: its usage, or when it reports none the prompt's
        estimate and the tokens of what it returned (never free)."""
        reported = usage_counts(answer.get("usage"))
        if reported is not None:
            return reported
        returned = orjson.dumps(answer.get(self.endpoint.answer_list) or []).decode()
        return self.prompt_tokens(body, model), text_tokens(returned, model)

    def cached_tokens_of(self, answer: dict[str, Any]) -> int:
        """Prompt tokens of a whole answer the provider served from its own prompt cache."""
        return cached_prompt_tokens(answer.get("usage"))

    @abstractmethod
    def is_whole(self, body: dict[str, Any], answer: dict[str, Any]) -> bool:
        """Only whole answers are cached."""

    @abstractmethod
    def assembler(self) -> Assembler: ...

    def unstorable(self, assembler: Assembler) -> str | None:
        """Why the answer of a stream that ended cleanly is served but not stored (None:
        it may be stored). The proxy asks upstream for usage in streams
        (`asks_stream_usage`): one that still carried none cannot give back the non-stream
        answer, which always has usage. Adapters add the doubts of their assembly."""
        if self.asks_stream_usage and assembler.usage_counts() is None:
            return "the stream carried no usage"
        return None

    def expires_at(self, answer: dict[str, Any]) -> int | None:
        """The earliest `expires_at` (unix seconds) anywhere in an answer, e.g. chat
        audio's `message.audio.expires_at`: past it the answer refers to something the
        provider no longer has, so a cache entry must not outlive it."""
        return earliest_expires_at(answer)

    def chunk_usage(self, chunk: dict[str, Any]) -> Usage | None:
        return usage_counts(chunk.get("usage"))

    def encode(self, chunk: dict[str, Any], include_usage: bool) -> bytes | None:
        """A live chunk as SSE bytes. The proxy always asks upstream for usage; it is shown
        only to clients that asked (a usage-only chunk is dropped for the others)."""
        if include_usage or "usage" not in chunk:
            return event(chunk)
        if not chunk.get("choices"):
            return None
        return event({k: v for k, v in chunk.items() if k != "usage"})

    @abstractmethod
    def replay_chunks(self, answer: dict[str, Any], include_usage: bool) -> list[dict[str, Any]]:
        """A stored answer as the chunks (or events) a live stream would have sent."""

    def replay(self, answer: dict[str, Any], include_usage: bool) -> bytes:
        """A stored answer as the whole stream a live call would have sent."""
        parts = (self.encode(c, include_usage) for c in self.replay_chunks(answer, include_usage))
        return b"".join(p for p in parts if p is not None) + self.done

    def error_event(self, error: ProxyError) -> bytes:
        """How a failure that happens mid-stream reaches the client."""
        return event(error.body())


def usage_counts(usage: Any) -> Usage | None:
    """OpenAI usage (prompt/completion, or the Responses API's input/output) as counts."""
    if not isinstance(usage, dict) or not usage:
        return None
    prompt = usage.get("prompt_tokens", usage.get("input_tokens"))
    completion = usage.get("completion_tokens", usage.get("output_tokens"))
    return int(prompt or 0), int(completion or 0)


def cached_prompt_tokens(usage: Any) -> int:
    """`prompt_tokens_details.cached_tokens` (Chat, Completions; litellm puts Anthropic's
    cache reads there too) or `input_tokens_details.cached_tokens` (Responses)."""
    if not isinstance(usage, dict):
        return 0
    for name in ("prompt_tokens_details", "input_tokens_details"):
        details = usage.get(name)
        if isinstance(details, dict):
            cached = details.get("cached_tokens")
            if isinstance(cached, int) and not isinstance(cached, bool) and cached > 0:
                return cached
    return 0


def text_tokens(text: str, model: ModelConfig) -> int:
    return count_text(text, encoding(encoding_name(model)))


def earliest_expires_at(answer: Any) -> int | None:
    """The earliest `expires_at` (unix seconds) at any depth of an answer, or None. Shared
    by the store path and the review queue's put-backs, so neither outlives it."""
    earliest: int | None = None
    pending: list[Any] = [answer]
    while pending:
        value = pending.pop()
        if isinstance(value, dict):
            at = value.get("expires_at")
            if isinstance(at, (int, float)) and not isinstance(at, bool):
                earliest = int(at) if earliest is None else min(earliest, int(at))
            pending.extend(v for v in value.values() if isinstance(v, (dict, list)))
        elif isinstance(value, list):
            pending.extend(v for v in value if isinstance(v, (dict, list)))
    return earliest
