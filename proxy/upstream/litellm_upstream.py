"""Calls to the provider: the only module that imports litellm.

litellm is imported lazily on the first miss (it costs seconds and megabytes), with its
cost-map download turned off and its async HTTP sent over httpx. Only the OpenAI chat
parameters are passed to litellm as arguments; any other field of the client's body goes
to the provider inside `extra_body`, so a client can never set litellm's own options
(`api_base`, `api_key`, `mock_response`, ...) and redirect the server's credentials.
Provider errors are translated at one boundary with a lookup table, most specific first.
"""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator
from typing import Any, Protocol

from proxy.config import ModelConfig
from proxy.errors import (
    ProxyError,
    UpstreamError,
    UpstreamRateLimited,
    UpstreamRejected,
    UpstreamTimeout,
)

# OpenAI chat-completion parameters litellm knows how to map for every provider.
CHAT_PARAMS = frozenset(
    {
        "messages",
        "temperature",
        "top_p",
        "n",
        "stop",
        "max_tokens",
        "max_completion_tokens",
        "presence_penalty",
        "frequency_penalty",
        "logit_bias",
        "user",
        "seed",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "response_format",
        "logprobs",
        "top_logprobs",
        "reasoning_effort",
        "modalities",
        "audio",
        "prediction",
        "web_search_options",
        "functions",
        "function_call",
        "service_tier",
        "verbosity",
    }
)
# Legacy completion parameters (litellm.atext_completion).
COMPLETION_PARAMS = frozenset(
    {
        "prompt",
        "suffix",
        "max_tokens",
        "temperature",
        "top_p",
        "n",
        "logprobs",
        "echo",
        "stop",
        "presence_penalty",
        "frequency_penalty",
        "best_of",
        "logit_bias",
        "user",
        "seed",
    }
)
# Responses API parameters (litellm.aresponses).
RESPONSES_PARAMS = frozenset(
    {
        "input",
        "include",
        "instructions",
        "max_output_tokens",
        "metadata",
        "parallel_tool_calls",
        "previous_response_id",
        "reasoning",
        "store",
        "background",
        "temperature",
        "text",
        "tool_choice",
        "tools",
        "top_p",
        "truncation",
        "user",
        "prompt",
        "max_tool_calls",
        "top_logprobs",
        "service_tier",
        "safety_identifier",
        "prompt_cache_key",
    }
)
LEGACY_COMPLETION_PROVIDERS = ("openai/", "text-completion-openai/")
PARAMS = {"chat": CHAT_PARAMS, "completions": COMPLETION_PARAMS, "responses": RESPONSES_PARAMS}
# Fields of the client's body the proxy handles itself and never forwards. (For chat,
# `store` and `metadata` would ask OpenAI to keep a copy of a completion the proxy may
# serve from cache; in the Responses API they are the client's to send.)
OWN_FIELDS = frozenset({"model", "stream", "stream_options", "metadata", "store"})
OWN = {
    "chat": OWN_FIELDS,
    "completions": frozenset({"model", "stream", "stream_options"}),
    "responses": frozenset({"model", "stream"}),
}
_LITELLM_EXTRAS = ("provider_specific_fields", "cost")


class Upstream(Protocol):
    """`api` names the OpenAI API asked for: "chat", "completions" or "responses"."""

    async def complete(
        self, model: ModelConfig, body: dict[str, Any], api: str = "chat"
    ) -> dict[str, Any]: ...

    async def stream(
        self, model: ModelConfig, body: dict[str, Any], api: str = "chat"
    ) -> AsyncIterator[dict[str, Any]]: ...

    async def embed(
        self, model: ModelConfig, inputs: list[Any], dimensions: int | None
    ) -> tuple[list[list[float]], int]:
        """Vectors in input order, and the prompt tokens the provider counted."""
        ...


_HTTPX = {"on": False}


def _litellm() -> Any:
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import litellm

    litellm.disable_aiohttp_transport = _HTTPX["on"]
    litellm.suppress_debug_info = True
    litellm.telemetry = False
    return litellm


