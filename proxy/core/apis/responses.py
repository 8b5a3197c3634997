"""The Responses API (`POST /v1/responses`): `input` in, a `response` object out.

- Keyed on every field that changes the output, `previous_response_id` included (a
  follow-up turn is a different request from the same text sent fresh).
- `store: true`, `background: true`, a `conversation` and an unpinned `prompt` template
  always go to the provider and are never stored (`proxy.core.fields`): each needs the
  provider's server-side state. Requests that leave `store` out are cached.
- A stream is a sequence of typed `response.*` events; it is stored as the response of its
  `response.completed` event, and only then (`response.failed`, `response.incomplete`,
  `error` or a cut-off stream store nothing). A stored response replays as the event
  sequence the API defines: created, in_progress, per output item added / deltas / done,
  completed, with increasing `sequence_number`s, as `event: <type>` + `data:` lines.
"""

from __future__ import annotations

import copy
from typing import Any

import orjson

from proxy.config import ModelConfig
from proxy.core.apis.base import (
    Assembler,
    Endpoint,
    GenerationAdapter,
    Usage,
    cached_prompt_tokens,
    text_tokens,
    usage_counts,
)
from proxy.core.apis.sse import typed_event
from proxy.core.fields import RESPONSES, RESPONSES_DEFAULTS
from proxy.core.validation import check_responses
from proxy.errors import ProxyError

_FAILED_EVENTS = ("response.failed", "response.incomplete", "error")


def _text_of(value: Any) -> str:
    """Every string inside an input (item texts, tool outputs), for token estimates."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return " ".join(_text_of(v) for v in value)
    if isinstance(value, dict):
        return " ".join(_text_of(v) for k, v in value.items() if k not in ("type", "role", "id", "status"))
    return ""


class ResponsesAdapter(GenerationAdapter):
    endpoint = Endpoint.RESPONSES
    key_kind = "resp"
    fields = RESPONSES
    defaults = RESPONSES_DEFAULTS
    done = b""  # the Responses API ends a stream with response.completed, no [DONE]
    asks_stream_usage = False  # its final event carries usage

    def check(self, body: dict[str, Any]) -> None:
        check_responses(body)

    def include_usage(self, body: dict[str, Any]) -> bool:
        return True  # usage is part of the final event, always

    def prompt_tokens(self, body: dict[str, Any], model: ModelConfig) -> int:
        text = _text_of(body.get("input")) + " " + str(body.get("instructions") or "")
        if body.get("tools"):
            text += " " + orjson.dumps(body["tools"]).decode()
        return text_tokens(text, model)

    def completion_allowance(self, body: dict[str, Any], default_max_tokens: int) -> int:
        return int(body.get("max_output_tokens") or default_max_tokens)

    def is_whole(self, body: dict[str, Any], answer: dict[str, Any]) -> bool:
        return answer.get("status") == "completed" and not answer.get("error")

    def assembler(self) -> Assembler:
        return EventAssembler()

    def chunk_usage(self, chunk: dict[str, Any]) -> Usage | None:
        if chunk.get("type") == "response.completed":
            return usage_counts((chunk.get("response") or {}).get("usage"))
        return None

    def encode(self, chunk: dict[str, Any], include_usage: bool) -> bytes | None:
        return typed_event(chunk)

    def replay_chunks(self, answer: dict[str, Any], include_usage: bool) -> list[dict[str, Any]]:
        return replay_events(answer)

    def error_event(self, error: ProxyError) -> bytes:
        detail = error.body()["error"]
        return typed_event({"type": "error", "sequence_number": 0, **detail})


class EventAssembler:
    """Keeps the final response of a `response.*` event stream, and the text seen so far."""

    def __init__(self) -> None:
        self._final: dict[str, Any] | None = None
        self._failed = False
        self._text: list[str] = []

    def add(self, chunk: dict[str, Any]) -> None:
        kind = chunk.get("type")
        if kind == "response.completed":
            self._final = chunk.get("response")
        elif kind in _FAILED_EVENTS:
            self._failed = True
        elif isinstance(kind, str) and kind.endswith(".delta") and isinstance(chunk.get("delta"), str):
            self._text.append(chunk["delta"])

    @property
    def complete(self) -> bool:
        return not self._failed and self._final is not None and self._final.get("status") == "completed"

    @property
    def ended(self) -> bool:
        """Completed, failed or incomplete: each is a proper end the client has been told of."""
        return self._failed or self._final is not None

    def response(self) -> dict[str, Any]:
        return self._final or {}

    def usage_counts(self) -> Usage | None:
        return usage_counts((self._final or {}).get("usage"))

    def cached_tokens(self) -> int:
        return cached_prompt_tokens((self._final or {}).get("usage"))

    def text(self) -> str:
        return "".join(self._text)


def replay_events(response: dict[str, Any]) -> list[dict[str, Any]]:
    """A stored response as the events a live stream sends, in the API's order."""
    events: list[dict[str, Any]] = []

    def emit(kind: str, **fields: Any) -> None:
        events.append({"type": kind, "sequence_number": len(events), **fields})

    opening = {**response, "status": "in_progress", "output": [], "usage": None}
    emit("response.created", response=opening)
    emit("response.in_progress", response=opening)
    for index, item in enumerate(response.get("output") or ()):
        _replay_item(emit, index, item)
    emit("response.completed", response=response)
    return events


def _replay_item(emit: Any, index: int, item: dict[str, Any]) -> None:
    item_id = item.get("id", "")
    kind = item.get("type")
    if kind == "message":
        emit(
            "response.output_item.added",
            output_index=index,
            item={**item, "status": "in_progress", "content": []},
        )
        for part_index, part in enumerate(item.get("content") or ()):
            where = {"item_id": item_id, "output_index": index, "content_index": part_index}
            if part.get("type") == "output_text":
                emit("response.content_part.added", **where, part={**part, "text": "", "annotations": []})
                logprobs = part.get("logprobs") or []
                emit("response.output_text.delta", **where, delta=part.get("text", ""), logprobs=logprobs)
                emit("response.output_text.done", **where, text=part.get("text", ""), logprobs=logprobs)
            elif part.get("type") == "refusal":
                emit("response.content_part.added", **where, part={**part, "refusal": ""})
                emit("response.refusal.delta", **where, delta=part.get("refusal", ""))
                emit("response.refusal.done", **where, refusal=part.get("refusal", ""))
            else:
                emit("response.content_part.added", **where, part=part)
            emit("response.content_part.done", **where, part=part)
    elif kind == "function_call":
        arguments = item.get("arguments", "")
        emit(
            "response.output_item.added",
            output_index=index,
            item={**item, "arguments": "", "status": "in_progress"},
        )
        where = {"item_id": item_id, "output_index": index}
        emit("response.function_call_arguments.delta", **where, delta=arguments)
        emit("response.function_call_arguments.done", **where, arguments=arguments, name=item.get("name"))
    elif kind == "reasoning":
        opened = copy.deepcopy(item)
        opened["summary"] = []
        emit("response.output_item.added", output_index=index, item=opened)
        for summary_index, part in enumerate(item.get("summary") or ()):
            where = {"item_id": item_id, "output_index": index, "summary_index": summary_index}
            emit("response.reasoning_summary_part.added", **where, part={**part, "text": ""})
            emit("response.reasoning_summary_text.delta", **where, delta=part.get("text", ""))
            emit("response.reasoning_summary_text.done", **where, text=part.get("text", ""))
            emit("response.reasoning_summary_part.done", **where, part=part)
    else:
        emit("response.output_item.added", output_index=index, item=item)
    emit("response.output_item.done", output_index=index, item=item)
