"""Token estimates work offline (tiktoken with litellm's bundled BPE files)."""

from __future__ import annotations

from proxy.config import ModelConfig
from proxy.core.tokens import completion_allowance, count_text, encoding, encoding_name, prompt_tokens


def test_encodings_load_offline_and_count() -> None:
    for name in ("cl100k_base", "o200k_base", "p50k_base"):
        assert count_text("hello world", encoding(name)) == 2


def test_encoding_per_model() -> None:
    assert encoding_name(ModelConfig(name="a", litellm_model="openai/gpt-4o-mini")) == "o200k_base"
    assert encoding_name(ModelConfig(name="b", litellm_model="openai/gpt-3.5-turbo")) == "cl100k_base"
    assert encoding_name(ModelConfig(name="c", litellm_model="x/y", tokenizer="p50k_base")) == "p50k_base"


def test_prompt_and_completion_estimates() -> None:
    model = ModelConfig(name="a", litellm_model="openai/gpt-4o-mini")
    body = {
        "messages": [
            {"role": "user", "content": "hello world"},
            {
                "role": "user",
                "content": [{"type": "text", "text": "hi"}, {"type": "image_url", "image_url": {"url": "x"}}],
            },
        ]
    }
    assert prompt_tokens(body, model) == 3 + (4 + 2) + (4 + 1 + 85)
    assert completion_allowance({"max_tokens": 100, "n": 3}, 1024) == 300
    assert completion_allowance({"max_completion_tokens": 50}, 1024) == 50
    assert completion_allowance({}, 1024) == 1024
