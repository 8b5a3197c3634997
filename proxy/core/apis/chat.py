"""Chat completions (`POST /v1/chat/completions`): `messages` in, `chat.completion` out.

One stored answer serves stream and non-stream requests alike, so both directions are
generic, never a list of known fields:

- `ChatAssembler` folds `chat.completion.chunk`s into the `chat.completion` a non-stream
  call returns by merging the deltas by their shape (`DeltaMerge`): audio, annotations,
  reasoning, tool calls, logprobs and fields the proxy has never heard of come through
  alike. Where the fold is ambiguous (`DeltaMerge.doubt`) the answer is served but not
  stored.
- `replay_chunks` turns a stored answer back into the chunks a live stream sends: every
  non-null message field in the opening delta, every top-level field on every chunk.
"""

from __future__ import annotations

from typing import Any

from proxy.config import ModelConfig
from proxy.core.apis.base import Assembler, Endpoint, GenerationAdapter
from proxy.core.apis.merge import BASE64, IDENTITY, NOT_HEAD, DeltaAssembler
from proxy.core.fields import CHAT, CHAT_DEFAULTS
from proxy.core.tokens import completion_allowance, prompt_tokens
from proxy.core.validation import check_chat


class ChatAdapter(GenerationAdapter):
    endpoint = Endpoint.CHAT
    key_kind = "chat"
    fields = CHAT
    defaults = CHAT_DEFAULTS

    def check(self, body: dict[str, Any]) -> None:
        check_chat(body)

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

    def unstorable(self, assembler: Assembler) -> str | None:
        doubt = assembler.doubt if isinstance(assembler, DeltaAssembler) else None
        return doubt or super().unstorable(assembler)

    def replay_chunks(self, answer: dict[str, Any], include_usage: bool) -> list[dict[str, Any]]:
        return replay_chunks(answer, include_usage)


class ChatAssembler(DeltaAssembler):
    """`chat.completion.chunk`s -> the `chat.completion` a non-stream call returns: each
    choice's deltas merged into its `message` (`content` and `refusal` null when none,
    `role` assistant unless said), `logprobs` null when none, tool calls without the
    `index` only streams carry."""

    delta = ("delta", "message")

    @property
    def doubt(self) -> str | None:
        """An ambiguous merge, or a finished message that says nothing at all: a non-stream
        answer always says something (content, a refusal, a tool call, audio); an empty
        one from a stream means a translation lost it (litellm's stream forwards only the
        delta fields it knows: a refusal streamed on its own never reaches the client)."""
        if self._merge.doubt is not None:
            return self._merge.doubt
        choices = self._joined()
        for index in sorted(choices):
            message = choices[index].get("message") or {}
            if not any(v not in (None, "", [], {}) for k, v in message.items() if k != "role"):
                return f"choices[{index}].message is empty"
        return None

    def response(self) -> dict[str, Any]:
        choices = []
        joined_choices = self._joined()
        for index in sorted(joined_choices):
            acc = joined_choices[index]
            message = {"role": "assistant", "content": None, "refusal": None, **acc.get("message", {})}
            if isinstance(message.get("tool_calls"), list):
                message["tool_calls"] = [_without_index(call) for call in message["tool_calls"]]
            rest = {k: v for k, v in acc.items() if k != "message"}
            choices.append(
                {"index": index, "message": message, "logprobs": None, "finish_reason": None, **rest}
            )
        return self._answer("chat.completion", choices)

    def text(self) -> str:
        """Generated text so far: every string of the messages but ids and base64 data."""
        return "".join(_strings(c.get("message")) for c in self._joined().values())


def _without_index(call: Any) -> Any:
    return {k: v for k, v in call.items() if k != "index"} if isinstance(call, dict) else call


def _strings(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        return "".join(_strings(v) for k, v in value.items() if k not in IDENTITY and k not in BASE64)
    if isinstance(value, list):
        return "".join(_strings(v) for v in value)
    return ""


def replay_chunks(answer: dict[str, Any], include_usage: bool) -> list[dict[str, Any]]:
    """A stored `chat.completion` as the chunks a live stream would have sent: per choice an
    opening chunk whose delta carries every non-null message field (tool calls with their
    `index`) and the choice's `logprobs`, then a finish chunk with the other choice-level
    fields (`finish_reason`, unknown ones); every chunk carries the answer's top-level
    fields; the usage chunk only when the client asked for it."""
    head = stream_head(answer, "chat.completion.chunk")
    first: list[dict[str, Any]] = []
    last: list[dict[str, Any]] = []
    for choice in answer.get("choices") or ():
        index = choice.get("index", 0)
        message = choice.get("message") or {}
        delta = {"role": "assistant", **{k: v for k, v in message.items() if v is not None}}
        if isinstance(delta.get("tool_calls"), list):
            delta["tool_calls"] = [
                {**call, "index": i} if isinstance(call, dict) else call
                for i, call in enumerate(delta["tool_calls"])
            ]
        rest = {k: v for k, v in choice.items() if k not in ("index", "message", "logprobs")}
        first.append(
            {"index": index, "delta": delta, "logprobs": choice.get("logprobs"), "finish_reason": None}
        )
        last.append({"index": index, "delta": {}, "logprobs": None, "finish_reason": None, **rest})
    chunks = [{**head, "choices": first}, {**head, "choices": last}]
    if include_usage and answer.get("usage"):
        chunks.append({**head, "choices": [], "usage": answer["usage"]})
    return chunks


def stream_head(answer: dict[str, Any], kind: str) -> dict[str, Any]:
    """The fields every replayed chunk carries: the answer's top-level ones but its list of
    choices and its usage (`id`, `created`, `model`, `system_fingerprint`, `service_tier`,
    unknown ones), as a chunk of `kind`."""
    head = {"id": "", "created": 0, "model": ""}
    head.update((k, v) for k, v in answer.items() if k not in NOT_HEAD)
    head["object"] = kind
    return head
