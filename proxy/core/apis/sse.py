"""Server-sent event framing: `data:` lines for chat and completions, `event:` + `data:`
for the Responses API, and the `[DONE]` sentinel."""

from __future__ import annotations

from typing import Any

import orjson

DONE = b"data: [DONE]\n\n"


def event(obj: dict[str, Any]) -> bytes:
    """One `data:` event (chat completions, legacy completions, errors)."""
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def typed_event(obj: dict[str, Any]) -> bytes:
    """One Responses API event: `event: <type>` names it, as the API sends it."""
    return b"event: " + str(obj.get("type", "message")).encode() + b"\ndata: " + orjson.dumps(obj) + b"\n\n"
