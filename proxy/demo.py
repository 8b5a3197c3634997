"""Deterministic OpenAI-shaped answers, for the offline demo model and the fake upstream.

`demo/...` models in config.yaml are answered by `DemoUpstream` inside the proxy, with a
short simulated latency, so a newcomer with no API key and no internet can watch a miss
turn into a hit. `proxy.fake_upstream` serves the same answers over real HTTP for the
end-to-end tests and benchmarks.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator
from typing import Any

from proxy.config import ModelConfig


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

    async def complete(self, model: ModelConfig, body: dict[str, Any]) -> dict[str, Any]:
        await asyncio.sleep(self._latency)
        return completion(model.name, body["messages"])

    async def stream(self, model: ModelConfig, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        await asyncio.sleep(self._latency)
        return self._paced(chunks(model.name, body["messages"], include_usage=True))

    async def embed(
        self, model: ModelConfig, inputs: list[Any], dimensions: int | None
    ) -> tuple[list[list[float]], int]:
        await asyncio.sleep(self._latency / 5)
        response = embeddings(model.name, inputs, dimensions)
        return [d["embedding"] for d in response["data"]], response["usage"]["prompt_tokens"]

    async def _paced(self, items: list[dict[str, Any]]) -> AsyncIterator[dict[str, Any]]:
        for chunk in items:
            yield chunk
            await asyncio.sleep(self._chunk_delay)
