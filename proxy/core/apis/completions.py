"""Legacy completions (`POST /v1/completions`): `prompt` in, `text_completion` out.

Keyed like chat: every field that changes the text is in the key (`prompt` as a string,
a list of strings or token arrays, `echo`, `suffix`, `logprobs`, `best_of`, ...), API
defaults are dropped (`max_tokens` defaults to 16 here). Streams are folded per choice
index into one `text_completion` by the same generic merge as chat (`DeltaMerge`), and
replayed as one chunk per choice.
"""

from __future__ import annotations

from typing import Any

from proxy.config import ModelConfig
from proxy.core.apis.base import Assembler, Endpoint, GenerationAdapter, text_tokens
from proxy.core.apis.chat import stream_head
from proxy.core.apis.merge import DeltaAssembler
from proxy.core.fields import COMPLETIONS, COMPLETIONS_DEFAULTS
from proxy.core.validation import check_completions

DEFAULT_MAX_TOKENS = 16  # the API's own default for this endpoint (the limiter reserves it)


def prompts_of(prompt: Any) -> list[Any]:
    """The prompts a request holds: a string, token array, or a list of either."""
    if isinstance(prompt, str) or (isinstance(prompt, list) and prompt and isinstance(prompt[0], int)):
        return [prompt]
    return list(prompt) if isinstance(prompt, list) else []


class CompletionsAdapter(GenerationAdapter):
    endpoint = Endpoint.COMPLETIONS
    key_kind = "cmpl"
    fields = COMPLETIONS
    defaults = COMPLETIONS_DEFAULTS
    direct_for_openai_models = True

    def check(self, body: dict[str, Any]) -> None:
        check_completions(body)

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

    def unstorable(self, assembler: Assembler) -> str | None:
        doubt = assembler.doubt if isinstance(assembler, DeltaAssembler) else None
        return doubt or super().unstorable(assembler)

    def replay_chunks(self, answer: dict[str, Any], include_usage: bool) -> list[dict[str, Any]]:
        """One chunk per choice, the whole choice in it (text, logprobs, finish_reason,
        unknown fields); every chunk carries the answer's top-level fields."""
        head = stream_head(answer, "text_completion")
        chunks = [{**head, "choices": [choice]} for choice in answer.get("choices") or ()]
        if include_usage and answer.get("usage"):
            chunks.append({**head, "choices": [], "usage": answer["usage"]})
        return chunks


class TextAssembler(DeltaAssembler):
    """`text_completion` chunks -> the `text_completion` a non-stream call returns: every
    field of a choice merged per choice index by `DeltaMerge` (`text` concatenated,
    `logprobs` lists concatenated, unknown fields kept); `text` "" and `logprobs` null when
    none."""

    def response(self) -> dict[str, Any]:
        joined = self._joined()
        choices = [
            {"text": "", "index": i, "logprobs": None, "finish_reason": None, **joined[i]}
            for i in sorted(joined)
        ]
        return self._answer("text_completion", choices)

    def text(self) -> str:
        return "".join(c["text"] for c in self._joined().values() if isinstance(c.get("text"), str))
