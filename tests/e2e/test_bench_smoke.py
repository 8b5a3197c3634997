"""A tiny run of every benchmark scenario: the suite measures nothing (timings here are
noisy), it checks that `python -m bench.run` works with the shipped config.yaml's logging,
prints every scenario's row and every target, and stops everything it starts. LiteLLM's
proxy (the peer in the miss scenario) runs only if its benchmark venv already exists:
--quick never installs it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        shutil.which("wrk") is None or shutil.which("taskset") is None, reason="needs wrk and taskset"
    ),
]
REPO = Path(__file__).resolve().parents[2]


def started_by(marker: str) -> list[str]:
    """Every process whose environment carries `marker`: all that the benchmark started
    (each inherits its environment), and no other run's (a benchmark run by hand, or
    another checkout's suite, on the same machine)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:  # gone meanwhile, or not ours to read
            continue
        if marker.encode() in environ:
            found.append(f"{pid} {cmdline.decode(errors='replace')}")
    return found


def test_every_scenario_runs_at_tiny_size(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    marker = f"LLMCP_BENCH_SMOKE={uuid.uuid4().hex}"
    result = subprocess.run(
        [sys.executable, "-m", "bench.run", "--quick", "--json", str(out)],
        cwd=REPO,
        env={**os.environ, "LLMCP_BENCH_SMOKE": marker.split("=", 1)[1]},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(out.read_text())
    rows = {(r["scenario"], r["target"]): r for r in report["rows"]}
    assert {s for s, _ in rows} == {"a", "b", "c", "d", "e", "f"}
    for (scenario, target), row in rows.items():
        if scenario in ("a", "b", "c") or target.startswith("reference"):
            assert row["requests"] > 0 and row["errors"] == 0, row
    assert rows[("a", "hot-key hits")]["ratio"] > 0
    assert rows[("a", "hot-key hits, L1 on")]["ratio"] > 0  # against the dict reference

    # The shipped logging, read from config.yaml, and the proxy's log went to a file.
    shipped = yaml.safe_load((REPO / "config.yaml").read_text())["server"]
    assert report["logging"] == {k: shipped[k] for k in ("log_level", "access_log", "log_format")}
    if shipped["access_log"] and shipped["log_level"] in ("info", "debug"):
        assert report["proxy_log"]["access_lines"] > 0

    # Misses: the provider alone and both routes of the proxy, each at c=1 and c=64.
    misses = {m["target"]: m for m in report["misses"]}
    for target in ("provider alone", "proxy, default route", "proxy, route: litellm"):
        miss = next(m for name, m in misses.items() if name.startswith(target))
        assert miss["c1"]["requests"] > 0 and miss["c1"]["errors"] == 0, miss
        assert miss["c64"]["requests"] > 0 and miss["c64"]["errors"] == 0, miss
    peer = report["litellm_proxy"]
    if peer["version"] is None:  # no venv (never installed by --quick): the reason is printed
        assert peer["reason"] and "LiteLLM proxy: not measured" in result.stdout
    else:
        assert any(m["server"] == "litellm" for m in report["misses"])

    # Every row and every target is printed.
    for scenario, target in rows:
        if scenario != "d":
            assert target in result.stdout
    for target in misses:
        assert target in result.stdout
    assert "targets (reported, not asserted)" in result.stdout
    for target in ("CPU per miss", "added p50 at c=1", "launch to /readyz", "RSS flat", "L1 hits"):
        assert target in result.stdout
    assert report["memory"]["large"]["redis_bytes"] < report["memory"]["large"]["raw_bytes"]
    assert report["startup_s"] > 0
    # Nothing left running: every process the benchmark started is gone (found by the
    # marker in their environment, not by name: another benchmark may be running here).
    assert started_by(marker) == []
