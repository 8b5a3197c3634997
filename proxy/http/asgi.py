"""The cached endpoints (chat completions, completions, responses, embeddings) as raw ASGI,
in front of FastAPI.

These endpoints are the product's hot path: a cache hit must cost little more than the
Redis GET it needs. FastAPI's middleware, routing and dependency layers cost several
times the rest of a hit, so they talk ASGI directly; every other route (and the lifespan
that builds the Runtime) is the FastAPI app behind it. Each path maps to its adapter and
every one goes through the same pipeline.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time
from collections.abc import AsyncIterator
from typing import Any

from proxy.core.apis import CHAT, COMPLETIONS, EMBEDDINGS, RESPONSES
from proxy.core.apis.base import Adapter
from proxy.core.cache_controls import RequestMeta
from proxy.errors import HeadersTooLarge, InvalidRequest, MethodNotAllowed, ProxyError
from proxy.http.access_log import log_request, logged_send
from proxy.http.auth import authenticate_tenant
from proxy.http.body import read_body
from proxy.http.errors import error_parts
from proxy.http.headers import Headers, failure_headers, response_headers
from proxy.service.request import ProxyRequest, Reply
from proxy.service.runtime import Runtime
from proxy.service.tracing import RequestTrace
from proxy.stats.schema import RequestRecord, classify

# The cached endpoints, each with the adapter that says what is particular to it.
ROUTES: dict[str, Adapter] = {
    "/v1/chat/completions": CHAT,
    "/v1/completions": COMPLETIONS,
    "/v1/responses": RESPONSES,
    "/v1/embeddings": EMBEDDINGS,
}
_WANTED = {
    b"authorization",
    b"content-length",
    b"cache-control",
    b"x-cache-ttl",
    b"x-end-user",
    b"x-request-id",
    b"traceparent",  # W3C trace context: a traced request continues the client's trace
    b"tracestate",
}
_LOGGED_PROMPT_BYTES = 4096
_STREAM_HEADERS = [(b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no")]
Scope = dict[str, Any]
log = logging.getLogger("llmcp.http")


class FastPath:
    """The outermost ASGI app: the cached endpoints (`ROUTES`) here, everything else to `inner`."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    @property
    def state(self) -> Any:
        return self.inner.state

    @property
    def router(self) -> Any:
        return self.inner.router

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.inner(scope, receive, send)
            return
        # One walk over the headers: their size, the Authorization count and the ones we read.
        headers, size, authorizations = _read_headers(scope["headers"])
        if not self._headers_fit(size):
            return await self._refuse(scope, send, self._too_large())
        if authorizations > 1:
            # Which one would count? /v1/* read the last, the other routes the first.
            error = InvalidRequest("The request has more than one Authorization header; send one.")
            return await self._refuse(scope, send, error)
        path = scope["path"]
        api = ROUTES.get(path)
        if api is None:
            await self.inner(scope, receive, logged_send(send, scope["method"], path))
            return
        runtime: Runtime = self.inner.state.runtime
        record = RequestRecord()
        request_id = _request_id(headers.get("x-request-id"))
        tracing, req = runtime.tracing, None
        trace = None if tracing is None else tracing.start(path, request_id, headers)
        try:
            if scope["method"] != "POST":
                raise MethodNotAllowed(f"Method {scope['method']} is not allowed on {path}.")
            tenant = authenticate_tenant(runtime.config, headers.get("authorization"))
            record.tenant = tenant.name
            raw = await read_body(
                receive, headers.get("content-length"), runtime.config.server.max_body_bytes
            )
            if runtime.config.server.log_prompts:  # off by default: prompts are the users' data
                record.prompt = raw[:_LOGGED_PROMPT_BYTES].decode("utf-8", "replace")
            meta = RequestMeta(
                headers.get("cache-control"), headers.get("x-cache-ttl"), headers.get("x-end-user")
            )
            req = ProxyRequest(tenant, meta, record, trace=trace)
            reply = await runtime.pipeline.answer(api, req, raw)
        except Exception as exc:
            classify(record, exc)
            status, extra, body = error_parts(exc)
            _finish(runtime, record, request_id, path, status, trace, req)
            await _send_whole(send, status, failure_headers(req, extra, request_id), body, "application/json")
            return
        out = response_headers(req, request_id)
        if reply.stream is None:
            try:
                await _send_whole(send, reply.status, out, reply.body, reply.media_type)
            finally:
                await _after_sending(reply, record)
                _finish(runtime, record, request_id, path, reply.status, trace, req)
            return
        try:
            await _send_stream(send, receive, reply, reply.stream, out)
        finally:
            await _after_sending(reply, record)
            _finish(runtime, record, request_id, path, reply.status, trace, req)

    def _headers_fit(self, size: int) -> bool:
        runtime = getattr(self.inner.state, "runtime", None)  # None before the lifespan ran
        return runtime is None or size <= runtime.config.server.max_header_bytes

    def _too_large(self) -> HeadersTooLarge:
        limit = self.inner.state.runtime.config.server.max_header_bytes
        return HeadersTooLarge(f"The request headers are larger than the limit of {limit} bytes.")

    async def _refuse(self, scope: Scope, send: Any, error: ProxyError) -> None:
        status, headers, body = error_parts(error)
        await _send_whole(send, status, [(k.lower().encode(), v.encode()) for k, v in headers.items()], body)


