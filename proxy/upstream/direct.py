"""Misses to OpenAI-compatible upstreams without litellm (`route: auto | direct` for
`openai/` and `text-completion-openai/` models: the default for them).

litellm makes any provider look like OpenAI, at several ms of CPU per call. When the
upstream already speaks the OpenAI API (OpenAI itself, vLLM, Ollama, another proxy), the
request goes straight through: the client's body is forwarded with the upstream model
name over one pooled HTTP transport. URL and key come from config only; the client's
fields go in the JSON body, never into where or how the call is made.
"""

from __future__ import annotations

import os
from collections.abc import AsyncGenerator
from typing import Any
from urllib.parse import urlsplit

import orjson

from proxy.config import ModelConfig
from proxy.core.apis.base import Endpoint, GenerationAdapter
from proxy.errors import UpstreamError
from proxy.upstream.base import vectors_in_order, with_usage
from proxy.upstream.errors import from_status, translate
from proxy.upstream.transport import Headers, HttpTransport

_OPENAI = "https://api.openai.com/v1"  # an openai/ model without api_base


def upstream_model(model: ModelConfig) -> str:
    """`openai/gpt-4o-mini` -> `gpt-4o-mini`: the name the OpenAI-compatible server knows."""
    return model.litellm_model.split("/", 1)[1]


def _openai_key(model: ModelConfig) -> str | None:
    """OPENAI_API_KEY for OpenAI's own API when the model sets no key, as litellm (and the
    openai SDK) would use it; never sent to any other server."""
    if model.api_base is None or urlsplit(model.api_base).hostname == "api.openai.com":
        return os.environ.get("OPENAI_API_KEY") or None
    return None


class DirectUpstream:
    def __init__(self, default_timeout_s: float, transport: HttpTransport) -> None:
        self._timeout = default_timeout_s
        self._transport = transport

    def _where(self, model: ModelConfig, endpoint: Endpoint) -> tuple[str, dict[str, str], float]:
        headers = {"content-type": "application/json"}
        key = model.api_key or _openai_key(model)
        if key:
            headers["authorization"] = f"Bearer {key}"
        url = f"{(model.api_base or _OPENAI).rstrip('/')}{endpoint.path}"
        return url, headers, model.timeout_seconds or self._timeout

    def _payload(
        self, model: ModelConfig, body: dict[str, Any], api: GenerationAdapter, stream: bool
    ) -> bytes:
        payload = {k: v for k, v in body.items() if k not in api.own_fields}
        payload["model"] = upstream_model(model)
        if stream:
            payload["stream"] = True
            if api.asks_stream_usage:
                payload["stream_options"] = with_usage(body.get("stream_options"))
        return orjson.dumps(payload)

    async def _post(self, url: str, payload: bytes, headers: dict[str, str], timeout: float) -> Any:
        try:
            status, answer_headers, content = await self._transport.post(url, payload, headers, timeout)
        except Exception as exc:
            raise translate(exc) from exc
        return _json_answer(status, answer_headers, content)

    async def complete(
        self, model: ModelConfig, body: dict[str, Any], api: GenerationAdapter
    ) -> dict[str, Any]:
        url, headers, timeout = self._where(model, api.endpoint)
        data = await self._post(url, self._payload(model, body, api, False), headers, timeout)
        if not isinstance(data, dict) or not isinstance(data.get(api.endpoint.answer_list), list):
            raise UpstreamError(
                f"The upstream provider's answer is not a {api.endpoint.name.lower()} answer."
            )
        return data

    async def stream(
        self, model: ModelConfig, body: dict[str, Any], api: GenerationAdapter
    ) -> AsyncGenerator[dict[str, Any], None]:
        url, headers, timeout = self._where(model, api.endpoint)
        try:
            opened = await self._transport.stream(
                url, self._payload(model, body, api, True), headers, timeout
            )
        except Exception as exc:
            raise translate(exc) from exc
        if opened.lines is None:
            raise from_status(opened.status, opened.content, opened.headers)
        return _events(opened.lines)

    async def embed(
        self, model: ModelConfig, inputs: list[Any], params: dict[str, Any]
    ) -> tuple[list[list[float]], int]:
        payload = {**params, "model": upstream_model(model), "input": inputs, "encoding_format": "float"}
        url, headers, timeout = self._where(model, Endpoint.EMBEDDINGS)
        data = await self._post(url, orjson.dumps(payload), headers, timeout)
        if not isinstance(data, dict):
            raise UpstreamError("The upstream provider's answer is not an embeddings answer.")
        return vectors_in_order(data, len(inputs))

    async def aclose(self) -> None:
        await self._transport.aclose()


async def _events(lines: AsyncGenerator[str, None]) -> AsyncGenerator[dict[str, Any], None]:
    """The `data:` events of an SSE answer as JSON objects, until `[DONE]`."""
    try:
        async for line in lines:
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                return
            try:
                chunk = orjson.loads(data)
            except orjson.JSONDecodeError:
                raise UpstreamError("The upstream provider sent a malformed stream event.") from None
            if isinstance(chunk, dict) and "error" in chunk:
                raise UpstreamError(f"The upstream provider failed mid-stream: {chunk['error']}")
            yield chunk
    except UpstreamError:
        raise
    except Exception as exc:
        raise translate(exc) from exc
    finally:
        await lines.aclose()


def _json_answer(status: int, headers: Headers, content: bytes) -> Any:
    """A 200 answer's JSON; any other status or a body that is not JSON as the mapped error."""
    if status != 200:
        raise from_status(status, content, headers)
    try:
        return orjson.loads(content)
    except orjson.JSONDecodeError:
        raise UpstreamError("The upstream provider answered with something that is not JSON.") from None
