"""Which upstream answers a model: decided from the model's config and the adapter's
flags, never from API names."""

from __future__ import annotations

from proxy.config import ModelConfig
from proxy.core.apis.base import Adapter
from proxy.upstream.base import Upstream
from proxy.upstream.demo import DemoUpstream
from proxy.upstream.direct import DirectUpstream
from proxy.upstream.litellm_upstream import LiteLLMUpstream
from proxy.upstream.transport import AiohttpTransport, HttpTransport

# litellm providers whose servers speak the OpenAI API, so they can be called directly.
OPENAI_COMPATIBLE = ("openai/", "text-completion-openai/")


class Upstreams:
    """Demo models in-process, `passthrough` models straight to their OpenAI-compatible
    server, the rest through litellm. `transport` carries the direct calls (aiohttp by
    default; tests inject one their HTTP mock can see)."""

    def __init__(
        self,
        default_timeout_s: float,
        demo: Upstream | None = None,
        transport: HttpTransport | None = None,
    ) -> None:
        self._litellm = LiteLLMUpstream(default_timeout_s)
        self._demo: Upstream = demo or DemoUpstream()
        self._direct = DirectUpstream(default_timeout_s, transport or AiohttpTransport())

    def for_model(self, model: ModelConfig, api: Adapter) -> Upstream:
        if model.is_demo:
            return self._demo
        if api.direct_for_openai_models and model.litellm_model.startswith(OPENAI_COMPATIBLE):
            # Only OpenAI-compatible servers have the legacy endpoint, and litellm's text
            # completion stream reports a stream cut off mid-way as finished ("stop", with
            # estimated usage), which would cache a truncated answer. Called directly.
            return self._direct
        return self._direct if model.passthrough else self._litellm

    async def aclose(self) -> None:
        await self._direct.aclose()
