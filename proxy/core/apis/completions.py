"""Legacy completions (`POST /v1/completions`): `prompt` in, `text_completion` out.

Keyed like chat: every field that changes the text is in the key (`prompt` as a string,
a list of strings or token arrays, `echo`, `suffix`, `logprobs`, `best_of`, ...), API
defaults are dropped (`max_tokens` defaults to 16 here). Streams are folded per choice
index into one `text_completion`, and replayed as one chunk per choice.
"""

from __future__ import annotations

from typing import Any

from proxy.config import ModelConfig
from proxy.core.apis.base import Assembler, Endpoint, GenerationAdapter, Usage, text_tokens, usage_counts
from proxy.core.apis.chat import StreamAssembler
from proxy.core.keys import params_digest
from proxy.core.validation import check_completions

DEFAULT_MAX_TOKENS = 16  # the API's own default for this endpoint
_DEFAULTS: dict[str, Any] = {
    "temperature": 1,
    "top_p": 1,
    "n": 1,
    "best_of": 1,
    "presence_penalty": 0,
    "frequency_penalty": 0,
    "echo": False,
    "logit_bias": {},
    "stop": [],
    "max_tokens": DEFAULT_MAX_TOKENS,
    "suffix": "",
}
_TEXT_FIELDS = frozenset({"prompt", "suffix"})


def prompts_of(prompt: Any) -> list[Any]:
    """The prompts a request holds: a string, token array, or a list of either."""
    if isinstance(prompt, str) or (isinstance(prompt, list) and prompt and isinstance(prompt[0], int)):
        return [prompt]
    return list(prompt) if isinstance(prompt, list) else []


class CompletionsAdapter(GenerationAdapter):
    endpoint = Endpoint.COMPLETIONS
    key_kind = "cmpl"
    direct_for_openai_models = True

    def check(self, body: dict[str, Any]) -> None:
        check_completions(body)

    def digest(self, body: dict[str, Any], model: ModelConfig) -> str:
        return params_digest(body, model, "completions", _DEFAULTS, _TEXT_FIELDS)

    def prompt_tokens(self, body: dict[str, Any], model: ModelConfig) -> int:
        total = 0
        for prompt in prompts_of(body.get("prompt")):
            total += len(prompt) if isinstance(prompt, list) else text_tokens(prompt, model)
        return total

    def completion_allowance(self, body: dict[str, Any], default_max_tokens: int) -> int:
        cap = body.get("max_tokens") or DEFAULT_MAX_TOKENS
        per_prompt = max(body.get("n") or 1, body.get("best_of") or 1)
        return int(cap) * per_prompt * max(1, len(prompts_of(body.get("prompt"))))

    def is_whole(self, body: dict[str, Any], answer: dict[str, Any]) -> bool:
        choices = answer.get("choices") or []
        wanted = (body.get("n") or 1) * max(1, len(prompts_of(body.get("prompt"))))
        return len(choices) >= wanted and all(c.get("finish_reason") for c in choices)

    def assembler(self) -> Assembler:
        return TextAssembler()

    def encode(self, chunk: dict[str, Any], include_usage: bool) -> bytes | None:
        # Every choice in the shape the SDKs read (litellm leaves out null fields and, in
        # the last chunk, the empty text).
        for choice in chunk.get("choices") or ():
            for name, empty in (("text", ""), ("logprobs", None), ("finish_reason", None)):
                choice.setdefault(name, empty)
        return super().encode(chunk, include_usage)

    def replay_chunks(self, answer: dict[str, Any], include_usage: bool) -> list[dict[str, Any]]:
        head = {k: answer[k] for k in ("id", "created", "model", "system_fingerprint") if k in answer}
        head["object"] = "text_completion"
        chunks = [{**head, "choices": [choice]} for choice in answer.get("choices") or ()]
        if include_usage and answer.get("usage"):
            chunks.append({**head, "choices": [], "usage": answer["usage"]})
        return chunks


class TextAssembler(StreamAssembler):
    """Folds `text_completion` chunks: text and logprobs appended per choice index (the
    head, usage and completeness are kept as for chat)."""

    def _add_choice(self, choice: dict[str, Any]) -> None:
        index = choice.get("index", 0)
        acc = self._choices.setdefault(
            index, {"text": "", "index": index, "logprobs": None, "finish_reason": None}
        )
        acc["text"] += choice.get("text") or ""
        if choice.get("logprobs"):
            merged = acc["logprobs"] = acc["logprobs"] or {}
            for part, values in choice["logprobs"].items():
                if isinstance(values, list):
                    merged.setdefault(part, []).extend(values)
        if choice.get("finish_reason"):
            acc["finish_reason"] = choice["finish_reason"]

    def response(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            **self._head,
            "object": "text_completion",
            "choices": [self._choices[i] for i in sorted(self._choices)],
        }
        if self.usage is not None:
            out["usage"] = self.usage
        return out

    def usage_counts(self) -> Usage | None:
        return usage_counts(self.usage)

    def text(self) -> str:
        return "".join(c["text"] for c in self._choices.values())
