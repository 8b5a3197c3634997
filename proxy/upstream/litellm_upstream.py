"""Any provider litellm supports, answered in the OpenAI shape: the only module that
imports litellm.

litellm is imported lazily (it costs seconds and hundreds of MB), with its cost-map
download turned off: only when a configured model routes through it, in a worker thread
started once the server is up. A request for such a model waits for that import; requests
for the other models never do. Only the
OpenAI parameters litellm maps are passed to it as arguments; any other field of the
client's body goes to the provider inside `extra_body`, so a client can never set
litellm's own options (`api_base`, `api_key`, `mock_response`, ...) and redirect the
server's credentials. Failures are translated by `proxy.upstream.errors`.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
from collections.abc import AsyncIterator
from typing import Any

from proxy.config import ModelConfig
from proxy.core.apis.base import Endpoint, GenerationAdapter
from proxy.errors import UpstreamError
from proxy.upstream.base import vectors_in_order, with_usage
from proxy.upstream.errors import translate

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


_loaded: Any = None  # litellm once imported and set up


def _litellm() -> Any:
    """litellm, imported on first use (seconds and hundreds of MB), told not to download
    its cost map or phone home. Blocking: the event loop calls it only once it is loaded."""
    global _loaded
    if _loaded is None:
        os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
        # litellm gives its loggers a plain-text stdout handler at import and logs through
        # it while importing; at CRITICAL that handler stays quiet and the records reach
        # ours (one format), until `_own_logs` removes it.
        os.environ.setdefault("LITELLM_LOG", "CRITICAL")
        import litellm

        litellm.suppress_debug_info = True
        litellm.telemetry = False
        _own_logs()
        _loaded = litellm
    return _loaded


# Embedding parameters litellm maps (litellm.aembedding); any other field goes in extra_body.
EMBEDDING_PARAMS = frozenset({"dimensions", "user"})
# Per operation: the litellm function, and the parameters passed to it as arguments (the
# ones litellm maps for every provider); any other field goes in `extra_body`.
_CALLS: dict[Endpoint, tuple[str, frozenset[str]]] = {
    Endpoint.CHAT: ("acompletion", CHAT_PARAMS),
    Endpoint.COMPLETIONS: ("atext_completion", COMPLETION_PARAMS),
    Endpoint.RESPONSES: ("aresponses", RESPONSES_PARAMS),
}
_LITELLM_EXTRAS = ("provider_specific_fields", "cost")


class LiteLLMUpstream:
    """Any provider litellm supports, answered in the OpenAI shape."""

    def __init__(self, default_timeout_s: float) -> None:
        self._timeout = default_timeout_s
        self._loading: asyncio.Future[Any] | None = None

    def load_in_background(self) -> None:
        """Import litellm in a worker thread; calls wait for it (`_module`)."""
        if _loaded is None and self._loading is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # not on the loop (a reload from a thread): the first call loads it
                return
            self._loading = loop.run_in_executor(None, _litellm)
            self._loading.add_done_callback(_loaded_now)

    async def _module(self) -> Any:
        """litellm, waiting for its import (never importing on the event loop)."""
        if _loaded is not None:
            return _loaded
        if self._loading is None or self._loading.get_loop() is not asyncio.get_running_loop():
            self._loading = None
            self.load_in_background()
        assert self._loading is not None
        return await asyncio.shield(self._loading)

    def _arguments(self, model: ModelConfig, body: dict[str, Any], api: GenerationAdapter) -> dict[str, Any]:
        params, own = _CALLS[api.endpoint][1], api.own_fields
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

    async def _call(self, api: GenerationAdapter) -> Any:
        return getattr(await self._module(), _CALLS[api.endpoint][0])

    async def complete(
        self, model: ModelConfig, body: dict[str, Any], api: GenerationAdapter
    ) -> dict[str, Any]:
        call = await self._call(api)
        try:
            response = await call(**self._arguments(model, body, api))
        except Exception as exc:
            raise translate(exc) from exc
        return provider_ids(clean(_plain(response)))

    async def stream(
        self, model: ModelConfig, body: dict[str, Any], api: GenerationAdapter
    ) -> AsyncIterator[dict[str, Any]]:
        call = await self._call(api)
        args = self._arguments(model, body, api)
        args["stream"] = True
        if api.asks_stream_usage:
            args["stream_options"] = with_usage(body.get("stream_options"))
        try:
            wrapper = await call(**args)
        except Exception as exc:
            raise translate(exc) from exc
        return self._chunks(wrapper)

    async def embed(
        self, model: ModelConfig, inputs: list[Any], params: dict[str, Any]
    ) -> tuple[list[list[float]], int]:
        litellm = await self._module()
        args: dict[str, Any] = {k: v for k, v in params.items() if k in EMBEDDING_PARAMS}
        extra = {k: v for k, v in params.items() if k not in EMBEDDING_PARAMS}
        if extra:
            args["extra_body"] = extra
        args.update(
            model=model.litellm_model,
            input=inputs,
            num_retries=0,
            timeout=model.timeout_seconds or self._timeout,
            encoding_format="float",  # stored as float32 and served as either
        )
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
                plain = provider_ids(clean(_plain(chunk)))
                if first and _finished_empty(plain):
                    # litellm turns a body that is not an event stream at all into an empty
                    # answer that "stopped"; no real stream finishes before saying anything.
                    raise UpstreamError("The upstream provider's stream was malformed (no events).")
                first = False
                yield plain
        except Exception as exc:
            raise translate(exc) from exc


def _own_logs() -> None:
    """litellm's loggers write through ours (one format: `log_format: json` stays one JSON
    object per line), not its own stderr handlers; its per-call INFO lines ("LiteLLM
    completion() model= ...") only at DEBUG."""
    chatty = logging.getLogger().getEffectiveLevel() > logging.DEBUG
    for name in ("LiteLLM", "LiteLLM Router", "LiteLLM Proxy"):
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
        if chatty:
            logger.setLevel(logging.WARNING)


def _loaded_now(future: asyncio.Future[Any]) -> None:
    """On the loop, once litellm is in: keep its millions of objects out of the garbage
    collector (full passes over them stalled the event loop for ~100 ms)."""
    if not future.cancelled() and future.exception() is None:
        gc.collect()
        gc.freeze()


def _finished_empty(chunk: dict[str, Any]) -> bool:
    choices = chunk.get("choices") or []
    return bool(choices) and all(
        c.get("finish_reason") and not any((c.get("delta") or {}).values()) and not c.get("text")
        for c in choices
    )


def _plain(model: Any) -> dict[str, Any]:
    """A litellm object as plain JSON types (its Responses API events carry enum members)."""
    return model.model_dump(mode="json", exclude_none=True)


def provider_ids(obj: dict[str, Any]) -> dict[str, Any]:
    """The provider's own Responses API ids where litellm encoded them (`resp_<base64 of
    litellm:...;response_id:resp_...>`), so clients can use them against the provider too;
    in a response and in the response an event carries."""
    for part in (obj, obj.get("response")):
        ident = part.get("id") if isinstance(part, dict) else None
        if isinstance(ident, str) and ident.startswith("resp_") and len(ident) > 40:
            from litellm.responses.utils import ResponsesAPIRequestUtils

            if ResponsesAPIRequestUtils._is_litellm_encoded_response_id(ident):
                decoded = ResponsesAPIRequestUtils._decode_responses_api_response_id(ident)
                part["id"] = decoded.get("response_id") or ident  # type: ignore[index]
    return obj


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
