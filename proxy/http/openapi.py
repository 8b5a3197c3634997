"""The OpenAPI description of the endpoints served in front of FastAPI (`proxy.http.asgi`).

FastAPI describes only its own routes; the cached generation endpoints and embeddings are
raw ASGI, so their request bodies are described here and merged into `/openapi.json`. Each
body schema is generated from the table the runtime checks the body against
(`proxy.core.schemas`): the fields the proxy checks, exactly as it checks them; any other
OpenAI field is accepted and passed on. The fuzz tests (schemathesis) generate requests
from this schema.
"""

from __future__ import annotations

from typing import Any

from proxy.core.schemas import CHAT, COMPLETIONS, EMBEDDINGS, RESPONSES, RequestTable, request_schema

_ERROR = {
    "description": "OpenAI-style error",
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "required": ["error"],
                "properties": {
                    "error": {
                        "type": "object",
                        "required": ["message", "type", "param", "code"],
                        "properties": {
                            "message": {"type": "string"},
                            "type": {"type": "string"},
                            "param": {"type": ["string", "null"]},
                            "code": {"type": ["string", "null"]},
                        },
                    }
                },
            }
        }
    },
}
_OPERATIONS: dict[str, tuple[RequestTable, str]] = {
    "/v1/chat/completions": (CHAT, "Chat completion (cached; stream or not)"),
    "/v1/completions": (COMPLETIONS, "Legacy completion (cached; stream or not)"),
    "/v1/responses": (RESPONSES, "Responses API (cached unless store or background; stream or not)"),
    "/v1/embeddings": (EMBEDDINGS, "Embeddings (cached per input item)"),
}


def fast_path_operations() -> dict[str, Any]:
    """OpenAPI path items for the raw ASGI endpoints."""
    paths = {}
    for path, (table, summary) in _OPERATIONS.items():
        paths[path] = {
            "post": {
                "summary": summary,
                "security": [{"bearer": []}],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": request_schema(table)}},
                },
                "responses": {
                    "200": {"description": "The answer (JSON, or server-sent events when streaming)"},
                    **{code: _ERROR for code in ("400", "401", "404", "413", "429", "502", "503", "504")},
                },
            }
        }
    return paths


def security_scheme() -> dict[str, Any]:
    """Every endpoint takes the tenant's key as a bearer token."""
    return {"bearer": {"type": "http", "scheme": "bearer"}}
