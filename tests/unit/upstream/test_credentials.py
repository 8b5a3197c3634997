"""Which models cannot be called for want of an API key, decided from the config alone,
and the static provider table checked against litellm's own knowledge."""

from __future__ import annotations

import os
from typing import Any

import pytest

from proxy.config import ModelConfig
from proxy.upstream.credentials import PROVIDER_KEYS, is_local, missing_key, missing_keys


def model(litellm_model: str, **fields: Any) -> ModelConfig:
    return ModelConfig(name="m", litellm_model=litellm_model, **fields)


@pytest.mark.parametrize(
    "litellm_model, fields, env_var",
    [
        ("openai/gpt-4o-mini", {}, "OPENAI_API_KEY"),  # OpenAI's own API: it needs one
        ("openai/gpt-4o-mini", {"api_base": "https://api.openai.com/v1"}, "OPENAI_API_KEY"),
        ("openai/gpt-4o-mini", {"api_key": ""}, "OPENAI_API_KEY"),  # ${OPENAI_API_KEY:-} unset
        ("text-completion-openai/gpt-3.5-turbo-instruct", {}, "OPENAI_API_KEY"),
        ("openai/gpt-4o", {"api_base": "https://acme.openai.azure.com/openai/v1"}, "AZURE_API_KEY"),
        ("openai/gpt-4o-mini", {"route": "litellm"}, "OPENAI_API_KEY"),
        ("anthropic/claude-3-5-haiku-latest", {}, "ANTHROPIC_API_KEY"),
        ("gemini/gemini-2.0-flash", {}, "GEMINI_API_KEY"),
        ("mistral/mistral-small", {"api_base": "https://api.mistral.ai/v1"}, "MISTRAL_API_KEY"),
    ],
)
def test_a_provider_that_needs_a_key_names_its_variable(
    litellm_model: str, fields: dict[str, Any], env_var: str
) -> None:
    found = missing_key(model(litellm_model, **fields), {})
    assert found is not None and found.env_var == env_var and found.model == "m"
    assert env_var in found.warning()


@pytest.mark.parametrize(
    "litellm_model, fields",
    [
        ("demo/echo", {}),
        ("openai/gpt-4o-mini", {"api_key": "sk-set"}),
        ("openai/qwen", {"api_base": "http://127.0.0.1:8000/v1"}),  # vLLM on this machine
        ("openai/llama3", {"api_base": "http://localhost:11434/v1"}),  # Ollama
        ("openai/llama3", {"api_base": "http://ollama:11434/v1"}),  # a compose service
        ("openai/qwen", {"api_base": "http://10.1.2.3:8000/v1"}),  # a private network
        ("openai/qwen", {"api_base": "http://[::1]:8000/v1"}),
        ("openai/qwen", {"api_base": "https://vllm.example.com/v1"}),  # self-hosted: not second-guessed
        ("anthropic/claude-3-5-haiku-latest", {"api_base": "http://127.0.0.1:9"}),
        ("hosted_vllm/qwen", {"api_base": "https://gpu.example.com/v1"}),
        ("bedrock/anthropic.claude-3", {}),  # cloud credentials, not one key
        ("ollama/llama3", {}),
    ],
)
def test_no_key_needed(litellm_model: str, fields: dict[str, Any]) -> None:
    assert missing_key(model(litellm_model, **fields), {}) is None


def test_a_key_in_the_environment_is_enough_where_the_upstream_reads_it() -> None:
    assert missing_key(model("openai/gpt-4o-mini"), {"OPENAI_API_KEY": "sk-x"}) is None
    assert missing_key(model("anthropic/claude-3-5-haiku-latest"), {"ANTHROPIC_API_KEY": "k"}) is None
    assert missing_key(model("gemini/gemini-2.0-flash"), {"GOOGLE_API_KEY": "k"}) is None  # either one
    assert missing_key(model("anthropic/claude-3-5-haiku-latest"), {"ANTHROPIC_API_KEY": ""}) is not None
    # The direct upstream sends OPENAI_API_KEY to OpenAI only, never to an Azure host: there
    # the config must reference the variable, and the advice says so.
    azure = missing_key(
        model("openai/gpt-4o", api_base="https://x.openai.azure.com/v1"), {"OPENAI_API_KEY": "k"}
    )
    assert azure is not None and "${AZURE_API_KEY}" in azure.advice()


def test_missing_keys_lists_each_model_once() -> None:
    models = [
        model("demo/echo"),
        model("openai/gpt-4o-mini"),
        ModelConfig(name="c", litellm_model="anthropic/x"),
    ]
    assert [(m.model, m.env_var) for m in missing_keys(models, {})] == [
        ("m", "OPENAI_API_KEY"),
        ("c", "ANTHROPIC_API_KEY"),
    ]


@pytest.mark.parametrize(
    "host", ["localhost", "api.localhost", "box.local", "vllm", "127.0.0.1", "192.168.1.5", "::1"]
)
def test_local_hosts(host: str) -> None:
    assert is_local(host)


@pytest.mark.parametrize("host", ["api.openai.com", "upstream.test", "8.8.8.8", "2001:4860::8888"])
def test_remote_hosts(host: str) -> None:
    assert not is_local(host)


@pytest.mark.parametrize("provider", sorted(PROVIDER_KEYS))
def test_the_table_agrees_with_litellm(provider: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """litellm names the same variables for every row (it is asked here, in a test, because
    importing it on the startup path costs seconds)."""
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import litellm

    for names in PROVIDER_KEYS.values():
        for name in names:
            monkeypatch.delenv(name, raising=False)
    missing = litellm.validate_environment(model=f"{provider}/some-model")["missing_keys"]
    assert set(PROVIDER_KEYS[provider]) <= set(missing), missing
