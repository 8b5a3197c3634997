"""The OpenAPI description of the endpoints served in front of FastAPI (`proxy.http.asgi`).

FastAPI describes only its own routes; the cached generation endpoints and embeddings are
raw ASGI, so their request bodies are described here (the fields the proxy checks; any
other OpenAI field is accepted and passed on) and merged into `/openapi.json`. The fuzz
tests (schemathesis) generate requests from this schema.
"""

from __future__ import annotations

from typing import Any

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
_MESSAGES = {
    "type": "array",
    "minItems": 1,
    "items": {
        "type": "object",
        "required": ["role"],
        "properties": {
            "role": {"type": "string", "enum": ["system", "developer", "user", "assistant", "tool"]},
            "content": {"type": ["string", "array", "null"]},
        },
    },
}
_COMMON = {
    "model": {"type": "string"},
    "stream": {"type": "boolean"},
    "temperature": {"type": "number", "minimum": 0, "maximum": 2},
    "top_p": {"type": "number", "minimum": 0, "maximum": 1},
    "user": {"type": "string"},
}
_BODIES: dict[str, tuple[str, dict[str, Any], list[str]]] = {
    "/v1/chat/completions": (
        "Chat completion (cached; stream or not)",
        {
            **_COMMON,
            "messages": _MESSAGES,
            "n": {"type": "integer", "minimum": 1, "maximum": 128},
            "max_tokens": {"type": "integer", "minimum": 1},
            "seed": {"type": "integer"},
            "stop": {"type": ["string", "array"]},
            "tools": {"type": "array", "items": {"type": "object"}},
        },
        ["model", "messages"],
    ),
    "/v1/completions": (
        "Legacy completion (cached; stream or not)",
        {
            **_COMMON,
            "prompt": {"type": ["string", "array"]},
            "max_tokens": {"type": "integer", "minimum": 1},
            "echo": {"type": "boolean"},
            "suffix": {"type": "string"},
            "logprobs": {"type": "integer", "minimum": 0, "maximum": 5},
        },
        ["model", "prompt"],
    ),
    "/v1/responses": (
        "Responses API (cached unless store or background; stream or not)",
        {
            **_COMMON,
            "input": {"type": ["string", "array"]},
            "instructions": {"type": "string"},
            "max_output_tokens": {"type": "integer", "minimum": 1},
            "previous_response_id": {"type": "string"},
            "store": {"type": "boolean"},
        },
        ["model", "input"],
    ),
    "/v1/embeddings": (
        "Embeddings (cached per input item)",
        {
            "model": {"type": "string"},
            "input": {"type": ["string", "array"]},
            "dimensions": {"type": "integer", "minimum": 1},
            "encoding_format": {"type": "string", "enum": ["float", "base64"]},
            "user": {"type": "string"},
        },
        ["model", "input"],
    ),
}


def fast_path_operations() -> dict[str, Any]:
    """OpenAPI path items for the raw ASGI endpoints."""
    paths = {}
    for path, (summary, properties, required) in _BODIES.items():
        paths[path] = {
            "post": {
                "summary": summary,
                "security": [{"bearer": []}],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {"type": "object", "required": required, "properties": properties}
                        }
                    },
                },
                "responses": {
                    "200": {"description": "The answer (JSON, or server-sent events when streaming)"},
                    **{code: _ERROR for code in ("400", "401", "404", "413", "429", "502", "503", "504")},
                },
            }
        }
    return paths


def security_scheme() -> dict[str, Any]:
    return {"bearer": {"type": "http", "scheme": "bearer"}}