def use_http_client(name: str) -> None:
    """upstream.http_client: "httpx" sends litellm's calls over httpx (visible to respx)."""
    _HTTPX["on"] = name == "httpx"
    if "litellm" in sys.modules:
        _litellm()


def preload() -> None:
    """Import litellm now (at startup, before serving) so the first miss does not pay for it."""
    _litellm()


class LiteLLMUpstream:
    """Any provider litellm supports, answered in the OpenAI shape."""

    def __init__(self, default_timeout_s: float) -> None:
        self._timeout = default_timeout_s

    def _arguments(self, model: ModelConfig, body: dict[str, Any], api: str = "chat") -> dict[str, Any]:
        params, own = PARAMS[api], OWN[api]
        args: dict[str, Any] = {k: v for k, v in body.items() if k in params}
        extra = {k: v for k, v in body.items() if k not in params and k not in own}
        if extra:
            args["extra_body"] = extra
        args.update(
            model=model.litellm_model,
            timeout=model.timeout_seconds or self._timeout,
            num_retries=0,  # the client's SDK retries; retrying here too multiplies load
        )
        if model.api_base:
            args["api_base"] = model.api_base
        if model.api_key:
            args["api_key"] = model.api_key
        return args

    @staticmethod
    def _call(api: str) -> Any:
        litellm = _litellm()
        return {"chat": litellm.acompletion, "completions": litellm.atext_completion}.get(
            api, litellm.aresponses
        )

    async def complete(self, model: ModelConfig, body: dict[str, Any], api: str = "chat") -> dict[str, Any]:
        call = self._call(api)
        try:
            response = await call(**self._arguments(model, body, api))
        except Exception as exc:
            raise translate(exc) from exc
        return clean(_plain(response))

    async def stream(
        self, model: ModelConfig, body: dict[str, Any], api: str = "chat"
    ) -> AsyncIterator[dict[str, Any]]:
        call = self._call(api)
        args = self._arguments(model, body, api)
        args["stream"] = True
        if api != "responses":  # the Responses API reports usage in its final event anyway
            args["stream_options"] = {"include_usage": True}
        try:
            wrapper = await call(**args)
        except Exception as exc:
            raise translate(exc) from exc
        return self._chunks(wrapper)

    async def embed(
        self, model: ModelConfig, inputs: list[Any], dimensions: int | None
    ) -> tuple[list[list[float]], int]:
        litellm = _litellm()
        args: dict[str, Any] = {
            "model": model.litellm_model,
            "input": inputs,
            "num_retries": 0,
            "timeout": model.timeout_seconds or self._timeout,
        }
        if dimensions is not None:
            args["dimensions"] = dimensions
        if model.api_base:
            args["api_base"] = model.api_base
        if model.api_key:
            args["api_key"] = model.api_key
        try:
            response = await litellm.aembedding(**args)
        except Exception as exc:
            raise translate(exc) from exc
        return vectors_in_order(response.model_dump(), len(inputs))

    @staticmethod
    async def _chunks(wrapper: Any) -> AsyncIterator[dict[str, Any]]:
        first = True
        try:
            async for chunk in wrapper:
                plain = clean(_plain(chunk))
                if first and _finished_empty(plain):
                    # litellm turns a body that is not an event stream at all into an empty
                    # answer that "stopped"; no real stream finishes before saying anything.
                    raise UpstreamError("The upstream provider's stream was malformed (no events).")
                first = False
                yield plain
        except Exception as exc:
            raise translate(exc) from exc


