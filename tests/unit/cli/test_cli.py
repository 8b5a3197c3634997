"""The CLI: check-config and serve stop on a bad config with one line, never a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "proxy", *args], capture_output=True, text=True, timeout=60, cwd=REPO, env=env
    )


def test_check_config_ok() -> None:
    result = run("check-config", "--config", str(REPO / "config.yaml"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("config OK")
    assert "tenant   demo" in result.stdout
    assert "sk-demo-key" not in result.stdout  # keys are never printed


def test_bad_config_is_one_clear_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "models: [{name: m, litellm_model: openai/x}]\ntenants: [{name: t, api_keys: ['${NOPE_KEY}']}]\n"
    )
    for command in ("check-config", "serve"):
        result = run(command, "--config", str(bad))
        assert result.returncode == 1
        assert "Traceback" not in result.stderr
        lines = result.stderr.strip().splitlines()
        assert lines == [
            f"llm-cache-proxy: config error: {bad}: tenants[0].api_keys[0]: environment variable "
            "NOPE_KEY is not set"
        ]


def test_config_path_from_environment(tmp_path: Path) -> None:
    import os

    env = {**os.environ, "LLMCP_CONFIG": str(REPO / "config.yaml")}
    assert run("check-config", env=env).returncode == 0
    env["LLMCP_CONFIG"] = str(tmp_path / "missing.yaml")
    result = run("check-config", env=env)
    assert result.returncode == 1 and "config file not found" in result.stderr


def test_check_config_warns_of_models_a_budget_cannot_price(tmp_path: Path) -> None:
    config = tmp_path / "budget.yaml"
    config.write_text(
        "models:\n"
        "  - {name: priced, litellm_model: openai/gpt-4o-mini}\n"
        "  - {name: mystery, litellm_model: openai/no-price-map-lists-this}\n"
        "tenants: [{name: acme, api_keys: [sk-acme-key-1], budget: {usd_per_day: 25, usd_per_month: 500}}]\n"
    )
    result = run("check-config", "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert "tenant   acme: 1 key(s), unlimited, budget $25/day $500/month" in result.stdout
    warnings = [line for line in result.stdout.splitlines() if "has no price" in line]
    assert len(warnings) == 1 and warnings[0].startswith("warning: model mystery has no price")
    assert run("check-config", "--strict", "--config", str(config)).returncode == 1


def test_check_config_warns_about_a_model_without_a_key_and_fails_only_when_strict() -> None:
    """The shipped config with OPENAI_API_KEY unset: still valid (the demo model works),
    one warning naming the variable; --strict makes it exit 1."""
    import os

    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    config = str(REPO / "config.yaml")
    result = run("check-config", "--config", config, env=env)
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stdout.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1
    assert "'gpt-4o-mini'" in warnings[0] and "set OPENAI_API_KEY" in warnings[0]
    strict = run("check-config", "--strict", "--config", config, env=env)
    assert strict.returncode == 1 and "--strict" in strict.stderr
    with_key = run("check-config", "--strict", "--config", config, env={**env, "OPENAI_API_KEY": "sk-x"})
    assert with_key.returncode == 0 and "warning:" not in with_key.stdout
