"""`export` and `import`: cached answers as test fixtures, for any language's tests.

    llm-cache-proxy export [--tenant T] [--model M] [--endpoint E ...] [--out FILE]
    llm-cache-proxy import FILE [--tenant T] [--ttl S]
    llm-cache-proxy run (--replay FILE | --record FILE) [--tenant T] -- <command...>   (run.py)

The line format and its checks are `proxy.core.fixture_format`; reading and writing
Redis is `proxy.store.fixtures`. Neither command imports litellm or starts a server.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from proxy.config import Config, TenantConfig
from proxy.core.fixture_format import ENDPOINTS, Fixture, FixtureError, Placed, parse_line, place
from proxy.core.keys import KEY_RULES
from proxy.store.connection import RedisGate, connect
from proxy.store.fixtures import Exported, export, write

_DEFAULT_RECORD_TTL: int = TenantConfig.model_fields["record_ttl_seconds"].default


def add_parsers(sub: Any, tool: Any) -> None:
    """The three subcommands, wired to `tool(name, module)` (the CLI's config loader)."""
    out = sub.add_parser("export", help="write cached answers as fixture lines (JSON lines)")
    out.add_argument("--config")
    out.add_argument("--tenant", help="only this tenant's entries")
    out.add_argument("--model", help="only this model's entries")
    out.add_argument(
        "--endpoint", action="append", choices=list(ENDPOINTS), help="only this endpoint (repeatable)"
    )
    out.add_argument("--out", help="the fixture file (default: stdout)")
    out.set_defaults(func=tool("cmd_export", "fixtures"))

    load = sub.add_parser("import", help="load a fixture file into the cache")
    load.add_argument("file")
    load.add_argument("--config")
    load.add_argument("--tenant", help="load every line into this tenant")
    load.add_argument("--ttl", type=int, help="TTL in seconds (default: the tenant's record_ttl_seconds)")
    load.set_defaults(func=tool("cmd_import", "fixtures"))

    run = sub.add_parser("run", help="serve a fixture file (or record one) around a command")
    run.add_argument("--config")
    mode = run.add_mutually_exclusive_group()
    mode.add_argument("--replay", metavar="FILE", help="answer only from FILE: a miss is a 404")
    mode.add_argument("--record", metavar="FILE", help="record into FILE (merged with what it holds)")
    run.add_argument("--tenant", help="whose key the command gets (default: the first tenant)")
    run.add_argument("--port", type=int, default=0, help="the proxy's port (default: a free one)")
    run.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command to run")
    run.set_defaults(func=tool("cmd_run", "run"))


@contextmanager
def _bar(desc: str, total: int | None = None, unit: str = " entries") -> Iterator[Any]:
    """A progress bar on stderr, shown on a terminal for runs longer than half a second."""
    from tqdm import tqdm

    with tqdm(
        total=total, desc=desc, unit=unit, file=sys.stderr, disable=None, delay=0.5, leave=False
    ) as bar:
        yield bar


def _namespaces(config: Config, tenant: str | None) -> list[str] | None:
    if tenant is not None and tenant not in config.tenant_index:
        print(f"llm-cache-proxy: no tenant named {tenant!r}", file=sys.stderr)
        return None
    names = [tenant] if tenant else [t.name for t in config.tenants]
    return sorted({config.cache.namespace(n) for n in names})


def redis_for(config: Config) -> tuple[str, Any]:
    """The Redis to use (REDIS_URL, redis.url, else the embedded one) and what to close."""
    url = os.environ.get("REDIS_URL") or config.redis.url
    if url:
        return url, None
    from proxy.store.embedded import EmbeddedRedis

    embedded = EmbeddedRedis(config.redis.state_dir, config.redis.embedded_maxmemory)
    return embedded.url, embedded


async def with_gate(config: Config, url: str, work: Any) -> Any:
    client = connect(url, config.redis, per_read_timeout=True)
    try:
        return await work(RedisGate(client, retry_after_ms=0))
    finally:
        await client.aclose()


async def export_all(
    config: Config, url: str, namespaces: list[str], kinds: list[str], model: str | None
) -> Exported:
    with _bar("exporting") as bar:
        return await with_gate(
            config,
            url,
            lambda gate: export(gate, config.redis.key_prefix, namespaces, kinds, model, bar.update),
        )


def save(fixtures: list[Fixture], path: Path) -> None:
    """The file, written whole or not at all (a temporary file renamed over it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    partial.write_bytes(b"".join(f.line() + b"\n" for f in fixtures))
    partial.replace(path)


def summary(exported: Exported, where: str) -> str:
    counts: dict[str, int] = {}
    for f in exported.fixtures:
        counts[f.endpoint] = counts.get(f.endpoint, 0) + 1
    by = ", ".join(f"{n} {e}" for e, n in sorted(counts.items()))
    line = f"exported {len(exported.fixtures)} entries{f' ({by})' if by else ''} to {where}"
    if exported.without_request:
        line += (
            f"; {exported.without_request} answers had no request kept beside them and were left out "
            "(record with cache_mode: record, or keep review.keep_prompts on)"
        )
    return line


def cmd_export(config: Config, args: argparse.Namespace) -> int:
    namespaces = _namespaces(config, args.tenant)
    if namespaces is None:
        return 1
    if args.model is not None and args.model not in config.model_index:
        print(f"llm-cache-proxy: no model named {args.model!r}", file=sys.stderr)
        return 1
    kinds = [ENDPOINTS[e].key_kind for e in (args.endpoint or ENDPOINTS)]
    url, embedded = redis_for(config)
    try:
        exported = asyncio.run(export_all(config, url, namespaces, kinds, args.model))
    finally:
        if embedded is not None:
            embedded.close()
    if args.out:
        save(exported.fixtures, Path(args.out))
    else:
        sys.stdout.buffer.write(b"".join(f.line() + b"\n" for f in exported.fixtures))
        sys.stdout.flush()
    print(summary(exported, args.out or "stdout"), file=sys.stderr)
    return 0


def read_fixtures(path: Path, config: Config, tenant: str | None) -> tuple[list[Placed], list[str]]:
    """Every line checked (nothing written yet): the good ones, and one message per bad one."""
    placed: list[Placed] = []
    bad: list[str] = []
    with path.open("rb") as lines, _bar("checking", unit=" lines") as bar:
        for number, raw in enumerate(lines, 1):
            bar.update(1)
            if not raw.strip():
                continue
            try:
                placed.append(place(parse_line(raw), config, tenant))
            except FixtureError as exc:
                bad.append(f"{path}:{number}: {exc}")
    return placed, bad


def ttls_of(config: Config, placed: list[Placed], tenant: str | None, ttl: int | None) -> list[int]:
    def one(p: Placed) -> int:
        if ttl is not None:
            return ttl
        owner = config.tenant_index.get(tenant or p.fixture.tenant)
        return owner.record_ttl_seconds if owner is not None else _DEFAULT_RECORD_TTL

    return [one(p) for p in placed]


async def import_all(config: Config, url: str, placed: list[Placed], ttls: list[int]) -> int:
    with _bar("importing", len(placed)) as bar:
        return int(
            await with_gate(
                config,
                url,
                lambda gate: write(
                    gate, config.redis.key_prefix, placed, ttls, config.cache.compress_min_bytes, bar.update
                ),
            )
        )


def import_report(path: Path, placed: list[Placed], written: int) -> str:
    rekeyed = sum(p.rekeyed for p in placed)
    into = ", ".join(sorted({p.namespace for p in placed})) or "-"
    return (
        f"imported {written} entries into {into} from {path} "
        f"({rekeyed} re-keyed under the current key rules, version {KEY_RULES})"
    )


def cmd_import(config: Config, args: argparse.Namespace) -> int:
    if args.tenant is not None and _namespaces(config, args.tenant) is None:
        return 1
    if args.ttl is not None and args.ttl < 1:
        print("llm-cache-proxy: --ttl must be at least 1 second", file=sys.stderr)
        return 1
    path = Path(args.file)
    try:
        placed, bad = read_fixtures(path, config, args.tenant)
    except OSError as exc:
        print(f"llm-cache-proxy: cannot read {path}: {exc.strerror}", file=sys.stderr)
        return 1
    for message in bad:
        print(message, file=sys.stderr)
    url, embedded = redis_for(config)
    try:
        written = asyncio.run(import_all(config, url, placed, ttls_of(config, placed, args.tenant, args.ttl)))
    finally:
        if embedded is not None:
            embedded.close()
    print(import_report(path, placed, written))
    if bad:
        print(f"{len(bad)} bad line{'s' if len(bad) > 1 else ''} skipped (listed above)", file=sys.stderr)
        return 1
    return 0