class Upstreams:
    """Picks the upstream for a model: demo models in-process, `passthrough` models straight
    to their OpenAI-compatible server, the rest through litellm."""

    def __init__(
        self, default_timeout_s: float, demo: Upstream | None = None, http_client: str = "aiohttp"
    ) -> None:
        from proxy.upstream.demo import DemoUpstream
        from proxy.upstream.direct import PassthroughUpstream

        use_http_client(http_client)
        self._litellm = LiteLLMUpstream(default_timeout_s)
        self._demo: Upstream = demo or DemoUpstream()
        self._direct = PassthroughUpstream(default_timeout_s, http_client)

    def for_model(self, model: ModelConfig, api: str = "chat") -> Upstream:
        if model.is_demo:
            return self._demo
        if api == "completions" and model.litellm_model.startswith(LEGACY_COMPLETION_PROVIDERS):
            # Only OpenAI-compatible servers have the legacy endpoint, and litellm's text
            # completion stream reports a stream cut off mid-way as finished ("stop", with
            # estimated usage), which would cache a truncated answer. Called directly.
            return self._direct
        return self._direct if model.passthrough else self._litellm

    async def aclose(self) -> None:
        await self._direct.aclose()


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


def _finished_empty(chunk: dict[str, Any]) -> bool:
    choices = chunk.get("choices") or []
    return bool(choices) and all(
        c.get("finish_reason") and not any((c.get("delta") or {}).values()) and not c.get("text")
        for c in choices
    )


def _plain(model: Any) -> dict[str, Any]:
    """A litellm object as plain JSON types (its Responses API events carry enum members)."""
    return model.model_dump(mode="json", exclude_none=True)


def clean(obj: dict[str, Any]) -> dict[str, Any]:
    """Drop litellm's own additions so clients see the plain OpenAI shape."""
    for extra in _LITELLM_EXTRAS:
        obj.pop(extra, None)
    usage = obj.get("usage")
    if isinstance(usage, dict):
        usage.pop("cost", None)
    for choice in obj.get("choices") or ():
        choice.pop("provider_specific_fields", None)
        for part in ("message", "delta"):
            inner = choice.get(part)
            if isinstance(inner, dict):
                inner.pop("provider_specific_fields", None)
    return obj


def _retry_after(exc: Exception) -> dict[str, str]:
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None) or getattr(exc, "litellm_response_headers", None)
    out = {}
    for name in ("retry-after", "retry-after-ms"):
        value = headers.get(name) if headers is not None else None
        if value:
            out[name] = str(value)
    return out


def _message(exc: Exception) -> str:
    text = str(getattr(exc, "message", None) or exc)
    for prefix in ("litellm.", "OpenAIException - ", "AnthropicException - "):
        if text.startswith(prefix):
            text = text.split(": ", 1)[-1] if prefix == "litellm." else text[len(prefix) :]
    return text.strip() or type(exc).__name__


def translate(exc: Exception) -> ProxyError:
    """A provider failure as the ProxyError the client should see."""
    if isinstance(exc, ProxyError):
        return exc
    litellm = _litellm()
    ex = litellm.exceptions
    table: list[tuple[type[Exception], Any]] = [
        (ex.Timeout, lambda e: UpstreamTimeout(f"The upstream provider timed out: {_message(e)}")),
        (
            ex.RateLimitError,
            lambda e: UpstreamRateLimited(
                f"The upstream provider is rate limiting: {_message(e)}", headers=_retry_after(e)
            ),
        ),
        (
            ex.AuthenticationError,
            lambda e: UpstreamError("The upstream provider rejected the proxy's credentials for this model."),
        ),
        (
            ex.PermissionDeniedError,
            lambda e: UpstreamError("The upstream provider denied the proxy access to this model."),
        ),
        (
            ex.NotFoundError,
            lambda e: UpstreamError(f"The upstream provider does not know this model: {_message(e)}"),
        ),
        (ex.BadRequestError, lambda e: UpstreamRejected(_message(e), status=400)),
        (ex.UnprocessableEntityError, lambda e: UpstreamRejected(_message(e), status=422)),
        (
            ex.APIConnectionError,
            lambda e: UpstreamError(f"Could not reach the upstream provider: {_message(e)}"),
        ),
    ]
    for kind, build in table:
        if isinstance(exc, kind):
            return build(exc)
    return UpstreamError(f"The upstream provider failed: {_message(exc)}")
