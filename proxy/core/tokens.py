"""Token estimates for the limiter: tiktoken, offline.

tiktoken downloads its BPE files on first use; litellm ships cl100k_base, o200k_base and
p50k_base under `litellm/litellm_core_utils/tokenizers/` in tiktoken's cache layout, so
TIKTOKEN_CACHE_DIR is pointed there (found without importing litellm, which costs seconds).
The estimate only has to be close: the limiter reconciles with the real usage afterwards.
"""

from __future__ import annotations

import importlib.util
import os
from functools import lru_cache
from pathlib import Path
from typing import Any

import tiktoken

from proxy.config import ModelConfig

# Per-message framing tokens of the chat format, and the reply's priming tokens.
_PER_MESSAGE = 4
_PER_REPLY = 3
# An image part's cost is unknowable without fetching it; this is OpenAI's low-detail cost.
_PER_IMAGE = 85
_O200K_FAMILIES = ("gpt-4o", "gpt-4.1", "gpt-4.5", "gpt-5", "o1", "o3", "o4", "chatgpt-4o")


def litellm_file(*parts: str) -> Path | None:
    """A file litellm ships (BPE files, the price map), found without importing litellm."""
    spec = importlib.util.find_spec("litellm")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))).joinpath(*parts)
    return path if path.exists() else None


@lru_cache(maxsize=4)
def encoding(name: str) -> tiktoken.Encoding:
    if "TIKTOKEN_CACHE_DIR" not in os.environ:
        bundled = litellm_file("litellm_core_utils", "tokenizers")
        if bundled:
            os.environ["TIKTOKEN_CACHE_DIR"] = str(bundled)
    return tiktoken.get_encoding(name)


def encoding_name(model: ModelConfig) -> str:
    """The configured tokenizer, else a guess from the upstream model's name."""
    if model.tokenizer:
        return model.tokenizer
    name = model.litellm_model.rsplit("/", 1)[-1].lower()
    return "o200k_base" if name.startswith(_O200K_FAMILIES) else "cl100k_base"


def count_text(text: str, enc: tiktoken.Encoding) -> int:
    return len(enc.encode(text, disallowed_special=()))


def _content_tokens(content: Any, enc: tiktoken.Encoding) -> int:
    if isinstance(content, str):
        return count_text(content, enc)
    total = 0
    for part in content if isinstance(content, list) else ():
        if not isinstance(part, dict):
            continue
        if isinstance(part.get("text"), str):
            total += count_text(part["text"], enc)
        elif part.get("type") in ("image_url", "input_image"):
            total += _PER_IMAGE
    return total


def prompt_tokens(body: dict[str, Any], model: ModelConfig) -> int:
    """Estimated prompt tokens of a chat request (messages, tool definitions)."""
    enc = encoding(encoding_name(model))
    total = _PER_REPLY
    for message in body.get("messages") or ():
        total += _PER_MESSAGE + _content_tokens(message.get("content"), enc)
        if message.get("tool_calls"):
            total += count_text(str(message["tool_calls"]), enc)
    if body.get("tools"):
        total += count_text(str(body["tools"]), enc)
    return total


def completion_allowance(body: dict[str, Any], default_max_tokens: int) -> int:
    """Completion tokens to reserve: the request's cap (times n), else the configured default."""
    cap = body.get("max_completion_tokens") or body.get("max_tokens") or default_max_tokens
    n = body.get("n") or 1
    return int(cap) * int(n)
