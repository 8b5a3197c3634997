"""`llm-cache-proxy doctor`: is what the config points at usable? One line per check
(`ok`, `warn` or `fail` and why): Redis (reachable, version, whether its eviction policy
can take keys the proxy needs) and each model's provider (reachable, key accepted, asked
of its models endpoint). Exit 1 when a check fails."""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping

from proxy.cli.main import _safe_url
from proxy.cli.tools import with_redis
from proxy.config import Config
from proxy.errors import StoreUnavailable
from proxy.store.connection import RedisGate
from proxy.store.diagnostics import eviction_verdict, redis_facts, version_verdict
from proxy.upstream.http1 import Http1Transport
from proxy.upstream.probe import Check, Getter, probe_model


async def run_checks(
    config: Config,
    gate: RedisGate,
    where: str,
    http: Getter,
    environ: Mapping[str, str],
    timeout: float = 10.0,
) -> list[Check]:
    """Every check, in report order. `http` carries the provider calls (tests inject theirs)."""
    checks = await redis_checks(gate, where)
    for model in config.models:
        checks.append(await probe_model(model, http, environ, timeout))
    return checks


async def redis_checks(gate: RedisGate, where: str) -> list[Check]:
    subject = f"redis {where}"
    try:
        facts = await redis_facts(gate)
    except StoreUnavailable as exc:
        return [Check("fail", subject, f"not reachable: {exc}")]
    version, version_detail = version_verdict(facts.version)
    eviction, eviction_detail = eviction_verdict(facts.policy, facts.maxmemory)
    return [
        Check(version, subject, f"reachable, {version_detail}"),
        Check(eviction, "redis eviction", eviction_detail),
    ]


def cmd_doctor(config: Config, args: argparse.Namespace) -> int:
    url = os.environ.get("REDIS_URL") or config.redis.url
    where = _safe_url(url) if url else f"embedded ({config.redis.state_dir})"

    async def work(gate: RedisGate) -> list[Check]:
        http = Http1Transport()
        try:
            return await run_checks(config, gate, where, http, os.environ, args.timeout)
        finally:
            await http.aclose()

    checks = with_redis(config, work)
    for check in checks:
        print(check.line())
    failed = sum(c.verdict == "fail" for c in checks)
    warned = sum(c.verdict == "warn" for c in checks)
    print(f"{len(checks)} checks: {len(checks) - failed - warned} ok, {warned} warn, {failed} fail")
    return 1 if failed else 0
