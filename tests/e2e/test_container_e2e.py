"""The container's entrypoint, run outside Docker (no engine on these machines): the
Dockerfile's own ENV, CMD and HEALTHCHECK, with the config at the mounted path's
stand-in and REDIS_URL from the environment, as docs/docker-compose.yml runs it."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import uuid
from pathlib import Path

import openai
import pytest
import redis

from tests.e2e.stack import stop
from tests.servers import child_env, free_port, wait_for_http

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]


def dockerfile() -> tuple[dict[str, str], list[str], list[str]]:
    """(ENV of the runtime stage, CMD, HEALTHCHECK CMD) read from the Dockerfile."""
    text = ROOT.joinpath("Dockerfile").read_text().replace("\\\n", " ")
    runtime = text.rsplit("\nFROM ", 1)[1]
    env = dict(re.findall(r"(\w+)=(\S+)", re.search(r"\nENV (.+)", runtime).group(1)))  # type: ignore[union-attr]
    cmd = json.loads(re.search(r"\nCMD (\[.+\])", runtime).group(1))  # type: ignore[union-attr]
    health = json.loads(re.search(r"HEALTHCHECK .*?CMD (\[.+\])", runtime).group(1))  # type: ignore[union-attr]
    return env, cmd, health


def test_the_image_entrypoint_serves_and_passes_its_healthcheck(
    tmp_path: Path, redis_url: str, redis_sync: redis.Redis
) -> None:
    env, cmd, health = dockerfile()
    assert (
        cmd[:2] == ["llm-cache-proxy", "serve"] and env["LLMCP_CONFIG"] == "/etc/llm-cache-proxy/config.yaml"
    )
    env["LLMCP_CONFIG"] = str(ROOT / "config.yaml")  # what the image copies to that path
    port, prefix = free_port(), f"llmcpcontainer{uuid.uuid4().hex[:8]}"
    args = [a if a != "8080" else str(port) for a in cmd[1:]]  # `serve --host 0.0.0.0 --port ...`
    log = tmp_path / "proxy.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "proxy", *args],
            env=child_env(**env, REDIS_URL=redis_url, LLMCP_KEY_PREFIX=prefix),
            cwd=tmp_path,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # `stop` cleans up the whole group
        )
    try:
        wait_for_http(f"http://127.0.0.1:{port}/readyz")
        probe = [a.replace("8080", str(port)) for a in health]
        assert probe[0] == "python"
        assert subprocess.run([sys.executable, *probe[1:]], timeout=10).returncode == 0
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="sk-demo-key", max_retries=0)
        content = f"container {port}"
        messages = [{"role": "user", "content": content}]
        seen = [
            client.chat.completions.with_raw_response.create(model="demo", messages=messages).headers[
                "x-cache"
            ]
            for _ in range(2)
        ]
        assert seen == ["MISS", "HIT"]
    finally:
        stop(proc)
        keys = list(redis_sync.scan_iter(match=f"{prefix}:*", count=1000))
        if keys:
            redis_sync.unlink(*keys)
    assert proc.returncode == 0, log.read_text()[-2000:]
    assert "Traceback" not in log.read_text()
