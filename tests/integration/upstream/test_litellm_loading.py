"""litellm is off the startup path: imported only when a configured model routes through
it, in a worker thread once the app is up; only that model's requests wait for it.

Each case runs in a fresh interpreter (the test process has litellm imported already)."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

SCRIPT = r"""
import asyncio, json, sys, time
import httpx
from proxy.config import parse_config
from proxy.http.app import create_app

models = json.loads(sys.argv[3])
config = parse_config({
    "redis": {"key_prefix": sys.argv[2]},
    "models": [{"name": "demo", "litellm_model": "demo/echo"}, *models],
    "tenants": [{"name": "acme", "api_keys": ["sk-acme-test-key"]}],
}, {})

KEY = {"authorization": "Bearer sk-acme-test-key"}

async def main():
    out = {}
    app = create_app(config, sys.argv[1])
    started = time.perf_counter()
    async with app.router.lifespan_context(app):
        out["started_s"] = time.perf_counter() - started
        out["litellm_at_ready"] = "litellm" in sys.modules and hasattr(sys.modules["litellm"], "acompletion")
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://proxy") as c:
            body = {"model": "demo", "messages": [{"role": "user", "content": "hi"}]}
            r = await c.post("/v1/chat/completions", json=body, headers=KEY)
            out["demo"] = r.status_code
            if models:
                # A litellm model's request waits for the import instead of failing or
                # importing on the event loop. Its provider is unreachable: a 5xx.
                body["model"] = models[0]["name"]
                r = await c.post("/v1/chat/completions", json=body, headers=KEY)
                out["litellm_model"] = r.status_code
                out["litellm_after_call"] = "litellm" in sys.modules
    print(json.dumps(out))

asyncio.run(main())
"""


def run(redis_url: str, key_prefix: str, models: list[dict[str, Any]]) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, redis_url, key_prefix, json.dumps(models)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={"PATH": "/usr/bin:/bin", "LITELLM_LOCAL_MODEL_COST_MAP": "True"},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


@pytest.mark.e2e
def test_openai_compatible_models_never_import_litellm(redis_url: str, key_prefix: str) -> None:
    direct = {
        "name": "gpt",
        "litellm_model": "openai/gpt-4o-mini",
        "api_base": "http://127.0.0.1:9/v1",
        "timeout_seconds": 5,
    }
    out = run(redis_url, key_prefix, [direct])
    assert out["demo"] == 200 and out["litellm_at_ready"] is False
    # Its miss goes to the server directly (unreachable here: a 5xx), litellm never loaded.
    assert out["litellm_model"] in (502, 503, 504) and out["litellm_after_call"] is False


@pytest.mark.e2e
def test_a_litellm_model_loads_it_in_the_background(redis_url: str, key_prefix: str) -> None:
    claude = {
        "name": "claude",
        "litellm_model": "anthropic/claude-3-5-haiku-latest",
        "api_base": "http://127.0.0.1:9",
        "api_key": "sk-ant-test",
        "timeout_seconds": 5,
    }
    out = run(redis_url, key_prefix, [claude])
    assert out["demo"] == 200
    assert out["litellm_at_ready"] is False  # ready before the import finished
    assert out["litellm_model"] in (502, 503, 504) and out["litellm_after_call"] is True
