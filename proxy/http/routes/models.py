"""Models and health: `/v1/models`, `/healthz`, `/readyz`."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from proxy.errors import ModelNotFound
from proxy.http.auth import authenticate_tenant
from proxy.http.routes import json_response, runtime_of

router = APIRouter()


def _model_card(name: str) -> dict[str, object]:
    return {"id": name, "object": "model", "created": 0, "owned_by": "llm-cache-proxy"}


@router.get("/v1/models")
async def list_models(request: Request) -> Response:
    runtime = runtime_of(request)
    authenticate_tenant(runtime.config, request.headers.get("authorization"))
    data = [_model_card(m.name) for m in runtime.config.models]
    return json_response({"object": "list", "data": data})


@router.get("/v1/models/{model:path}")
async def get_model(model: str, request: Request) -> Response:
    runtime = runtime_of(request)
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
    if await runtime_of(request).gate.ping():
        return json_response({"status": "ready", "redis": "ok"})
    return json_response({"status": "unavailable", "redis": "unreachable"}, 503)
