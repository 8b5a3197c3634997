"""Real processes for end-to-end tests: the proxy (`python -m proxy serve`) and the fake
provider (`python -m proxy.testing.fake_provider`), on loopback ports, sharing the test Redis."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import openai
import redis
import yaml

from tests.conftest import TENANT_KEYS
from tests.servers import child_env, free_port, wait_for_http


@dataclass
class Stack:
    proxy_port: int
    upstream_port: int
    prefix: str
    work: Path
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.proxy_port}/v1"

    @property
    def upstream(self) -> str:
        return f"http://127.0.0.1:{self.upstream_port}"

    def client(self, tenant: str = "acme", **kwargs: Any) -> openai.OpenAI:
        kwargs.setdefault("max_retries", 0)
        return openai.OpenAI(base_url=self.base_url, api_key=TENANT_KEYS[tenant], **kwargs)

    def upstream_calls(self) -> int:
        return int(httpx.get(f"{self.upstream}/_fake/stats").json()["requests"])

    def upstream_mode(self, **mode: Any) -> None:
        httpx.post(f"{self.upstream}/_fake/mode", json=mode).raise_for_status()


def write_config(
    path: Path,
    upstream_port: int,
    prefix: str,
    models_with_upstream: Callable[[int], dict[str, Any]] | None = None,
    litellm: bool = True,
    **sections: Any,
) -> None:
    """The stack's config; `models_with_upstream(port)` replaces the model of its name.
    `litellm=False` leaves out the model routed through litellm (`fake`), so the workers
    never import it."""
    config: dict[str, Any] = {
        "redis": {"key_prefix": prefix, **sections.pop("redis", {})},  # the stack's prefix, always
        "models": [
            {
                "name": "fake",
                "litellm_model": "openai/fake-model",
                "route": "litellm",  # the end-to-end tests drive litellm over real HTTP here
                "api_base": f"http://127.0.0.1:{upstream_port}/v1",
                "api_key": "sk-fake-upstream-key",
            },
            {"name": "demo", "litellm_model": "demo/echo"},
            {
                "name": "fake-direct",
                "litellm_model": "openai/fake-model",
                "route": "direct",
                "api_base": f"http://127.0.0.1:{upstream_port}/v1",
                "api_key": "sk-fake-upstream-key",
            },
        ],
        "tenants": [{"name": n, "api_keys": [k]} for n, k in TENANT_KEYS.items()],
        **sections,
    }
    if not litellm:
        config["models"] = [m for m in config["models"] if m.get("route") != "litellm"]
    if models_with_upstream is not None:
        extra = models_with_upstream(upstream_port)
        config["models"] = [m for m in config["models"] if m["name"] != extra["name"]] + [extra]
    path.write_text(yaml.safe_dump(config))


def spawn(args: list[str], env: dict[str, str], cwd: Path, log: Path) -> subprocess.Popen[bytes]:
    """A server in a process group of its own, so `stop` can reach its workers too."""
    with log.open("wb") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            [sys.executable, *args],
            env=env,
            cwd=cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def stop(*procs: subprocess.Popen[bytes]) -> None:
    """SIGTERM (a graceful stop), then SIGKILL for whatever is left of each process group:
    a supervisor killed mid-restart would otherwise leave its workers serving, and eating
    CPU, for the rest of the suite."""
    for proc in procs:
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)


def start_stack(
    work: Path,
    redis_url: str,
    workers: int = 1,
    environ: dict[str, str] | None = None,
    settled: bool = False,
    litellm: bool = True,
    **sections: Any,
) -> Stack:
    """`environ`: more environment for the proxy (e.g. OTEL_* for tracing). Each worker
    imports litellm in the background after /readyz (seconds of CPU, during which its event
    loop answers late and a Redis call can run past redis.timeout_ms). `settled`: wait until
    the served processes are idle (`settle`), for the tests that time their first requests
    against deadlines of their own; the others need not (a request for a litellm model
    waits for the import anyway), and skip its seconds of waiting. `litellm=False`: no model
    routed through litellm, so no import at all (for tests whose limits must hold exactly,
    with no Redis call timed out and served open)."""
    stack = Stack(free_port(), free_port(), f"llmcpe2e{uuid.uuid4().hex[:8]}", work)
    write_config(work / "config.yaml", stack.upstream_port, stack.prefix, litellm=litellm, **sections)
    env = child_env(REDIS_URL=redis_url, **(environ or {}))
    stack.procs.append(
        spawn(
            ["-m", "proxy.testing.fake_provider", "--port", str(stack.upstream_port)],
            env,
            work,
            work / "upstream.log",
        )
    )
    stack.procs.append(
        spawn(
            [
                "-m",
                "proxy",
                "serve",
                "--config",
                "config.yaml",
                "--port",
                str(stack.proxy_port),
                "--workers",
                str(workers),
            ],
            env,
            work,
            work / "proxy.log",
        )
    )
    try:
        wait_for_http(f"{stack.upstream}/_fake/stats")
        wait_for_http(f"http://127.0.0.1:{stack.proxy_port}/readyz")
        if settled:
            settle(stack.procs[-1].pid)
    except BaseException:
        stop(*stack.procs)
        raise
    return stack


def settle(session: int, timeout: float = 60.0) -> None:
    """Wait until the server's processes (its session: supervisor and workers) are idle.
    Ready is not settled: each worker imports litellm in the background after /readyz
    (seconds of CPU), and a test that times its first requests (a client timeout, a wait for
    the first chunk) must not pay for that import, least of all beside other tests' servers.
    Never fails: after `timeout` the test goes on as it would have."""
    deadline = time.monotonic() + timeout
    last = _cpu_seconds(session)
    while time.monotonic() < deadline:
        time.sleep(0.3)
        now = _cpu_seconds(session)
        if now - last < 0.03:  # under a tenth of a core over the interval: idle
            return
        last = now


def _cpu_seconds(session: int) -> float:
    """CPU time (user + system) of the live processes of `session`."""
    ticks = 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == session:  # field 6 of stat, the session id
            ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


def stop_stack(stack: Stack, redis_sync: redis.Redis) -> None:
    stop(*reversed(stack.procs))
    keys = list(redis_sync.scan_iter(match=f"{stack.prefix}:*"))
    if keys:
        redis_sync.unlink(*keys)
    log = (stack.work / "proxy.log").read_text()
    assert "Traceback" not in log, log


def cli(stack: Stack, *args: str, redis_url: str) -> subprocess.CompletedProcess[str]:
    """Run `llm-cache-proxy <args> --config <the stack's>` in a child, which must not import litellm."""
    code = (
        "import sys; from proxy.cli.main import main; rc = main(sys.argv[1:]); "
        "assert 'litellm' not in sys.modules, 'the CLI imported litellm'; sys.exit(rc)"
    )
    return subprocess.run(
        [sys.executable, "-c", code, *args, "--config", str(stack.work / "config.yaml")],
        env=child_env(REDIS_URL=redis_url),
        capture_output=True,
        text=True,
        timeout=60,
    )
