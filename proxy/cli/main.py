"""`llm-cache-proxy`: translates options into a Config and runs things; no logic of its own."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

from proxy import __version__
from proxy.config import Config, load_config
from proxy.errors import ConfigError


def _config_path(arg: str | None) -> str:
    return arg or os.environ.get("LLMCP_CONFIG") or "config.yaml"


def _load(arg: str | None) -> Config | None:
    path = _config_path(arg)
    try:
        return load_config(path, os.environ)
    except ConfigError as exc:
        print(f"llm-cache-proxy: config error: {exc}", file=sys.stderr)
        return None


def cmd_serve(args: argparse.Namespace) -> int:
    config = _load(args.config)
    if config is None:
        return 1
    import uvicorn

    from proxy.http.server_protocol import JoinedWritesProtocol

    server = config.server
    host = args.host or server.host
    port = args.port if args.port is not None else server.port
    workers = args.workers or server.workers
    import logging.config

    from proxy.logs import log_config

    logging_setup = log_config(server.log_level, server.log_format, server.access_log)
    logging.config.dictConfig(logging_setup)
    for line in _key_warnings(config):  # once per model, here in the parent, not per worker
        logging.getLogger("llmcp.config").warning("%s", line)

    url = os.environ.get("REDIS_URL") or config.redis.url
    embedded = None
    if not url:
        from proxy.store.embedded import EmbeddedRedis

        embedded = EmbeddedRedis(config.redis.state_dir, config.redis.embedded_maxmemory)
        url = embedded.url
    # The workers build their app from these (uvicorn needs an import string for workers > 1).
    os.environ["LLMCP_CONFIG"] = str(Path(_config_path(args.config)).resolve())
    os.environ["REDIS_URL"] = url
    # POST /admin/reload asks this process (uvicorn's supervisor when workers > 1) to
    # replace the workers; a single-worker server reloads in place on SIGHUP.
    os.environ["LLMCP_SUPERVISOR_PID"] = str(os.getpid())
    os.environ["LLMCP_WORKERS"] = str(workers)
    json_logs = server.log_format == "json"
    _warn_demo_keys(config, host, json_logs)
    where = "embedded Redis" if embedded else "Redis"
    banner = (
        f"llm-cache-proxy {__version__}: OpenAI base_url http://{host}:{port}/v1 "
        f"({workers} worker{'s' if workers > 1 else ''}, {where} at {_safe_url(url)})"
    )
    if json_logs:  # every line the process writes is one JSON object
        logging.getLogger("llmcp.cli").info("%s", banner)
    else:
        print(banner, flush=True)
    # uvicorn shuts down gracefully on SIGTERM, then re-raises it under the handler that was
    # installed before it ran: make that an orderly exit so the embedded Redis is stopped.
    signal.signal(signal.SIGTERM, _exit_quietly)
    try:
        uvicorn.run(
            "proxy.http.app:app_from_environ",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            log_level=server.log_level,
            # One access line per request, ours (proxy/http/access_log.py): it has more.
            access_log=False,
            http=JoinedWritesProtocol,  # one socket write per response
            log_config=logging_setup,
            timeout_graceful_shutdown=30,
            # A worker replaced by a rolling restart (SIGHUP) imports litellm before it is
            # ready (~4 s, more on a busy host); past this, uvicorn keeps the old worker.
            timeout_worker_healthcheck=server.worker_start_timeout_seconds,
            lifespan="on",  # a startup that fails must stop the server, not serve without a runtime
        )
    finally:
        if embedded is not None:
            embedded.close()
    return 0


_DEMO_KEYS = ("sk-demo-key", "sk-admin-demo-key")
_LOOPBACK = ("127.0.0.1", "localhost", "::1")


def _warn_demo_keys(config: Config, host: str, json_logs: bool = False) -> None:
    """The example config's keys are public: say so loudly if they face a network."""
    from proxy.config import key_digest

    demo = {key_digest(k) for k in _DEMO_KEYS}
    used = set(config.admin.key_digests) | set(config.tenant_by_key)
    if host not in _LOOPBACK and demo & used:
        message = (
            "the example's demo keys are configured and the proxy "
            f"listens on {host}; set LLMCP_DEMO_KEY / LLMCP_ADMIN_KEY or edit the config."
        )
        if json_logs:
            logging.getLogger("llmcp.cli").warning("%s", message)
        else:
            print(f"llm-cache-proxy: WARNING: {message}", file=sys.stderr)


def _exit_quietly(signum: int, frame: object) -> None:
    raise SystemExit(0)


def _safe_url(url: str) -> str:
    """A Redis URL without its password, for printing."""
    if "@" not in url:
        return url
    scheme, rest = url.split("://", 1)
    return f"{scheme}://***@{rest.split('@', 1)[1]}"


def _key_warnings(config: Config) -> list[str]:
    """One line per model whose provider needs an API key and has none (none when every
    tenant replays: replay mode never calls a provider)."""
    if all(t.cache_mode == "replay" for t in config.tenants):
        return []
    from proxy.upstream.credentials import missing_keys

    return [m.warning() for m in missing_keys(config.models, os.environ)]


