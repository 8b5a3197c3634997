"""Reading a request body within `server.max_body_bytes`, on every route: a declared
Content-Length over the limit is refused (413) before any of the body is read, and a body
that keeps coming is cut off the moment it passes the limit, never buffered whole."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from proxy.errors import BodyTooLarge, InvalidRequest


def check_declared(declared: str | None, limit: int) -> None:
    if declared is None:
        return
    try:
        too_big = int(declared) > limit
    except ValueError:
        raise InvalidRequest("Invalid Content-Length header.") from None
    if too_big:
        raise _too_large(limit)


async def read_body(receive: Any, declared: str | None, limit: int) -> bytes:
    """The body from raw ASGI messages (the cached endpoints)."""
    check_declared(declared, limit)
    message = await receive()
    body = message.get("body", b"")
    if not message.get("more_body"):
        return body  # the common case: one message
    parts, size = [body], len(body)
    while message.get("more_body"):
        message = await receive()
        part = message.get("body", b"")
        size += len(part)
        if size > limit:
            raise _too_large(limit)
        parts.append(part)
    return b"".join(parts)


async def read_chunks(chunks: AsyncIterator[bytes], declared: str | None, limit: int) -> bytes:
    """The body from a framework's chunk stream (the other routes: flags, review decisions)."""
    check_declared(declared, limit)
    parts: list[bytes] = []
    size = 0
    async for part in chunks:
        size += len(part)
        if size > limit:
            raise _too_large(limit)
        parts.append(part)
    return b"".join(parts)


def _too_large(limit: int) -> BodyTooLarge:
    return BodyTooLarge(f"The request body is larger than the limit of {limit} bytes.")
