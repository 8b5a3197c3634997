"""Which upstream answers a model: decided from the model's config and the adapter's
flags, never from API names."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Mapping
from typing import Any

from proxy.config import ModelConfig
from proxy.core.apis.base import Adapter, GenerationAdapter
from proxy.errors import ModelNotConfigured
from proxy.upstream.base import Upstream
from proxy.upstream.credentials import MissingKey, missing_key
from proxy.upstream.demo import DemoUpstream
from proxy.upstream.direct import DirectUpstream
from proxy.upstream.http1 import Http1Transport
from proxy.upstream.litellm_upstream import LiteLLMUpstream
from proxy.upstream.transport import HttpTransport


class Upstreams:
    """Demo models in-process, OpenAI-compatible servers directly (`route: auto | direct`),
    the rest through litellm. `transport` carries the direct calls (`Http1Transport` by default;
    tests inject one their HTTP mock can see). A model whose provider needs an API key the
    proxy lacks is answered by `Unconfigured` (503 naming the variable to set); `environ` is
    where keys are looked for (the process's environment unless a test passes its own)."""

    def __init__(
        self,
        default_timeout_s: float,
        demo: Upstream | None = None,
        transport: HttpTransport | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self._litellm = LiteLLMUpstream(default_timeout_s)
        self._demo: Upstream = demo or DemoUpstream()
        self._direct = DirectUpstream(default_timeout_s, transport or Http1Transport())
        self._environ = os.environ if environ is None else environ

    def for_model(self, model: ModelConfig, api: Adapter) -> Upstream:
        if model.is_demo:
            return self._demo
        if (missing := missing_key(model, self._environ)) is not None:
            return Unconfigured(missing)
        if api.direct_for_openai_models and model.speaks_openai:
            # Only OpenAI-compatible servers have the legacy endpoint, and litellm's text
            # completion stream reports a stream cut off mid-way as finished ("stop", with
            # estimated usage), which would cache a truncated answer. Called directly.
            return self._direct
        return self._litellm if model.via_litellm else self._direct

    def load_litellm(self) -> None:
        """Start importing litellm in the background (a model routes through it)."""
        self._litellm.load_in_background()

    async def aclose(self) -> None:
        await self._direct.aclose()


class Unconfigured:
    """The upstream of a model with no API key: every call is the 503 that says which
    variable to set. Raised from the call, so the pipeline settles the rate-limit
    reservation and releases the single-flight lock as for any failed call."""

    def __init__(self, missing: MissingKey) -> None:
        self.missing = missing

    def _error(self) -> ModelNotConfigured:
        m = self.missing
        return ModelNotConfigured(
            f"Model {m.model!r} is not configured on this proxy: its provider ({m.provider}) needs "
            f"an API key and none is set. The operator should {m.advice()}."
        )

    async def complete(
        self, model: ModelConfig, body: dict[str, Any], api: GenerationAdapter
    ) -> dict[str, Any]:
        raise self._error()

    async def stream(
        self, model: ModelConfig, body: dict[str, Any], api: GenerationAdapter
    ) -> AsyncIterator[dict[str, Any]]:
        raise self._error()

    async def embed(
        self, model: ModelConfig, inputs: list[Any], params: dict[str, Any]
    ) -> tuple[list[list[float]], int]:
        raise self._error()
