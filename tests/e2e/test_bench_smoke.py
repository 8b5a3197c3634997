"""A tiny run of every benchmark scenario: the suite measures nothing (timings here are
noisy), it checks that `python -m bench.run` works and stops everything it starts."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        shutil.which("wrk") is None or shutil.which("taskset") is None, reason="needs wrk and taskset"
    ),
]
REPO = Path(__file__).resolve().parents[2]


def test_every_scenario_runs_at_tiny_size(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    result = subprocess.run(
        [sys.executable, "-m", "bench.run", "--quick", "--json", str(out)],
        cwd=REPO,
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
    assert report["memory"]["large"]["redis_bytes"] < report["memory"]["large"]["raw_bytes"]
    assert report["startup_s"] > 0
    # Nothing left running: every process the benchmark started is gone.
    leftovers = subprocess.run(["pgrep", "-f", "llmcp-bench-"], capture_output=True, text=True).stdout
    assert leftovers.strip() == ""
