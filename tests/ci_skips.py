"""A pytest plugin: when the environment sets `CI`, a skipped test fails the run.

A test that needs a tool the machine lacks (chromium, wrk, taskset, node) skips on a
developer's machine, which is fine; in CI the same skip would let a whole feature go
untested while the run stays green. So under CI each skip becomes a failure that keeps the
skip's reason: at setup or call (`skipif`, `pytest.skip`) and at collection
(`pytest.skip(..., allow_module_level=True)`). Expected failures (`xfail`) stay what they
are. Loaded by tests/conftest.py; tests/unit/test_ci_skips.py runs it on small test files.
"""

from __future__ import annotations

import os
from collections.abc import Generator
from typing import Any

import pytest


def _in_ci() -> bool:
    return bool(os.environ.get("CI"))


def _as_failure(report: pytest.TestReport | pytest.CollectReport) -> None:
    longrepr: Any = report.longrepr
    reason = (longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)).removeprefix("Skipped: ")
    report.outcome = "failed"
    report.longrepr = f"skipped under CI: {reason} (CI must install what every test needs: .ci/run)"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if _in_ci() and report.skipped and not hasattr(report, "wasxfail"):
        _as_failure(report)
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(
    collector: pytest.Collector,
) -> Generator[None, pytest.CollectReport, pytest.CollectReport]:
    report = yield
    if _in_ci() and report.skipped:
        _as_failure(report)
    return report
