"""The FastAPI routes (everything but the cached POST endpoints, which are raw ASGI in
`proxy.http.asgi`), and the helpers every route uses."""

from __future__ import annotations

import orjson
from fastapi import Request, Response

from proxy.http.body import read_chunks
from proxy.service.runtime import Runtime


def runtime_of(request: Request) -> Runtime:
    """The process's Runtime, built by the app's lifespan."""
    runtime: Runtime = request.app.state.runtime
    return runtime


def json_response(obj: object, status: int = 200) -> Response:
    return Response(orjson.dumps(obj), status, media_type="application/json")


async def bounded_body(request: Request) -> bytes:
    """The request's body within `server.max_body_bytes` (413 past it, never read whole)."""
    limit = runtime_of(request).config.server.max_body_bytes
    return await read_chunks(request.stream(), request.headers.get("content-length"), limit)
