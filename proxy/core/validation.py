"""Parse a request body and check it against its endpoint's table (`proxy.core.schemas`).

A light check (plain Python walking the table, no pydantic or schema validator): it runs on
every request, hits included. It rejects what OpenAI itself would reject with a 400, names
the offending `param`, and passes unknown fields through untouched (providers add their
own). The order is the table's: model, then the structured field (messages, prompt,
input), then the parameters, then the rules across fields.
"""

from __future__ import annotations

from typing import Any

import orjson

from proxy.core.schemas import CHAT, COMPLETIONS, EMBEDDINGS, RESPONSES, EmbeddingItem, RequestTable
from proxy.errors import InvalidRequest, MalformedJSON

# Arrays and objects nest at most this deep in any request body (a chat request with tool
# schemas needs a dozen or so). Deeper bodies get a 400 before anything walks them: the
# key builder's recursion and orjson's own limits (255 to write, 1024 to read) would
# otherwise fail in the middle of a request.
MAX_NESTING = 64


def parse_json_object(raw: bytes) -> dict[str, Any]:
    """The body as a dict, or a 400 that says what is wrong with it."""
    if not raw:
        raise MalformedJSON("The request body is empty; expected a JSON object.")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        if "depth" in str(exc):  # orjson's own limit, far past ours
            raise _too_deep() from None
        raise MalformedJSON(f"The request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise MalformedJSON("The request body must be a JSON object.")
    # Counting brackets is a C loop; only a body with more of them than the limit is walked.
    if raw.count(b"[") + raw.count(b"{") > MAX_NESTING and _deeper_than(body, MAX_NESTING):
        raise _too_deep()
    return body


def _deeper_than(value: Any, limit: int) -> bool:
    """Whether arrays and objects nest more than `limit` levels (iterative: no recursion)."""
    pending: list[tuple[Any, int]] = [(value, 1)]
    while pending:
        item, depth = pending.pop()
        if depth > limit:
            return True
        children = item.values() if isinstance(item, dict) else item
        pending.extend((c, depth + 1) for c in children if isinstance(c, (dict, list)))
    return False


def _too_deep() -> InvalidRequest:
    return InvalidRequest(
        f"The request body nests arrays and objects more than {MAX_NESTING} levels deep.",
        code="nesting_too_deep",
    )


def check_request(table: RequestTable, body: dict[str, Any]) -> dict[str, Any]:
    """Raise InvalidRequest (with `param`) at the first thing in the body the table refuses;
    returns what the structured fields' checks kept (`{"input": [...items]}` for embeddings)."""
    kept: dict[str, Any] = {}
    for name, shape in table.shapes.items():
        value = body.get(name)
        if value is not None:
            kept[name] = shape.check(value)
        elif name in table.required:
            raise InvalidRequest(shape.missing, param=name)
    if table.one_of and all(body.get(name) is None for name in table.one_of):
        first = table.one_of[0]
        raise InvalidRequest(table.shapes[first].missing, param=first)
    for name, param in table.params.items():
        value = body.get(name)
        if value is not None and not param.check(value):
            raise InvalidRequest(f"Invalid value for '{name}': expected {param.what}.", param=name)
    for rule in table.rules:
        if not rule.holds(body):
            raise InvalidRequest(rule.message, param=rule.param)
    return kept


def check_chat(body: dict[str, Any]) -> None:
    """`POST /v1/chat/completions`: model, messages, then the parameters."""
    check_request(CHAT, body)


def check_completions(body: dict[str, Any]) -> None:
    """`POST /v1/completions`: model, prompt, the parameters, then best_of against n and stream."""
    check_request(COMPLETIONS, body)


def check_responses(body: dict[str, Any]) -> None:
    """`POST /v1/responses`: model, input (or previous_response_id or prompt), the parameters."""
    check_request(RESPONSES, body)


def check_embeddings(body: dict[str, Any]) -> list[EmbeddingItem]:
    """`POST /v1/embeddings`: model, input, encoding_format, dimensions. Returns the input's
    items (one per string or token array). Per-item token limits need the model's config and
    are checked by the adapter."""
    items: list[EmbeddingItem] = check_request(EMBEDDINGS, body)["input"]
    return items
