"""What differs between the OpenAI generation endpoints the proxy caches.

The pipeline (`proxy.service.pipeline`) is the same for chat completions, legacy completions and
the Responses API: parse, key, cache, single flight, limit, upstream, store. An `Api`
supplies the parts that differ: validation, the fields that make the key, token
estimates, how a live stream folds into one stored answer, and how a stored answer is
replayed as a stream. One stored answer serves stream and non-stream requests alike.
"""

from __future__ import annotations

from typing import Any, Protocol

from proxy.config import ModelConfig
from proxy.core.apis.chat import DONE, StreamAssembler, event, replay_chunks
from proxy.core.keys import chat_digest
from proxy.core.tokens import completion_allowance, count_text, encoding, encoding_name, prompt_tokens
from proxy.core.validation import check_chat_request
from proxy.errors import ProxyError

Usage = tuple[int, int]  # (prompt tokens, completion tokens)


class Assembler(Protocol):
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

    def text(self) -> str:
        """Generated text so far (to estimate the tokens of a stream that broke off)."""
        ...


class Api:
    """Chat completions; the other APIs override what differs."""

    name = "chat"  # what the upstream is asked for
    key_kind = "chat"  # the cache key's kind segment
    done = DONE  # what ends a stream

    def check(self, body: dict[str, Any]) -> None:
        check_chat_request(body)

    def digest(self, body: dict[str, Any], model: ModelConfig) -> str:
        return chat_digest(body, model)

    def uncacheable(self, body: dict[str, Any]) -> bool:
        """Requests that must always reach the provider (passed through, never stored)."""
        return False

    def include_usage(self, body: dict[str, Any]) -> bool:
        options = body.get("stream_options") or {}
        return (
            body.get("stream") is True and isinstance(options, dict) and options.get("include_usage") is True
        )

    def prompt_tokens(self, body: dict[str, Any], model: ModelConfig) -> int:
        return prompt_tokens(body, model)

    def completion_allowance(self, body: dict[str, Any], default_max_tokens: int) -> int:
        return completion_allowance(body, default_max_tokens)

    def usage_of(self, answer: dict[str, Any]) -> Usage:
        """The tokens a whole answer reports."""
        return usage_counts(answer.get("usage")) or (0, 0)

    def is_whole(self, body: dict[str, Any], answer: dict[str, Any]) -> bool:
        """Only whole answers are cached: every one of the `n` choices asked for, each
        finished. (litellm's stream wrapper can drop choices after the first.)"""
        choices = answer.get("choices") or []
        wanted = body.get("n") or 1
        return len(choices) >= wanted and all(c.get("finish_reason") for c in choices)

    def assembler(self) -> Assembler:
        return _ChatAssembler()

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

    def replay_chunks(self, answer: dict[str, Any], include_usage: bool) -> list[dict[str, Any]]:
        return replay_chunks(answer, include_usage)

    def replay(self, answer: dict[str, Any], include_usage: bool) -> bytes:
        """A stored answer as the whole stream a live call would have sent."""
        parts = (self.encode(c, include_usage) for c in self.replay_chunks(answer, include_usage))
        return b"".join(p for p in parts if p is not None) + self.done

    def error_event(self, error: ProxyError) -> bytes:
        """How a failure that happens mid-stream reaches the client."""
        return event(error.body())


class _ChatAssembler(StreamAssembler):
    def usage_counts(self) -> Usage | None:
        return usage_counts(self.usage)

    def text(self) -> str:
        return "".join(
            str(c["message"].get(f) or "")
            for c in self.response()["choices"]
            for f in ("content", "reasoning_content")
        )


def usage_counts(usage: Any) -> Usage | None:
    """OpenAI usage (prompt/completion, or the Responses API's input/output) as counts."""
    if not isinstance(usage, dict) or not usage:
        return None
    prompt = usage.get("prompt_tokens", usage.get("input_tokens"))
    completion = usage.get("completion_tokens", usage.get("output_tokens"))
    return int(prompt or 0), int(completion or 0)


def text_tokens(text: str, model: ModelConfig) -> int:
    return count_text(text, encoding(encoding_name(model)))
