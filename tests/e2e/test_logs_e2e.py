"""The real server's output: with `log_format: json` every line it writes, on stdout and
stderr, is one JSON object (ours, uvicorn's, litellm's, the embedded Redis's, the CLI's
banner and warnings); a clean stop (SIGTERM, SIGINT) says nothing alarming."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import yaml

from tests.conftest import TENANT_KEYS
from tests.servers import child_env, fake_provider_process, free_port, wait_for_http

pytestmark = pytest.mark.e2e
ALARMING = ("warning", "error", "critical")


class Server:
    """`python -m proxy serve` on the embedded Redis, its stdout and stderr kept apart."""

    def __init__(self, work: Path, log_format: str, log_level: str, models: list[dict[str, Any]]) -> None:
        self.port, self.work = free_port(), work
        config = {
            "server": {"port": self.port, "log_format": log_format, "log_level": log_level},
            "redis": {"state_dir": str(work / "state")},  # no REDIS_URL: the embedded Redis
            "models": models,
            "tenants": [{"name": "acme", "api_keys": [TENANT_KEYS["acme"]]}],
        }
        (work / "config.yaml").write_text(yaml.safe_dump(config))
        env = child_env()
        env.pop("OPENAI_API_KEY", None)
        self.out, self.err = (work / "stdout.log").open("wb"), (work / "stderr.log").open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "proxy", "serve", "--config", "config.yaml"],
            cwd=work,
            env=env,
            stdout=self.out,
            stderr=self.err,
            start_new_session=True,
        )
        wait_for_http(f"http://127.0.0.1:{self.port}/readyz")

    def chat(self, model: str, key: str = TENANT_KEYS["acme"], **extra: Any) -> httpx.Response:
        body = {"model": model, "messages": [{"role": "user", "content": f"hello {model}"}], **extra}
        return httpx.post(
            f"http://127.0.0.1:{self.port}/v1/chat/completions",
            json=body,
            headers={"Authorization": f"Bearer {key}"},
            timeout=30,
        )

    def stop(self, signum: int = signal.SIGTERM) -> tuple[int, list[str]]:
        """Stop with `signum`; the exit status and every line written, stdout's then stderr's."""
        self.proc.send_signal(signum)
        try:
            status = self.proc.wait(timeout=30)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
            self.out.close()
            self.err.close()
        text = (self.work / "stdout.log").read_text() + (self.work / "stderr.log").read_text()
        return status, text.splitlines()


@pytest.fixture
def fake_provider(tmp_path: Path) -> Any:
    with fake_provider_process() as base_url:
        yield base_url


def test_with_log_format_json_every_line_is_one_json_object(tmp_path: Path, fake_provider: str) -> None:
    models = [
        {"name": "demo", "litellm_model": "demo/echo"},
        # Through litellm, to the fake provider over real HTTP: litellm's own loggers speak.
        {
            "name": "fake",
            "litellm_model": "openai/fake-model",
            "route": "litellm",
            "api_base": fake_provider,
            "api_key": "sk-fake-upstream-key",
        },
        {"name": "fake-direct", "litellm_model": "openai/fake-model", "api_base": fake_provider},
        # As the shipped config reads it with no key: a startup warning, then 503s.
        {"name": "gpt-4o-mini", "litellm_model": "openai/gpt-4o-mini", "api_key": ""},
    ]
    # debug: the most lines from every library (litellm logs each call at DEBUG).
    server = Server(tmp_path, "json", "debug", models)
    try:
        assert server.chat("demo").status_code == 200
        assert server.chat("fake").status_code == 200
        assert server.chat("fake", stream=True).status_code == 200
        assert server.chat("fake-direct").status_code == 200
        assert server.chat("gpt-4o-mini").status_code == 503
        assert server.chat("demo", key="sk-not-a-key").status_code == 401
    finally:
        status, lines = server.stop()
    assert status == 0
    records = []
    for line in lines:
        record = orjson.loads(line)  # raises on any line that is not JSON
        assert isinstance(record, dict) and {"ts", "level", "logger", "message"} <= record.keys(), line
        records.append(record)
    loggers = {r["logger"] for r in records}
    assert {"llmcp.cli", "llmcp.embedded", "uvicorn.error", "llmcp.access"} <= loggers, loggers
    assert any(name.startswith("LiteLLM") for name in loggers), loggers
    # The model without a key: one startup warning naming the variable, and the access line's reason.
    keyless = [r for r in records if r["logger"] == "llmcp.config"]
    assert len(keyless) == 1 and "OPENAI_API_KEY" in keyless[0]["message"], keyless
    errors = [r["error"] for r in records if r["logger"] == "llmcp.access" and r.get("error")]
    assert errors == ["model_not_configured", "invalid_api_key"]
    alarming = [r for r in records if r["level"] in ALARMING and r not in keyless]
    assert alarming == [], alarming  # a clean run and a clean SIGTERM


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_clean_stop_says_nothing_alarming(tmp_path: Path, signum: int) -> None:
    server = Server(tmp_path, "text", "info", [{"name": "demo", "litellm_model": "demo/echo"}])
    try:
        assert server.chat("demo").status_code == 200
    finally:
        status, lines = server.stop(signum)
    assert status == 0, lines
    assert any("Finished server process" in line for line in lines), lines
    alarming = [line for line in lines if any(w in line for w in (" WARNING ", " ERROR ", "Traceback"))]
    assert alarming == [], alarming
