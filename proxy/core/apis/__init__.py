"""One adapter per cached endpoint (see `base` for what an adapter supplies), and the
kinds of cache entries they write: the one list every other module reads."""

from __future__ import annotations

from proxy.core.apis.base import Adapter, GenerationAdapter
from proxy.core.apis.chat import ChatAdapter
from proxy.core.apis.completions import CompletionsAdapter
from proxy.core.apis.embeddings import EmbeddingsAdapter
from proxy.core.apis.responses import ResponsesAdapter

CHAT = ChatAdapter()
COMPLETIONS = CompletionsAdapter()
RESPONSES = ResponsesAdapter()
EMBEDDINGS = EmbeddingsAdapter()

GENERATION: tuple[GenerationAdapter, ...] = (CHAT, COMPLETIONS, RESPONSES)
ADAPTERS: tuple[Adapter, ...] = (*GENERATION, EMBEDDINGS)
# Entries holding one whole answer (the ones flags, review and purge --model act on), and
# entries holding one item of an answer (embeddings).
ANSWER_KINDS: tuple[str, ...] = tuple(a.key_kind for a in GENERATION)
ITEM_KINDS: tuple[str, ...] = (EMBEDDINGS.key_kind,)
API_OF_KIND: dict[str, str] = {a.key_kind: a.endpoint.label for a in ADAPTERS}
