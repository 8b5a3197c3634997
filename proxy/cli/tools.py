"""`stats`, `purge` and `inspect`: straight to Redis, no server, no litellm (fast start)."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import orjson

from proxy.config import Config
from proxy.core.keys import digest_in
from proxy.stats.report import WINDOWS, StatsReport
from proxy.store.admin import inspect, purge
from proxy.store.connection import RedisGate, connect

T = TypeVar("T")


def with_redis(config: Config, work: Callable[[RedisGate], Awaitable[T]]) -> T:
    """Run `work` against the configured Redis (joining the embedded server if serve runs)."""
    url = os.environ.get("REDIS_URL") or config.redis.url
    embedded = None
    if not url:
        from proxy.store.embedded import EmbeddedRedis

        embedded = EmbeddedRedis(config.redis.state_dir, config.redis.embedded_maxmemory)
        url = embedded.url

    async def run() -> T:
        client = connect(url, config.redis, per_read_timeout=True)
        try:
            return await work(RedisGate(client, retry_after_ms=0))
        finally:
            await client.aclose()

    try:
        return asyncio.run(run())
    finally:
        if embedded is not None:
            embedded.close()


def tenant_names(config: Config, wanted: str | None) -> list[str] | None:
    """Every tenant, or just `wanted`; None (said on stderr) when there is no such tenant."""
    if wanted is None:
        return [t.name for t in config.tenants]
    if wanted not in config.tenant_index:
        print(f"llm-cache-proxy: no tenant named {wanted!r}", file=sys.stderr)
        return None
    return [wanted]


def cmd_stats(config: Config, args: argparse.Namespace) -> int:
    tenants = tenant_names(config, args.tenant)
    if tenants is None:
        return 1

    async def work(gate: RedisGate) -> dict[str, Any]:
        report = StatsReport(gate, config)
        snapshot = await report.snapshot(tenants)
        snapshot["cache"] = await report.footprint(tenants)
        return snapshot

    snapshot = with_redis(config, work)
    if args.json:
        sys.stdout.write(orjson.dumps(snapshot, option=orjson.OPT_INDENT_2).decode() + "\n")
        return 0
    print(render_table(snapshot, args.window))
    return 0


def _row(cells: list[str], widths: list[int]) -> str:
    return "  ".join(
        c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))
    )


def _cells(label: str, sub: str, f: dict[str, Any]) -> list[str]:
    lat = f["latency_ms"]
    return [
        label,
        sub,
        str(f["requests"]),
        str(f["hits"]),
        str(f["misses"]),
        str(f["bypasses"]),
        f"{f['hit_ratio'] * 100:.1f}%",
        str(f["coalesced"]),
        str(f["tokens_saved"]["total"]),
        f"${f['cost_saved_usd']:.4f}",
        f"${f['provider_cache_saved_usd']:.4f}",
        f"${f['spend_usd']:.4f}",
        str(f["rate_limited"]["total"]),
        str(sum(f["errors"].values())),
        "-" if lat["hit"]["p50"] is None else str(lat["hit"]["p50"]),
        "-" if lat["miss"]["p50"] is None else str(lat["miss"]["p50"]),
    ]


def render_table(snapshot: dict[str, Any], window: str) -> str:
    head = [
        "window",
        "",
        "requests",
        "hits",
        "misses",
        "bypass",
        "hit ratio",
        "coalesced",
        "tokens saved",
        "cost saved",
        "provider cache saved",
        "spend",
        "limited",
        "errors",
        "hit p50 ms",
        "miss p50 ms",
    ]
    rows = [_cells(w, "", snapshot["windows"][w]["totals"]) for w in WINDOWS]
    detail_head = ["tenant", "model", *head[2:]]
    detail = [
        _cells(tenant, model, f)
        for tenant, t in snapshot["windows"][window]["tenants"].items()
        for model, f in t["models"].items()
    ]
    widths = [max(len(r[i]) for r in [head, detail_head, *rows, *detail]) for i in range(len(head))]
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(snapshot["generated_at"]))
    lines = [
        f"llm-cache-proxy stats for {', '.join(snapshot['tenants'])} at {when}",
        "",
        _row(head, widths),
        *(_row(r, widths) for r in rows),
        "",
        f"by tenant and model ({window}):",
        _row(detail_head, widths),
    ]
    lines += [_row(r, widths) for r in detail] or ["  (no requests)"]
    cache = snapshot["cache"]
    lines += ["", f"cache: {cache['entries']} entries, ~{cache['memory_bytes']} bytes ({cache['method']})"]
    return "\n".join(lines)


def cmd_purge(config: Config, args: argparse.Namespace) -> int:
    if bool(args.tenant) == bool(args.all):
        print("llm-cache-proxy: purge needs exactly one of --tenant T or --all", file=sys.stderr)
        return 1
    tenants = (
        tenant_names(config, args.tenant) if args.tenant else [t.name for t in config.tenants] + ["shared"]
    )
    if tenants is None:
        return 1
    started = time.monotonic()
    last = [started]

    def progress(scanned: int, removed: int) -> None:
        if time.monotonic() - last[0] > 1:
            last[0] = time.monotonic()
            print(f"  ... {scanned} scanned, {removed} removed", file=sys.stderr, flush=True)

    removed = with_redis(
        config, lambda gate: purge(gate, config.redis.key_prefix, tenants, args.model, progress)
    )
    what = f" of model {args.model}" if args.model else ""
    print(
        f"removed {removed} cache entries{what} from {', '.join(tenants)} "
        f"in {time.monotonic() - started:.1f}s"
    )
    return 0


def cmd_inspect(config: Config, args: argparse.Namespace) -> int:
    tenants = tenant_names(config, args.tenant)
    if tenants is None:
        return 1
    digest = digest_in(args.digest)
    found = with_redis(
        config,
        lambda gate: inspect(gate, config.redis.key_prefix, digest, [*tenants, "shared"], args.show_answer),
    )
    if not found:
        print(f"no cache entry with digest {digest}", file=sys.stderr)
        return 1
    for item in found:
        stored = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(item["stored_at_ms"] / 1000))
        print(f"key        {item['key']}")
        print(f"tenant     {item['tenant']}")
        print(f"model      {item['model']}")
        print(f"stored at  {stored}")
        print(f"ttl left   {item['ttl_seconds']}s")
        print(f"size       {item['size_bytes']} bytes{' (compressed)' if item['compressed'] else ''}")
        print(
            f"usage      {item['usage']['prompt_tokens']} prompt + {item['usage']['completion_tokens']} "
            "completion tokens"
        )
        if args.show_answer:
            print(f"answer     {item['answer']}")
        print("(the answer is shown only with --show-answer; `review show --request` shows a flagged prompt)")
    return 0
