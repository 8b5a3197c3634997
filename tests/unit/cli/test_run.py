"""`llm-cache-proxy run` refuses what it cannot do before starting anything."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "models": [{"name": "m", "litellm_model": "openai/gpt-4o-mini"}],
                "tenants": [{"name": "acme", "api_keys": ["sk-acme-123456"]}],
            }
        )
    )
    return path


def run(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "proxy", "run", "--config", str(config), *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=config.parent,
    )


def test_a_command_is_needed(config: Path) -> None:
    done = run(config, "--replay", "llm.jsonl")
    assert done.returncode == 2 and "run needs a command" in done.stderr


def test_a_missing_or_bad_fixture_stops_the_run_before_the_command(config: Path) -> None:
    marker = config.parent / "ran"
    command = ["--", sys.executable, "-c", f"open({str(marker)!r}, 'w')"]
    missing = run(config, "--replay", "missing.jsonl", *command)
    assert missing.returncode == 2 and "cannot read missing.jsonl" in missing.stderr
    (config.parent / "bad.jsonl").write_text('{"tenant": "acme"}\n')
    bad = run(config, "--replay", "bad.jsonl", *command)
    assert bad.returncode == 2
    assert "bad.jsonl:1: missing answer, endpoint, meta, model, request" in bad.stderr
    assert "bad.jsonl has bad lines; not running" in bad.stderr
    assert not marker.exists()


def test_replay_and_record_are_exclusive(config: Path) -> None:
    done = run(config, "--replay", "a.jsonl", "--record", "b.jsonl", "--", "true")
    assert done.returncode == 2 and "not allowed with argument" in done.stderr


def test_an_unknown_tenant(config: Path) -> None:
    done = run(config, "--tenant", "initech", "--", "true")
    assert done.returncode == 2 and "no tenant named 'initech'" in done.stderr
