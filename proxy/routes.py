"""Thin HTTP handlers: authenticate, read the body within limits, call the service."""

from __future__ import annotations

from collections.abc import AsyncIterator

import orjson
from fastapi import APIRouter, Request, Response
from fastapi.responses import StreamingResponse

from proxy.auth import authenticate_tenant
from proxy.errors import BodyTooLarge, InvalidRequest, ModelNotFound
from proxy.runtime import Runtime
from proxy.service import Reply, RequestMeta
from proxy.stats import RequestRecord, StatsRecorder, classify

router = APIRouter()


def json_response(obj: object, status: int = 200) -> Response:
    return Response(orjson.dumps(obj), status, media_type="application/json")


def _runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refusing (413) past `limit` bytes without buffering the excess."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            too_big = int(declared) > limit
        except ValueError:
            raise InvalidRequest("Invalid Content-Length header.") from None
        if too_big:
            raise BodyTooLarge(f"The request body is larger than the limit of {limit} bytes.")
    parts: list[bytes] = []
    size = 0
    async for part in request.stream():
        size += len(part)
        if size > limit:
            raise BodyTooLarge(f"The request body is larger than the limit of {limit} bytes.")
        parts.append(part)
    return b"".join(parts)


def to_response(reply: Reply) -> Response:
    if reply.stream is not None:
        headers = {**reply.headers, "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        return StreamingResponse(reply.stream, reply.status, headers, media_type=reply.media_type)
    return Response(reply.body, reply.status, reply.headers, media_type=reply.media_type)


@router.post("/v1/chat/completions")
async def chat_completions(request: Request) -> Response:
    runtime = _runtime(request)
    record = RequestRecord()
    try:
        tenant = authenticate_tenant(runtime.config, request.headers.get("authorization"))
        record.tenant = tenant.name
        raw = await read_body(request, runtime.config.server.max_body_bytes)
        meta = RequestMeta(
            cache_control=request.headers.get("cache-control"),
            cache_ttl=request.headers.get("x-cache-ttl"),
            end_user=request.headers.get("x-end-user"),
        )
        reply = await runtime.chat.chat(tenant, raw, meta, record)
    except Exception as exc:
        classify(record, exc)
        runtime.stats.record(record)
        raise
    if reply.stream is None:
        runtime.stats.record(record)
    else:
        reply.stream = _recorded(reply.stream, record, runtime.stats)
    return to_response(reply)


async def _recorded(
    stream: AsyncIterator[bytes], record: RequestRecord, stats: StatsRecorder
) -> AsyncIterator[bytes]:
    """A stream is recorded when it ends (its latency is the whole stream's)."""
    try:
        async for part in stream:
            yield part
    finally:
        stats.record(record)


def _model_card(name: str) -> dict[str, object]:
    return {"id": name, "object": "model", "created": 0, "owned_by": "llm-cache-proxy"}


@router.get("/v1/models")
async def list_models(request: Request) -> Response:
    runtime = _runtime(request)
    authenticate_tenant(runtime.config, request.headers.get("authorization"))
    data = [_model_card(m.name) for m in runtime.config.models]
    return json_response({"object": "list", "data": data})


@router.get("/v1/models/{model:path}")
async def get_model(model: str, request: Request) -> Response:
    runtime = _runtime(request)
    authenticate_tenant(runtime.config, request.headers.get("authorization"))
    if model not in runtime.config.model_index:
        raise ModelNotFound(f"The model '{model}' does not exist.", param="model")
    return json_response(_model_card(model))


@router.get("/healthz")
async def healthz() -> Response:
    """The process is alive (says nothing about Redis)."""
    return json_response({"status": "ok"})


@router.get("/readyz")
async def readyz(request: Request) -> Response:
    """Ready when Redis answers: a load balancer should route elsewhere otherwise."""
    if await _runtime(request).gate.ping():
        return json_response({"status": "ready", "redis": "ok"})
    return json_response({"status": "unavailable", "redis": "unreachable"}, 503)
