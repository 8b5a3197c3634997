"""Builds the ASGI app: lifespan, routes, and the one place errors become responses.

Every error a client can see leaves through `_render`: a `ProxyError` with its own
status, a routing error (404/405) or a bad body as its OpenAI-shaped twin, and anything
unexpected as a plain 500 with no internals.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import threading
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from starlette.exceptions import HTTPException as StarletteHTTPException

from proxy import __version__
from proxy.config import Config, load_config
from proxy.errors import (
    ConfigError,
    InvalidRequest,
    MethodNotAllowed,
    ProxyError,
    RouteNotFound,
    StoreUnavailable,
)
from proxy.http.asgi import FastPath
from proxy.http.errors import error_parts
from proxy.http.openapi import fast_path_operations, security_scheme
from proxy.http.routes.admin import router as admin_router
from proxy.http.routes.models import router
from proxy.http.routes.review import router as review_router
from proxy.http.routes.stats import router as stats_router
from proxy.logs import flush_access_log
from proxy.service.runtime import Runtime
from proxy.service.tracing import Tracing
from proxy.upstream.selector import Upstreams

log = logging.getLogger("llmcp")


def _render(exc: BaseException) -> Response:
    status, headers, body = error_parts(exc)
    return Response(body, status, headers, media_type="application/json")


async def _on_proxy_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, ProxyError)
    return _render(exc)


async def _on_http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 405:
        return _render(MethodNotAllowed(f"Method {request.method} is not allowed on {request.url.path}."))
    if exc.status_code == 404:
        return _render(RouteNotFound(f"Unknown route: {request.method} {request.url.path}"))
    error = ProxyError(str(exc.detail), status=exc.status_code, code=None)
    error.type = "invalid_request_error"
    return _render(error)


async def _on_validation_error(_: Request, exc: Exception) -> Response:
    return _render(InvalidRequest(f"Invalid request: {exc}"))


async def _on_unexpected(_: Request, exc: Exception) -> Response:
    return _render(exc)


def create_app(
    config: Config,
    redis_url: str,
    upstreams: Upstreams | None = None,
    config_path: str | None = None,
    tracing: Tracing | None = None,
) -> FastPath:
    """The proxy app: the raw ASGI chat endpoint in front of the FastAPI app for the rest;
    `upstreams` lets tests and benchmarks swap the provider side, `tracing` the span exporter."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runtime = Runtime.build(config, redis_url, upstreams, config_path, tracing)
        await runtime.start()
        app.state.runtime = runtime
        hup = _reload_on_sighup(runtime)
        try:
            yield
        finally:
            if hup:
                asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
            await runtime.close()
            flush_access_log()

    app = FastAPI(
        title="llm-cache-proxy",
        version=__version__,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.add_exception_handler(ProxyError, _on_proxy_error)
    # Its own handler: one for `Exception` answers too, but Starlette then re-raises the
    # error, and uvicorn logs a Redis blip on /stats as an ASGI application's crash.
    app.add_exception_handler(StoreUnavailable, _on_unexpected)
    app.add_exception_handler(StarletteHTTPException, _on_http_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(Exception, _on_unexpected)
    app.include_router(router)
    app.include_router(stats_router)
    app.include_router(review_router)
    app.include_router(admin_router)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return FastPath(app)


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's schema of its routes, plus the raw ASGI endpoints in front of it."""
    if app.openapi_schema is None:
        schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
        schema["paths"] = {**fast_path_operations(), **schema["paths"]}
        schema.setdefault("components", {})["securitySchemes"] = security_scheme()
        app.openapi_schema = schema
    return app.openapi_schema


def _reload_on_sighup(runtime: Runtime) -> bool:
    """SIGHUP re-reads the config in this process (a single-worker server; with several
    workers uvicorn's supervisor takes SIGHUP and replaces the workers one by one)."""
    if runtime.config_path is None or threading.current_thread() is not threading.main_thread():
        return False

    def reload() -> None:
        with contextlib.suppress(ConfigError):  # logged; the old config stays in force
            runtime.reload_from_file()

    asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, reload)
    return True


def app_from_environ(environ: Mapping[str, str] | None = None) -> FastPath:
    """uvicorn factory for `serve`: config from LLMCP_CONFIG, Redis from REDIS_URL.

    The CLI resolves both (starting the embedded Redis when needed) before it starts the
    workers; run under plain uvicorn with no Redis named, this process embeds its own.
    """
    environ = os.environ if environ is None else environ
    path = environ.get("LLMCP_CONFIG", "config.yaml")
    try:
        config = load_config(path, environ)
    except ConfigError as exc:
        # A worker started by a rolling restart (SIGHUP) with a broken config: say why in one
        # line and exit; uvicorn's supervisor then keeps the old worker running.
        log.error("config error, not starting: %s", exc)
        raise SystemExit(1) from None
    url = environ.get("REDIS_URL") or config.redis.url
    if url:
        return create_app(config, url, config_path=path)
    from proxy.store.embedded import EmbeddedRedis

    embedded = EmbeddedRedis(config.redis.state_dir, config.redis.embedded_maxmemory)
    app = create_app(config, embedded.url, config_path=path)
    app.state.embedded = embedded  # the server lives as long as the app
    return app
