"""Read-side and admin endpoints: /stats (JSON or the HTML page), /stats/events, /metrics,
the cache purge and the config reload. Admin keys see every tenant; a tenant key only its own."""

from __future__ import annotations

import os
import signal
from collections import defaultdict
from importlib.resources import files
from typing import Any

from fastapi import APIRouter, Request, Response

from proxy.errors import ConfigError, InvalidRequest, RouteNotFound
from proxy.http.auth import require_admin, visible_tenants
from proxy.http.routes.models import json_response
from proxy.service.runtime import Runtime
from proxy.stats.prometheus import render
from proxy.stats.recorder import PROXY_TENANT, events_key, stats_key
from proxy.store.admin import purge

router = APIRouter()
_MAX_EVENTS = 1000


def _runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


def _wants_html(request: Request) -> bool:
    accept = request.headers.get("accept", "")
    return "text/html" in accept and "application/json" not in accept


def stats_page() -> Response:
    html = files("proxy.http").joinpath("static", "stats.html").read_bytes()
    return Response(html, media_type="text/html; charset=utf-8")


async def build_report(runtime: Runtime, tenants: list[str], admin: bool) -> dict[str, Any]:
    await runtime.stats.flush()  # this process's latest requests count too
    report = await runtime.report.snapshot(tenants + ([PROXY_TENANT] if admin else []))
    namespaces = list(tenants)
    if admin and runtime.config.cache.scope == "shared":
        namespaces.append("shared")
    report["cache"] = await runtime.report.footprint(namespaces)
    report["scope"] = "admin" if admin else f"tenant:{tenants[0]}"
    return report


@router.get("/stats")
async def stats(request: Request, tenant: str | None = None) -> Response:
    if _wants_html(request) and "authorization" not in request.headers:
        return stats_page()
    runtime = _runtime(request)
    tenants, admin = visible_tenants(runtime.config, request.headers.get("authorization"), tenant)
    if _wants_html(request):
        return stats_page()
    return json_response(await build_report(runtime, tenants, admin))


@router.get("/stats/ui")
async def stats_ui() -> Response:
    """The page itself holds no data: it asks /stats with the key the user gives it."""
    return stats_page()


@router.get("/stats/events")
async def stats_events(request: Request, limit: int = 100) -> Response:
    runtime = _runtime(request)
    require_admin(runtime.config, request.headers.get("authorization"))
    if not 1 <= limit <= _MAX_EVENTS:
        raise InvalidRequest(f"limit must be between 1 and {_MAX_EVENTS}.", param="limit")
    await runtime.stats.flush()
    key = events_key(runtime.config.redis.key_prefix)

    async def read(r: Any) -> list[dict[str, str]]:
        rows = await r.xrevrange(key, count=limit)
        return [{"id": i.decode(), **{k.decode(): v.decode() for k, v in f.items()}} for i, f in rows]

    data = await runtime.gate.run(read)
    return json_response({"object": "list", "data": data})


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    runtime = _runtime(request)
    require_admin(runtime.config, request.headers.get("authorization"))
    await runtime.stats.flush()
    tenants = [t.name for t in runtime.config.tenants] + [PROXY_TENANT]
    prefix = runtime.config.redis.key_prefix

    async def read(r: Any) -> list[Any]:
        pipe = r.pipeline(transaction=False)
        for t in tenants:
            pipe.hgetall(stats_key(prefix, t, "all"))
        return list(await pipe.execute())

    counts: defaultdict[tuple[str, str], dict[str, int]] = defaultdict(dict)
    for tenant, raw in zip(tenants, await runtime.gate.run(read), strict=True):
        for fld, n in raw.items():
            model, _, metric = fld.decode().partition("|")
            counts[(tenant, model)][metric] = int(n)
    footprint = await runtime.report.footprint([t.name for t in runtime.config.tenants] + ["shared"])
    body = render(runtime.config.model_index, counts, footprint)
    return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")


@router.delete("/admin/cache")
async def purge_cache(
    request: Request, tenant: str | None = None, model: str | None = None, all: bool = False
) -> Response:
    runtime = _runtime(request)
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
    runtime = _runtime(request)
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
