"""Which configured models cannot be called for want of an API key, and which environment
variable would fix it: `check-config` and `serve` warn about them, and a request that
would have to call such a model's provider gets 503 `model_not_configured` (not a 502
after a round trip the provider was bound to refuse).

"Needs a key" is decided from the model's config, never by calling anyone:

- the demo model, a model with `api_key` set, and any model whose `api_base` is local
  (loopback, a private address, `localhost`, a bare name such as a compose service
  `vllm`): no (vLLM, Ollama, the fake provider);
- OpenAI-compatible models (`openai/...`) at OpenAI's own API (no `api_base`, or
  api.openai.com) or at Azure OpenAI: yes. At OpenAI's API the direct upstream and litellm
  both fall back to OPENAI_API_KEY from the environment; an Azure host gets only what
  `api_key` says, so the warning asks for the variable to be referenced there too;
  `openai/...` at any other host: unknown (self-hosted servers rarely check keys), so no;
- models routed through litellm: the provider's key variable from `PROVIDER_KEYS`, a
  static table of the main providers (litellm falls back to these when `api_key` is not
  given). litellm knows them too (`litellm.validate_environment`), but asking it means
  importing litellm, seconds of CPU and hundreds of MB, which the startup path never does
  (it loads in the background, `litellm_upstream`); tests/unit/upstream/test_credentials.py
  checks every row against litellm's answer. A provider not in the table (Bedrock and
  Vertex take cloud credentials, not one key) is not second-guessed.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from proxy.config import ModelConfig

# litellm provider prefix -> the environment variables litellm reads its key from (any one
# will do; the first is the one a message names).
PROVIDER_KEYS: dict[str, tuple[str, ...]] = {
    "openai": ("OPENAI_API_KEY",),
    "anthropic": ("ANTHROPIC_API_KEY",),
    "gemini": ("GEMINI_API_KEY", "GOOGLE_API_KEY"),
    "azure": ("AZURE_API_KEY",),
    "mistral": ("MISTRAL_API_KEY",),
    "codestral": ("CODESTRAL_API_KEY",),
    "groq": ("GROQ_API_KEY",),
    "cohere": ("COHERE_API_KEY",),
    "deepseek": ("DEEPSEEK_API_KEY",),
    "together_ai": ("TOGETHERAI_API_KEY",),
    "xai": ("XAI_API_KEY",),
    "perplexity": ("PERPLEXITYAI_API_KEY",),
    "openrouter": ("OPENROUTER_API_KEY",),
    "fireworks_ai": ("FIREWORKS_AI_API_KEY",),
    "replicate": ("REPLICATE_API_KEY",),
    "huggingface": ("HUGGINGFACE_API_KEY",),
    "voyage": ("VOYAGE_API_KEY",),
    "cerebras": ("CEREBRAS_API_KEY",),
    "deepinfra": ("DEEPINFRA_API_KEY",),
    "nvidia_nim": ("NVIDIA_NIM_API_KEY",),
    "ai21": ("AI21_API_KEY",),
    "dashscope": ("DASHSCOPE_API_KEY",),
    "moonshot": ("MOONSHOT_API_KEY",),
}
OPENAI_HOST = "api.openai.com"
_AZURE_SUFFIXES = (".openai.azure.com", ".cognitiveservices.azure.com", ".services.ai.azure.com")
_LOCAL_SUFFIXES = (".localhost", ".local", ".internal")


@dataclass(frozen=True, slots=True)
class MissingKey:
    """A model whose provider needs a key it does not have."""

    model: str
    provider: str
    env_var: str
    # The upstream does not read `env_var` by itself: the model's api_key must reference it.
    reference_in_config: bool = False

    def advice(self) -> str:
        """What to do, for a warning or an error message."""
        if self.reference_in_config:
            return f"set {self.env_var} and reference it from the model's api_key (${{{self.env_var}}})"
        return f"set {self.env_var} in the proxy's environment (or the model's api_key) and restart it"

    def warning(self) -> str:
        return f"model {self.model!r} ({self.provider}) has no API key: {self.advice()}"


def missing_key(model: ModelConfig, environ: Mapping[str, str]) -> MissingKey | None:
    """The key `model`'s provider needs and does not have, or None (see the module doc)."""
    if model.is_demo or model.api_key:
        return None
    host = (urlsplit(model.api_base).hostname or "") if model.api_base else None
    if host is not None and is_local(host):
        return None
    if model.speaks_openai:
        if host is None or host == OPENAI_HOST:
            return _unless_set(model, "OpenAI", ("OPENAI_API_KEY",), environ)
        if host.endswith(_AZURE_SUFFIXES):
            return MissingKey(model.name, "Azure OpenAI", "AZURE_API_KEY", reference_in_config=True)
        return None
    provider = model.litellm_model.split("/", 1)[0]
    names = PROVIDER_KEYS.get(provider)
    return _unless_set(model, provider, names, environ) if names else None


def missing_keys(models: Iterable[ModelConfig], environ: Mapping[str, str]) -> list[MissingKey]:
    return [found for m in models if (found := missing_key(m, environ)) is not None]


def is_local(host: str) -> bool:
    """A host on this machine or a private network: servers there rarely want a key."""
    host = host.strip("[]").lower()
    if host == "localhost" or host.endswith(_LOCAL_SUFFIXES) or ("." not in host and ":" not in host):
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return address.is_loopback or address.is_private or address.is_link_local


def _unless_set(
    model: ModelConfig, provider: str, names: tuple[str, ...], environ: Mapping[str, str]
) -> MissingKey | None:
    if any(environ.get(name) for name in names):
        return None
    return MissingKey(model.name, provider, names[0])
