"""One source for what the cached endpoints accept.

    kinds.py    Param / Shape / Rule / RequestTable, the Param constructors, request_schema()
    shapes.py   the structured fields: model, messages (ROLES), prompt, input, embeddings input
    tables.py   CHAT, COMPLETIONS, RESPONSES, EMBEDDINGS: shapes, parameters, rules, in check order

The runtime checks (`proxy.core.validation`) and the OpenAPI description
(`proxy.http.openapi`) are both generated from these tables, so they cannot drift.
"""

from __future__ import annotations

from proxy.core.schemas.kinds import Param, RequestTable, Rule, Shape, request_schema
from proxy.core.schemas.shapes import MAX_MESSAGES, ROLES, EmbeddingItem, embedding_items
from proxy.core.schemas.tables import CHAT, COMPLETIONS, EMBEDDINGS, RESPONSES, TABLES

__all__ = [
    "CHAT",
    "COMPLETIONS",
    "EMBEDDINGS",
    "MAX_MESSAGES",
    "RESPONSES",
    "ROLES",
    "TABLES",
    "EmbeddingItem",
    "Param",
    "RequestTable",
    "Rule",
    "Shape",
    "embedding_items",
    "request_schema",
]