def _read_headers(raw: list[tuple[bytes, bytes]]) -> tuple[dict[str, str], int, int]:
    """The headers the endpoints read (the last of each name wins), the size of them all,
    and how many Authorization headers there are."""
    wanted: dict[str, str] = {}
    size = authorizations = 0
    for name, value in raw:
        size += len(name) + len(value)
        if name in _WANTED:
            wanted[name.decode()] = value.decode("latin-1")
            if name == b"authorization":
                authorizations += 1
    return wanted, size, authorizations


async def _after_sending(reply: Reply, record: RequestRecord) -> None:
    """The reply's remaining work (`Reply.then`), if any: the request's latency ends here,
    before it. The answer is out, so a failure is logged, never turned into a second
    response."""
    if reply.then is None:
        return
    record.answered = time.perf_counter()
    try:
        await reply.finish()
    except Exception:
        log.exception("after the answer was sent")


def _finish(
    runtime: Runtime,
    record: RequestRecord,
    request_id: str,
    path: str,
    status: int,
    trace: RequestTrace | None = None,
    req: ProxyRequest | None = None,
) -> None:
    runtime.stats.record(record)
    log_request(record, request_id, path, status)
    if trace is not None:
        if req is None:
            trace.finish(record, status)
        else:
            trace.finish(record, status, req.status.value, req.digest, req.model)


# Fresh request ids: unique, not secret, so a random per-process prefix and a counter
# (os.urandom per request cost ~35 us here, a quarter of an in-process hit).
_ID_PREFIX = os.urandom(4).hex()
_ID_COUNTER = itertools.count(1)


def _request_id(given: str | None) -> str:
    """The client's X-Request-Id when it is a sane token, else a fresh one."""
    if given and len(given) <= 128 and given.isascii() and given.replace("-", "").replace("_", "").isalnum():
        return given
    return f"{_ID_PREFIX}{next(_ID_COUNTER):08x}"


async def _send_whole(
    send: Any, status: int, headers: Headers, body: bytes, media_type: str = "application/json"
) -> None:
    start = [(b"content-type", media_type.encode()), (b"content-length", str(len(body)).encode()), *headers]
    await send({"type": "http.response.start", "status": status, "headers": start})
    await send({"type": "http.response.body", "body": body})


async def _send_stream(
    send: Any, receive: Any, reply: Reply, stream: AsyncIterator[bytes], headers: Headers
) -> None:
    """Send chunks as they come; if the client hangs up, stop (the pipeline's cleanup
    releases the upstream call and settles the rate-limit reservation)."""
    start = [(b"content-type", reply.media_type.encode() + b"; charset=utf-8"), *headers, *_STREAM_HEADERS]
    await send({"type": "http.response.start", "status": reply.status, "headers": start})

    async def pump() -> None:
        async for part in stream:
            await send({"type": "http.response.body", "body": part, "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    async def watch(task: asyncio.Task[None]) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        task.cancel()

    pumping = asyncio.ensure_future(pump())
    watching = asyncio.ensure_future(watch(pumping))
    try:
        await pumping
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise  # we are being cancelled ourselves, not just the client hanging up
    finally:
        watching.cancel()
        closer = getattr(stream, "aclose", None)
        if closer is not None:
            await closer()
