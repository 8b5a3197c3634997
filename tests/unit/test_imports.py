"""Import direction and cost: the app, the hit path and the CLI tools never import litellm
(seconds and hundreds of MB); only proxy.upstream.litellm_upstream does, lazily, on the first miss."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize(
    "modules",
    [
        "proxy.http.app",
        "proxy.cli.main",
        "proxy.cli.tools",
        "proxy.cli.fixtures",
        "proxy.cli.run",
        "proxy.service.pipeline",
        "proxy.http.routes.stats",
        "proxy.upstream.litellm_upstream",
    ],
)
def test_no_litellm_at_import(modules: str) -> None:
    code = f"import sys, {modules}; sys.exit('litellm' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0


def test_only_routes_and_app_import_fastapi() -> None:
    code = (
        "import sys, proxy.service.pipeline, proxy.store.cache, proxy.store.ratelimit, "
        "proxy.stats.recorder, proxy.cli.tools, proxy.cli.fixtures, proxy.cli.run; "
        "sys.exit('fastapi' in sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0
