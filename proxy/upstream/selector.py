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


class Upstreams:
    """Demo models in-process, OpenAI-compatible servers directly (`route: auto | direct`),
    the rest through litellm. `transport` carries the direct calls (aiohttp by default;
    tests inject one their HTTP mock can see)."""

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
