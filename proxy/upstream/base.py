"""What every upstream implements; the adapter says which OpenAI operation is asked for."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Protocol

from proxy.config import ModelConfig
from proxy.core.apis.base import GenerationAdapter
from proxy.errors import UpstreamError


class Upstream(Protocol):
    async def complete(
        self, model: ModelConfig, body: dict[str, Any], api: GenerationAdapter
    ) -> dict[str, Any]:
        """The whole answer, in the OpenAI shape of `api`."""
        ...

    async def stream(
        self, model: ModelConfig, body: dict[str, Any], api: GenerationAdapter
    ) -> AsyncIterator[dict[str, Any]]:
        """The answer's chunks (or events), as the OpenAI stream of `api` sends them."""
        ...

    async def embed(
        self, model: ModelConfig, inputs: list[Any], params: dict[str, Any]
    ) -> tuple[list[list[float]], int]:
        """Vectors in input order, and the prompt tokens the provider counted. `params`:
        the request's other fields (`dimensions`, `user`, `input_type`, ...), forwarded."""
        ...


def vectors_in_order(response: dict[str, Any], expected: int) -> tuple[list[list[float]], int]:
    """An OpenAI embeddings response -> (vectors by index, prompt tokens)."""
    data = response.get("data")
    if not isinstance(data, list) or len(data) != expected:
        count = len(data) if isinstance(data, list) else 0
        raise UpstreamError(f"The upstream provider returned {count} embeddings for {expected} inputs.")
    ordered = sorted(data, key=lambda d: d.get("index", 0))
    vectors = [d.get("embedding") for d in ordered]
    if not all(isinstance(v, list) for v in vectors):
        raise UpstreamError("The upstream provider returned embeddings that are not float arrays.")
    usage = response.get("usage") or {}
    return vectors, int(usage.get("prompt_tokens") or usage.get("total_tokens") or 0)


def with_usage(stream_options: Any) -> dict[str, Any]:
    """The client's stream_options, asking for usage whatever the client asked (stored
    answers carry usage; clients see the usage chunk only when they asked for it)."""
    options = dict(stream_options) if isinstance(stream_options, dict) else {}
    options["include_usage"] = True
    return options
