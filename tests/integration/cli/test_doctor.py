"""`llm-cache-proxy doctor`: one line per check, against a real Redis (the suite's, and
private redis-servers with other eviction policies) and the real fake provider over HTTP
(the server's own HTTP/1.1 transport), respx where a provider is not at hand (Anthropic)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import yaml

from proxy.cli.doctor import redis_checks, run_checks
from proxy.config import Config, RedisConfig
from proxy.store.connection import RedisGate, connect
from proxy.store.diagnostics import eviction_verdict
from proxy.testing.transports import HttpxTransport
from proxy.upstream.http1 import Http1Transport
from tests.conftest import TENANT_KEYS, build_config, provider_mock
from tests.servers import RedisProcess, fake_provider_process, free_port

pytestmark = pytest.mark.anyio
REPO = Path(__file__).resolve().parents[3]
FAKE_KEY = "sk-fake-provider-key"


@pytest.fixture(scope="module")
def fake_provider() -> Iterator[str]:
    """The fake provider, wanting FAKE_KEY on GET /v1/models."""
    with fake_provider_process(api_key=FAKE_KEY) as base_url:
        yield base_url


@pytest.fixture
async def gate(redis_url: str) -> AsyncIterator[RedisGate]:
    client = connect(redis_url, RedisConfig())
    yield RedisGate(client, retry_after_ms=0)
    await client.aclose()


def config_with(key_prefix: str, models: list[dict[str, Any]]) -> Config:
    return build_config(key_prefix, models=models)


async def test_each_provider_gets_one_line_that_says_what_to_fix(
    gate: RedisGate, key_prefix: str, fake_provider: str, redis_sync: redis.Redis
) -> None:
    closed = f"http://127.0.0.1:{free_port()}/v1"
    models = [
        {"name": "demo", "litellm_model": "demo/echo"},
        {
            "name": "good",
            "litellm_model": "openai/fake-model",
            "api_base": fake_provider,
            "api_key": FAKE_KEY,
        },
        {
            "name": "bad-key",
            "litellm_model": "openai/fake-model",
            "api_base": fake_provider,
            "api_key": "sk-x",
        },
        {
            "name": "other",
            "litellm_model": "openai/not-served",
            "api_base": fake_provider,
            "api_key": FAKE_KEY,
        },
        {"name": "down", "litellm_model": "openai/fake-model", "api_base": closed, "api_key": FAKE_KEY},
        {"name": "keyless", "litellm_model": "openai/gpt-4o-mini"},
        {"name": "bedrock", "litellm_model": "bedrock/anthropic.claude-3", "api_key": "k"},
    ]
    http = Http1Transport()
    try:
        checks = await run_checks(config_with(key_prefix, models), gate, "test", http, environ={})
    finally:
        await http.aclose()
    lines = [c.line() for c in checks]
    assert lines[0].startswith("ok   redis test: reachable, version ")
    info = redis_sync.info("memory")
    expected = eviction_verdict(str(info["maxmemory_policy"]), int(info["maxmemory"]))
    assert (checks[1].verdict, checks[1].detail) == expected
    by_model = {c.subject.split()[1]: c for c in checks[2:]}
    assert [c.verdict for c in by_model.values()] == ["ok", "ok", "fail", "warn", "fail", "warn", "warn"]
    assert "no network" in by_model["demo"].detail
    assert by_model["good"].detail == "reachable, key accepted, 'fake-model' listed"
    assert "key was refused (HTTP 401" in by_model["bad-key"].detail
    assert "'not-served' is not among its 1 models" in by_model["other"].detail
    assert by_model["down"].detail.startswith(f"{closed}/models unreachable (")
    assert "set OPENAI_API_KEY" in by_model["keyless"].detail
    assert "not checked" in by_model["bedrock"].detail
    assert all(FAKE_KEY not in line and "sk-x" not in line for line in lines)  # keys never printed


async def test_anthropic_is_asked_its_models_endpoint_with_its_headers(
    gate: RedisGate, key_prefix: str
) -> None:
    models = [
        {"name": "claude", "litellm_model": "anthropic/claude-3-5-haiku-latest"},
        {
            "name": "slow",
            "litellm_model": "anthropic/claude-3-5-haiku-latest",
            "api_base": "https://slow.test",
        },
    ]
    environ = {"ANTHROPIC_API_KEY": "sk-ant-from-env"}
    with provider_mock(assert_all_called=False) as mock:  # the in-process app's route is not used here
        listed = mock.get("https://api.anthropic.com/v1/models").respond(
            200, json={"data": [{"id": "claude-3-5-haiku-20241022", "type": "model"}]}
        )
        mock.get("https://slow.test/v1/models").mock(side_effect=httpx.ReadTimeout("slow"))
        checks = await run_checks(config_with(key_prefix, models), gate, "test", HttpxTransport(), environ)
    sent = listed.calls.last.request
    assert sent.headers["x-api-key"] == "sk-ant-from-env" and sent.headers["anthropic-version"]
    claude, slow = checks[2:]
    assert (claude.verdict, claude.detail) == ("ok", "reachable, key accepted (1 models listed)")
    assert slow.verdict == "fail" and "timed out (ReadTimeout)" in slow.detail


@pytest.mark.parametrize(
    "args, verdict, words",
    [
        (("--maxmemory", "100mb", "--maxmemory-policy", "allkeys-lru"), "warn", "rate-limit buckets"),
        (("--maxmemory", "100mb", "--maxmemory-policy", "volatile-lru"), "ok", "only keys with a TTL"),
        (("--maxmemory", "100mb", "--maxmemory-policy", "noeviction"), "warn", "refuses writes"),
    ],
)
async def test_eviction_policies_of_a_real_server(args: tuple[str, ...], verdict: str, words: str) -> None:
    server = RedisProcess().start(*args)
    client = connect(server.url, RedisConfig())
    try:
        reachable, eviction = await redis_checks(RedisGate(client, retry_after_ms=0), "private")
    finally:
        await client.aclose()
        server.stop()
    assert reachable.verdict == "ok"
    assert eviction.verdict == verdict and words in eviction.detail and "104857600 bytes" in eviction.detail


def test_the_command_prints_one_line_per_check_and_fails_when_redis_is_down(tmp_path: Path) -> None:
    config = {
        "models": [{"name": "demo", "litellm_model": "demo/echo"}],
        "tenants": [{"name": "acme", "api_keys": [TENANT_KEYS["acme"]]}],
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    down = f"redis://127.0.0.1:{free_port()}/0"
    result = subprocess.run(
        [sys.executable, "-m", "proxy", "doctor", "--config", "config.yaml"],
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", "REDIS_URL": down},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"fail redis {down}: not reachable")
    assert lines[1].startswith("ok   model demo (demo/echo)")
    assert lines[2] == "2 checks: 1 ok, 0 warn, 1 fail"
    assert "Traceback" not in result.stderr
