"""Admin endpoints: purge the cache, reload the config (admin keys only)."""

from __future__ import annotations

import os
import signal

from fastapi import APIRouter, Request, Response

from proxy.errors import ConfigError, InvalidRequest, RouteNotFound
from proxy.http.auth import require_admin
from proxy.http.routes import json_response, runtime_of
from proxy.store.admin import purge

router = APIRouter()


@router.delete("/admin/cache")
async def purge_cache(
    request: Request, tenant: str | None = None, model: str | None = None, all: bool = False
) -> Response:
    runtime = runtime_of(request)
    require_admin(runtime.config, request.headers.get("authorization"))
    config = runtime.config
    if tenant is None and not all:
        raise InvalidRequest("Name a tenant (?tenant=) or purge everything with ?all=true.", param="tenant")
    if tenant is not None and tenant not in config.tenant_index and tenant != "shared":
        raise RouteNotFound(f"No tenant named {tenant!r}.")
    namespaces = [tenant] if tenant else [t.name for t in config.tenants] + ["shared"]
    deleted = await purge(runtime.gate, config.redis.key_prefix, namespaces, model)
    return json_response({"deleted": deleted, "tenants": namespaces, "model": model})


@router.post("/admin/reload")
async def reload_config(request: Request) -> Response:
    """Re-read config.yaml. Invalid: 400, and the running config stays in force. With several
    workers, uvicorn's supervisor is asked to replace them one by one (SIGHUP)."""
    runtime = runtime_of(request)
    require_admin(runtime.config, request.headers.get("authorization"))
    try:
        config = runtime.reload_from_file()
    except ConfigError as exc:
        raise InvalidRequest(f"Config not reloaded: {exc}", code="invalid_config") from None
    supervisor = os.environ.get("LLMCP_SUPERVISOR_PID")
    workers = int(os.environ.get("LLMCP_WORKERS", "1"))
    restarting = workers > 1 and supervisor is not None and int(supervisor) != os.getpid()
    if restarting:
        os.kill(int(supervisor), signal.SIGHUP)  # type: ignore[arg-type]
    return json_response(
        {
            "reloaded": True,
            "models": [m.name for m in config.models],
            "tenants": len(config.tenants),
            "workers_restarting": restarting,
        }
    )
