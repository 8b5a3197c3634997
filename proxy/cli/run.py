"""`llm-cache-proxy run`: one command for CI.

    llm-cache-proxy run --replay tests/llm.jsonl -- pytest -q
    llm-cache-proxy run --record tests/llm.jsonl -- npm test

Serves the config on a free port of 127.0.0.1, runs the command with `OPENAI_BASE_URL` and
`OPENAI_API_KEY` pointing at the proxy (the official SDKs of every language read them), stops
the proxy and exits with the command's status.

- `--replay FILE`: an embedded Redis of its own (in a temporary directory, gone after the
  run) holds FILE and nothing else; every tenant is in replay mode, so nothing reaches a
  provider and a request that was not recorded gets a 404 saying how it differs from the
  nearest one that was.
- `--record FILE`: the same, in record mode against the config's real providers; FILE's
  answers are loaded first (they are hits, not recorded again) and FILE is rewritten with
  everything the cache then holds when the command ends.
- neither: the config as it is (its Redis, its tenants' modes).

A fixture file with a bad line stops the run before the command starts (exit 2). The key
the command gets is made for this run only and given to `--tenant` (default: the first
tenant), so the config's own keys may all be `sha256:` digests.
"""

from __future__ import annotations

import argparse
import asyncio
import logging.config
import os
import secrets
import socket
import sys
import tempfile
from pathlib import Path
from typing import Any

from proxy.cli.fixtures import (
    ENDPOINTS,
    export_all,
    import_all,
    import_report,
    read_fixtures,
    redis_for,
    save,
    summary,
    ttls_of,
)
from proxy.config import Config
from proxy.core.fixture_format import Placed


def cmd_run(config: Config, args: argparse.Namespace) -> int:
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        print("llm-cache-proxy: run needs a command: run --replay FILE -- <command...>", file=sys.stderr)
        return 2
    tenant = args.tenant or config.tenants[0].name
    if tenant not in config.tenant_index:
        print(f"llm-cache-proxy: no tenant named {tenant!r}", file=sys.stderr)
        return 2
    mode = "replay" if args.replay else "record" if args.record else None
    fixture = Path(args.replay or args.record) if mode else None
    placed: list[Placed] = []
    if fixture is not None and (mode == "replay" or fixture.exists()):
        try:
            placed, bad = read_fixtures(fixture, config, None)
        except OSError as exc:
            print(f"llm-cache-proxy: cannot read {fixture}: {exc.strerror}", file=sys.stderr)
            return 2
        if bad:
            print("\n".join(bad), file=sys.stderr)
            print(f"llm-cache-proxy: {fixture} has bad lines; not running", file=sys.stderr)
            return 2
    key = f"sk-llmcp-run-{secrets.token_hex(16)}"
    served = serving_config(config, mode, tenant, key)
    from proxy.logs import log_config

    logging.config.dictConfig(log_config("warning", config.server.log_format, access_log=False))
    with tempfile.TemporaryDirectory(prefix="llmcp-run-") as state:
        if mode is not None:
            from proxy.store.embedded import EmbeddedRedis

            embedded: Any = EmbeddedRedis(state, config.redis.embedded_maxmemory)
            url = embedded.url
        else:
            url, embedded = redis_for(config)
        try:
            if placed:
                written = asyncio.run(import_all(config, url, placed, ttls_of(config, placed, None, None)))
                print(import_report(fixture or Path("-"), placed, written), file=sys.stderr)
            status = asyncio.run(_serve_around(served, url, args.port, command, key, mode))
            if mode == "record" and fixture is not None:
                namespaces = sorted({config.cache.namespace(t.name) for t in config.tenants})
                kinds = [api.key_kind for api in ENDPOINTS.values()]
                exported = asyncio.run(export_all(config, url, namespaces, kinds, None))
                save(exported.fixtures, fixture)
                print(summary(exported, str(fixture)), file=sys.stderr)
            return status
        finally:
            if embedded is not None:
                embedded.close()


def serving_config(config: Config, mode: str | None, tenant: str, key: str) -> Config:
    """The config `run` serves: every tenant in `mode` (when given), and `key` for `tenant`."""
    raw = config.model_dump()
    for t in raw["tenants"]:
        if mode is not None:
            t["cache_mode"] = mode
        if t["name"] == tenant:
            t["api_keys"] = [*t["api_keys"], key]
    return Config.model_validate(raw)


async def _serve_around(
    config: Config, url: str, port: int, command: list[str], key: str, mode: str | None
) -> int:
    """Serve until `command` exits; its exit status (128 + N when killed by signal N)."""
    import uvicorn

    from proxy.http.app import create_app
    from proxy.http.server_protocol import JoinedWritesProtocol

    try:
        listener = socket.create_server(("127.0.0.1", port))
    except OSError as exc:
        print(f"llm-cache-proxy: cannot listen on 127.0.0.1:{port}: {exc.strerror}", file=sys.stderr)
        return 2
    base_url = f"http://127.0.0.1:{listener.getsockname()[1]}/v1"
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(config, url),
            lifespan="on",
            log_config=None,  # ours, set by cmd_run
            access_log=False,
            http=JoinedWritesProtocol,
            timeout_graceful_shutdown=30,
        )
    )
    serving = asyncio.create_task(server.serve(sockets=[listener]))
    while not server.started:
        if serving.done():
            print("llm-cache-proxy: the proxy did not start (see above)", file=sys.stderr)
            return 2
        await asyncio.sleep(0.02)
    print(f"llm-cache-proxy run: {mode or 'config'} mode, OPENAI_BASE_URL={base_url}", file=sys.stderr)
    env = {**os.environ, "OPENAI_BASE_URL": base_url, "OPENAI_API_KEY": key}
    try:
        try:
            child = await asyncio.create_subprocess_exec(*command, env=env)
        except OSError as exc:
            print(f"llm-cache-proxy: cannot run {command[0]!r}: {exc.strerror}", file=sys.stderr)
            return 127
        status = await child.wait()
    finally:
        server.should_exit = True  # graceful: answers in flight are finished (and stored) first
        await serving
    return status if status >= 0 else 128 - status
