"""Chat completions (`POST /v1/chat/completions`): `messages` in, `chat.completion` out.

`StreamAssembler` folds `chat.completion.chunk` objects into the `chat.completion` a
non-stream call would have returned (content, reasoning, refusal, tool-call deltas by
index, logprobs, finish reasons, usage), so one stored entry serves both kinds of
request. `replay_chunks` turns a stored answer back into chunks the openai SDK parses.
"""

from __future__ import annotations

from typing import Any, ClassVar

from proxy.config import ModelConfig
from proxy.core.apis.base import Assembler, Endpoint, GenerationAdapter, Usage, usage_counts
from proxy.core.keys import chat_digest
from proxy.core.tokens import completion_allowance, prompt_tokens
from proxy.core.validation import check_chat

_TEXT_FIELDS = ("content", "reasoning_content", "refusal")


class ChatAdapter(GenerationAdapter):
    endpoint = Endpoint.CHAT
    key_kind = "chat"
    # `store` and `metadata` would ask OpenAI to keep a copy of a completion the proxy may
    # serve from cache; they are not forwarded.
    own_fields: ClassVar[frozenset[str]] = frozenset(
        {"model", "stream", "stream_options", "metadata", "store"}
    )

    def check(self, body: dict[str, Any]) -> None:
        check_chat(body)

    def digest(self, body: dict[str, Any], model: ModelConfig) -> str:
        return chat_digest(body, model)

    def prompt_tokens(self, body: dict[str, Any], model: ModelConfig) -> int:
        return prompt_tokens(body, model)

    def completion_allowance(self, body: dict[str, Any], default_max_tokens: int) -> int:
        return completion_allowance(body, default_max_tokens)

    def is_whole(self, body: dict[str, Any], answer: dict[str, Any]) -> bool:
        """Every one of the `n` choices asked for, each finished. (litellm's stream wrapper
        can drop choices after the first.)"""
        choices = answer.get("choices") or []
        wanted = body.get("n") or 1
        return len(choices) >= wanted and all(c.get("finish_reason") for c in choices)

    def assembler(self) -> Assembler:
        return ChatAssembler()

    def replay_chunks(self, answer: dict[str, Any], include_usage: bool) -> list[dict[str, Any]]:
        return replay_chunks(answer, include_usage)


class StreamAssembler:
    """Collects chunks; `complete` says whether the stream ended cleanly."""

    def __init__(self) -> None:
        self._head: dict[str, Any] = {}
        self._choices: dict[int, dict[str, Any]] = {}
        self.usage: dict[str, Any] | None = None

    def add(self, chunk: dict[str, Any]) -> None:
        if not self._head:
            self._head = {k: chunk[k] for k in ("id", "created", "model") if k in chunk}
        if chunk.get("system_fingerprint"):
            self._head["system_fingerprint"] = chunk["system_fingerprint"]
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        for choice in chunk.get("choices") or ():
            self._add_choice(choice)

    def _add_choice(self, choice: dict[str, Any]) -> None:
        index = choice.get("index", 0)
        acc = self._choices.setdefault(
            index, {"index": index, "message": {"role": "assistant"}, "finish_reason": None}
        )
        message = acc["message"]
        delta = choice.get("delta") or {}
        if delta.get("role"):
            message["role"] = delta["role"]
        for field in _TEXT_FIELDS:
            if delta.get(field):
                message[field] = message.get(field, "") + delta[field]
        for call in delta.get("tool_calls") or ():
            self._add_tool_call(message, call)
        if delta.get("function_call"):
            fc = message.setdefault("function_call", {"name": "", "arguments": ""})
            fc["name"] += delta["function_call"].get("name") or ""
            fc["arguments"] += delta["function_call"].get("arguments") or ""
        logprobs = choice.get("logprobs")
        if logprobs:
            acc_lp = acc.setdefault("logprobs", {})
            for part in ("content", "refusal"):
                if logprobs.get(part):
                    acc_lp.setdefault(part, []).extend(logprobs[part])
        if choice.get("finish_reason"):
            acc["finish_reason"] = choice["finish_reason"]

    @staticmethod
    def _add_tool_call(message: dict[str, Any], call: dict[str, Any]) -> None:
        calls: list[dict[str, Any]] = message.setdefault("tool_calls", [])
        index = call.get("index", len(calls))
        while len(calls) <= index:
            calls.append({"id": "", "type": "function", "function": {"name": "", "arguments": ""}})
        slot = calls[index]
        if call.get("id"):
            slot["id"] = call["id"]
        if call.get("type"):
            slot["type"] = call["type"]
        fn = call.get("function") or {}
        slot["function"]["name"] += fn.get("name") or ""
        slot["function"]["arguments"] += fn.get("arguments") or ""

    @property
    def ended(self) -> bool:
        """A chat stream ends properly when every choice finished (nothing else marks it)."""
        return self.complete

    @property
    def complete(self) -> bool:
        """Every choice got a finish_reason: the stream was not cut off."""
        return bool(self._choices) and all(c["finish_reason"] for c in self._choices.values())

    def response(self) -> dict[str, Any]:
        choices = []
        for index in sorted(self._choices):
            choice = self._choices[index]
            choice["message"].setdefault("content", None)
            choices.append(choice)
        out: dict[str, Any] = {**self._head, "object": "chat.completion", "choices": choices}
        if self.usage is not None:
            out["usage"] = self.usage
        return out


class ChatAssembler(StreamAssembler):
    def usage_counts(self) -> Usage | None:
        return usage_counts(self.usage)

    def text(self) -> str:
        return "".join(
            str(c["message"].get(f) or "")
            for c in self.response()["choices"]
            for f in ("content", "reasoning_content")
        )


def replay_chunks(response: dict[str, Any], include_usage: bool) -> list[dict[str, Any]]:
    """A stored `chat.completion` as the chunks a live stream would have sent."""
    head = {
        "id": response.get("id", ""),
        "object": "chat.completion.chunk",
        "created": response.get("created", 0),
        "model": response.get("model", ""),
    }
    if response.get("system_fingerprint"):
        head["system_fingerprint"] = response["system_fingerprint"]
    first: list[dict[str, Any]] = []
    last: list[dict[str, Any]] = []
    for choice in response.get("choices") or ():
        message = choice.get("message") or {}
        delta: dict[str, Any] = {"role": message.get("role", "assistant")}
        for field in _TEXT_FIELDS:
            if message.get(field) is not None:
                delta[field] = message[field]
        if message.get("tool_calls"):
            delta["tool_calls"] = [{"index": i, **call} for i, call in enumerate(message["tool_calls"])]
        if message.get("function_call"):
            delta["function_call"] = message["function_call"]
        opening: dict[str, Any] = {"index": choice.get("index", 0), "delta": delta, "finish_reason": None}
        if choice.get("logprobs"):
            opening["logprobs"] = choice["logprobs"]
        first.append(opening)
        last.append(
            {"index": choice.get("index", 0), "delta": {}, "finish_reason": choice.get("finish_reason")}
        )
    chunks = [{**head, "choices": first}, {**head, "choices": last}]
    if include_usage and response.get("usage"):
        chunks.append({**head, "choices": [], "usage": response["usage"]})
    return chunks
