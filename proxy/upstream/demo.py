"""Deterministic OpenAI-shaped answers, for the offline demo model and the fake upstream.

`demo/...` models in config.yaml are answered by `DemoUpstream` inside the proxy, with a
short simulated latency, so a newcomer with no API key and no internet can watch a miss
turn into a hit. `proxy.testing.fake_provider` serves the same answers over real HTTP for the
end-to-end tests and benchmarks.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator
from typing import Any

from proxy.config import ModelConfig
from proxy.core.apis.base import Endpoint, GenerationAdapter
from proxy.core.apis.completions import prompts_of
from proxy.core.apis.responses import replay_events


def _last_user_text(messages: list[dict[str, Any]]) -> str:
    for message in reversed(messages):
        if message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, str):
                return content
            if isinstance(content, list):
                return " ".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def answer_text(messages: list[dict[str, Any]]) -> str:
    said = " ".join(_last_user_text(messages).split())
    if len(said) > 200:
        said = said[:200] + "..."
    return f"This is the demo model. You said: {said}"


def _count(text: str) -> int:
    return max(1, len(text.split()))


def _usage(messages: list[dict[str, Any]], answer: str) -> dict[str, int]:
    prompt = sum(_count(str(m.get("content") or "")) for m in messages)
    completion = _count(answer)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _ident(model: str, messages: list[dict[str, Any]]) -> str:
    seed = f"{model}{messages!r}{time.time_ns()}".encode()
    return "chatcmpl-" + hashlib.sha256(seed).hexdigest()[:24]


def completion(model: str, messages: list[dict[str, Any]]) -> dict[str, Any]:
    """A `chat.completion` answering the last user message."""
    answer = answer_text(messages)
    return {
        "id": _ident(model, messages),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": answer},
                "finish_reason": "stop",
            }
        ],
        "usage": _usage(messages, answer),
    }


def chunks(model: str, messages: list[dict[str, Any]], include_usage: bool) -> list[dict[str, Any]]:
    """The same answer as `chat.completion.chunk`s, one word per chunk."""
    answer = answer_text(messages)
    head = {
        "id": _ident(model, messages),
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
    }
    words = answer.split(" ")
    out = [
        {
            **head,
            "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}],
        }
    ]
    for i, word in enumerate(words):
        piece = word if i == 0 else " " + word
        out.append({**head, "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]})
    out.append({**head, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    if include_usage:
        out.append({**head, "choices": [], "usage": _usage(messages, answer)})
    return out


def text_completion(model: str, prompt: Any) -> dict[str, Any]:
    """A legacy `text_completion`: one choice per prompt."""
    texts = [p if isinstance(p, str) else f"{len(p)} tokens" for p in prompts_of(prompt)]
    answers = [answer_text([{"role": "user", "content": t}]) for t in texts]
    prompt_tokens = sum(_count(t) for t in texts)
    completion_tokens = sum(_count(a) for a in answers)
    return {
        "id": "cmpl-" + _ident(model, [{"content": t} for t in texts])[9:],
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {"text": " " + a, "index": i, "logprobs": None, "finish_reason": "stop"}
            for i, a in enumerate(answers)
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


def response(model: str, body: dict[str, Any]) -> dict[str, Any]:
    """A Responses API `response` answering the last user input."""
    given = body.get("input")
    messages = [{"role": "user", "content": given}] if isinstance(given, str) else list(given or [])
    answer = answer_text(messages)
    usage = _usage([m for m in messages if isinstance(m, dict)], answer)
    ident = _ident(model, messages)[9:]
    return {
        "id": "resp_" + ident,
        "object": "response",
        "created_at": int(time.time()),
        "status": "completed",
        "error": None,
        "incomplete_details": None,
        "instructions": body.get("instructions"),
        "model": model,
        "output": [
            {
                "type": "message",
                "id": "msg_" + ident,
                "status": "completed",
                "role": "assistant",
                "content": [{"type": "output_text", "text": answer, "annotations": []}],
            }
        ],
        "parallel_tool_calls": True,
        "previous_response_id": body.get("previous_response_id"),
        "temperature": body.get("temperature", 1.0),
        "tool_choice": "auto",
        "tools": [],
        "top_p": body.get("top_p", 1.0),
        "usage": {
            "input_tokens": usage["prompt_tokens"],
            "output_tokens": usage["completion_tokens"],
            "total_tokens": usage["total_tokens"],
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens_details": {"reasoning_tokens": 0},
        },
    }


def answer_for(endpoint: Endpoint, model: str, body: dict[str, Any]) -> dict[str, Any]:
    """The whole answer of a chat, completions or Responses API request."""
    if endpoint is Endpoint.COMPLETIONS:
        return text_completion(model, body.get("prompt"))
    if endpoint is Endpoint.RESPONSES:
        return response(model, body)
    return completion(model, body["messages"])


def stream_for(endpoint: Endpoint, model: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    """The same answer as the chunks (or events) a live stream sends."""
    if endpoint is Endpoint.CHAT:
        return chunks(model, body["messages"], include_usage=True)
    if endpoint is Endpoint.RESPONSES:
        return replay_events(response(model, body))
    whole = text_completion(model, body.get("prompt"))
    head = {k: whole[k] for k in ("id", "object", "created", "model")}
    out = []
    for choice in whole["choices"]:
        words = choice["text"].split(" ")
        for i, word in enumerate(words):
            last = i == len(words) - 1
            piece = {
                **choice,
                "text": word if i == 0 else " " + word,
                "finish_reason": "stop" if last else None,
            }
            out.append({**head, "choices": [piece]})
    out.append({**head, "choices": [], "usage": whole["usage"]})
    return out


def vector(item: object, dimensions: int = 8) -> list[float]:
    """A deterministic unit vector for any input (the demo model's "embedding")."""
    digest = hashlib.sha256(repr(item).encode()).digest() * (dimensions // 32 + 1)
    raw = [(b - 127.5) / 127.5 for b in digest[:dimensions]]
    norm = sum(v * v for v in raw) ** 0.5 or 1.0
    return [v / norm for v in raw]


def embeddings(model: str, inputs: list[Any], dimensions: int | None) -> dict[str, Any]:
    data = [
        {"object": "embedding", "index": i, "embedding": vector(x, dimensions or 8)}
        for i, x in enumerate(inputs)
    ]
    tokens = sum(_count(x) if isinstance(x, str) else len(x) for x in inputs)
    return {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


class DemoUpstream:
    """Answers `demo/...` models in-process, slowly enough that a hit is visibly faster."""

    def __init__(self, latency_s: float = 0.5, chunk_delay_s: float = 0.03) -> None:
        self._latency = latency_s
        self._chunk_delay = chunk_delay_s

    async def complete(
        self, model: ModelConfig, body: dict[str, Any], api: GenerationAdapter
    ) -> dict[str, Any]:
        await asyncio.sleep(self._latency)
        return answer_for(api.endpoint, model.name, body)

    async def stream(
        self, model: ModelConfig, body: dict[str, Any], api: GenerationAdapter
    ) -> AsyncIterator[dict[str, Any]]:
        await asyncio.sleep(self._latency)
        return self._paced(stream_for(api.endpoint, model.name, body))

    async def embed(
        self, model: ModelConfig, inputs: list[Any], params: dict[str, Any]
    ) -> tuple[list[list[float]], int]:
        await asyncio.sleep(self._latency / 5)
        response = embeddings(model.name, inputs, params.get("dimensions"))
        return [d["embedding"] for d in response["data"]], response["usage"]["prompt_tokens"]

    async def _paced(self, items: list[dict[str, Any]]) -> AsyncIterator[dict[str, Any]]:
        for chunk in items:
            yield chunk
            await asyncio.sleep(self._chunk_delay)
