"""Under CI a skipped test fails the run (tests/ci_skips.py); locally it is a skip that
prints its reason. Each case runs pytest on a small test file with the plugin loaded."""

from __future__ import annotations

import pytest

SKIPPING = """
import shutil
import pytest

def test_runs():
    pass

@pytest.mark.skipif(shutil.which("no-such-tool-here") is None, reason="no-such-tool-here is missing")
def test_needs_a_tool():
    pass

def test_skips_itself():
    pytest.skip("the fixture server is not installed")

@pytest.mark.xfail(reason="known bug", strict=True)
def test_known_bug():
    assert False
"""

MODULE_SKIP = """
import pytest
pytest.skip("whole module needs a GPU", allow_module_level=True)

def test_never_collected():
    pass
"""


def _run(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, ci: str | None) -> pytest.RunResult:
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    return pytester.runpytest_inprocess("-p", "tests.ci_skips", "-rs")


@pytest.mark.parametrize("ci", ["1", "true"])
def test_a_skip_fails_the_run_under_ci_with_its_reason(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, ci: str
) -> None:
    pytester.makepyfile(test_tools=SKIPPING)
    result = _run(pytester, monkeypatch, ci)
    # A skip at setup (skipif) reports as an error, one in the test's body as a failure.
    result.assert_outcomes(passed=1, failed=1, errors=1, xfailed=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["*skipped under CI: no-such-tool-here is missing*"])
    result.stdout.fnmatch_lines(["*skipped under CI: *the fixture server is not installed*"])


def test_locally_a_skip_is_a_skip_and_prints_its_reason(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makepyfile(test_tools=SKIPPING)
    result = _run(pytester, monkeypatch, None)
    result.assert_outcomes(passed=1, skipped=2, xfailed=1)
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines(["SKIPPED *no-such-tool-here is missing"])


def test_a_module_skipped_at_collection_fails_under_ci(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makepyfile(test_gpu=MODULE_SKIP)
    assert _run(pytester, monkeypatch, None).ret == pytest.ExitCode.NO_TESTS_COLLECTED
    result = _run(pytester, monkeypatch, "1")
    assert result.ret != pytest.ExitCode.OK
    result.stdout.fnmatch_lines(["*skipped under CI: *whole module needs a GPU*"])