def _price_warnings(config: Config) -> list[str]:
    """One line per model nothing prices, when a tenant has a budget (it could not use it)."""
    budgeted = [t.name for t in config.tenants if t.budget]
    if not budgeted:
        return []
    from proxy.core.prices import model_prices

    return [
        f"model {m.name} has no price: tenants with a budget ({', '.join(budgeted)}) get 400 "
        "model_has_no_price for it; set input_cost_per_token and output_cost_per_token"
        for m in config.models
        if model_prices(m) is None
    ]


def cmd_check_config(args: argparse.Namespace) -> int:
    config = _load(args.config)
    if config is None:
        return 1
    warnings = _key_warnings(config)
    redis_url = os.environ.get("REDIS_URL") or config.redis.url
    print(f"config OK: {_config_path(args.config)}")
    print(f"  server   {config.server.host}:{config.server.port}, {config.server.workers} worker(s)")
    print(
        f"  redis    {_safe_url(redis_url) if redis_url else 'embedded (' + config.redis.state_dir + ')'}"
        f", key prefix {config.redis.key_prefix!r}"
    )
    print(
        f"  cache    ttl {config.cache.ttl_seconds}s (max {config.cache.max_ttl_seconds}s), "
        f"scope {config.cache.scope}, max entry {config.cache.max_entry_bytes} bytes"
    )
    for m in config.models:
        ttl = f", ttl {m.cache_ttl_seconds}s" if m.cache_ttl_seconds else ""
        print(f"  model    {m.name} -> {m.litellm_model}{ttl}")
    for t in config.tenants:
        limits = "unlimited"
        if t.limits:
            parts = []
            if t.limits.requests_per_minute:
                parts.append(f"{t.limits.requests_per_minute} req/min")
            if t.limits.tokens_per_minute:
                parts.append(f"{t.limits.tokens_per_minute} tok/min")
            limits = ", ".join(parts) or "per-model/per-user only"
        mode = "" if t.cache_mode == "normal" else f", {t.cache_mode} mode"
        budget = ""
        if t.budget:
            amounts = [
                f"${v:g}/{w}"
                for w, v in (("day", t.budget.usd_per_day), ("month", t.budget.usd_per_month))
                if v
            ]
            budget = f", budget {' '.join(amounts) or 'per user only'}"
        print(f"  tenant   {t.name}: {len(t.api_keys)} key(s), {limits}{mode}{budget}")
    warnings += _price_warnings(config)
    for line in warnings:
        print(f"warning: {line}")
    if warnings and args.strict:
        print(f"llm-cache-proxy: {len(warnings)} warning(s), failing as asked (--strict)", file=sys.stderr)
        return 1
    return 0


def _tool(name: str, module: str = "tools") -> Any:
    """Run a command of `proxy.cli.<module>` with the loaded config (imported only when used)."""

    def run(args: argparse.Namespace) -> int:
        config = _load(args.config)
        if config is None:
            return 1
        import importlib

        chosen = {"cmd_review": "review", "cmd_doctor": "doctor"}.get(name, module)
        return int(getattr(importlib.import_module(f"proxy.cli.{chosen}"), name)(config, args))

    return run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llm-cache-proxy", description=__doc__)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the proxy")
    serve.add_argument("--config", help="config file (default: $LLMCP_CONFIG or ./config.yaml)")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--workers", type=int)
    serve.set_defaults(func=cmd_serve)

    check = sub.add_parser("check-config", help="validate the config and print a summary")
    check.add_argument("--config")
    check.add_argument("--strict", action="store_true", help="exit 1 on a warning too (a model with no key)")
    check.set_defaults(func=cmd_check_config)

    stats = sub.add_parser("stats", help="print hit ratios, tokens and money saved, from Redis")
    stats.add_argument("--config")
    stats.add_argument("--tenant", help="only this tenant")
    stats.add_argument(
        "--window",
        choices=["1h", "24h", "7d", "all"],
        default="7d",
        help="window of the per-tenant/model table (default 7d)",
    )
    stats.add_argument("--json", action="store_true", help="the same report as GET /stats")
    stats.set_defaults(func=_tool("cmd_stats"))

    purge = sub.add_parser("purge", help="delete cached answers (SCAN + UNLINK)")
    purge.add_argument("--config")
    purge.add_argument("--tenant", help="purge this tenant's entries")
    purge.add_argument("--model", help="only entries of this model")
    purge.add_argument("--all", action="store_true", help="every tenant's entries (and shared)")
    purge.set_defaults(func=_tool("cmd_purge"))

    inspect = sub.add_parser("inspect", help="show a cached entry's metadata")
    inspect.add_argument("digest", help="the X-Cache-Key digest (or the whole key)")
    inspect.add_argument("--config")
    inspect.add_argument("--tenant", help="look only in this tenant")
    inspect.add_argument("--show-answer", action="store_true", help="also print the cached answer")
    inspect.set_defaults(func=_tool("cmd_inspect"))

    from proxy.cli.review import add_parser as add_review

    add_review(sub, _tool)
    doctor = sub.add_parser("doctor", help="check Redis and every model's provider, one line each")
    doctor.add_argument("--config")
    doctor.add_argument("--timeout", type=float, default=10.0, help="seconds per provider call (default 10)")
    doctor.set_defaults(func=_tool("cmd_doctor"))  # proxy.cli.doctor, imported when run
    from proxy.cli.fixtures import add_parsers as add_fixtures

    add_fixtures(sub, _tool)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))
