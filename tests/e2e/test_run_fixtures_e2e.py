"""`llm-cache-proxy run`: record once against the fake provider, then replay offline for a
Python script using the openai SDK and a Node script using the openai npm package, with no
code change in either (they read OPENAI_BASE_URL and OPENAI_API_KEY); the command's exit
status is `run`'s."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import orjson
import pytest
import yaml

from tests.conftest import TENANT_KEYS
from tests.e2e.stack import spawn, stop
from tests.servers import child_env, free_port, wait_for_http

pytestmark = pytest.mark.e2e
NODE_DIR = Path(__file__).parent / "node"
SAID = "This is the demo model. You said: "

CLIENT = f"""
import openai

client = openai.OpenAI(max_retries=0)
plain = client.chat.completions.create(
    model="fake-direct", messages=[{{"role": "user", "content": "ci fixture"}}]
)
assert plain.choices[0].message.content == {SAID!r} + "ci fixture", plain
stream = client.chat.completions.create(
    model="fake-direct", messages=[{{"role": "user", "content": "ci stream"}}], stream=True
)
text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
assert text == {SAID!r} + "ci stream", text
vectors = client.embeddings.create(model="fake-direct", input="ci vector")
assert len(vectors.data) == 1 and vectors.data[0].embedding
print("python ok")
"""

# One answer already in the file (a hit: not recorded again) and one new.
MORE = """
import openai

client = openai.OpenAI(max_retries=0)
client.chat.completions.create(model="fake-direct", messages=[{"role": "user", "content": "ci fixture"}])
client.chat.completions.create(model="fake-direct", messages=[{"role": "user", "content": "ci second"}])
"""

# A request nobody recorded: the 404 says why, and the script's own status comes back.
MISS = """
import sys

import openai

client = openai.OpenAI(max_retries=0)
try:
    client.chat.completions.create(model="fake-direct", messages=[{"role": "user", "content": "ci fixturez"}])
except openai.NotFoundError as exc:
    print(exc.body["code"], exc.body["message"])
    sys.exit(3)
"""


def _unavailable(why: str) -> None:
    """Without Node the test cannot run: a failure in CI, a skip on a developer's machine."""
    if os.environ.get("CI"):
        pytest.fail(why)
    pytest.skip(why)


@pytest.fixture(scope="module")
def node() -> str:
    """`node`, with the openai npm package installed in tests/e2e/node (once: it is kept)."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        _unavailable("node and npm are needed to run the openai npm package")
    assert node is not None and npm is not None
    if not (NODE_DIR / "node_modules" / "openai").is_dir():
        done = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund"], cwd=NODE_DIR, capture_output=True, text=True, timeout=300
        )
        if done.returncode != 0:
            _unavailable(f"npm ci failed: {done.stderr[-2000:]}")
    return node


def run(work: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "proxy", "run", "--config", "config.yaml", *args],
        cwd=work,
        env=child_env(),  # no REDIS_URL: run brings its own Redis
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_record_once_then_replay_offline_in_python_and_node(tmp_path: Path, node: str) -> None:
    port = free_port()
    model = {
        "name": "fake-direct",
        "litellm_model": "openai/fake-model",
        "api_base": f"http://127.0.0.1:{port}/v1",
        "api_key": "sk-fake-upstream-key",
    }
    tenants = [{"name": n, "api_keys": [f"sha256:{'0' * 63}{i}"]} for i, n in enumerate(TENANT_KEYS)]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"models": [model], "tenants": tenants}))
    for name, code in (("client.py", CLIENT), ("more.py", MORE), ("miss.py", MISS)):
        (tmp_path / name).write_text(code)

    provider = spawn(
        ["-m", "proxy.testing.fake_provider", "--port", str(port)], child_env(), tmp_path, tmp_path / "up.log"
    )
    try:
        wait_for_http(f"http://127.0.0.1:{port}/_fake/stats")
        first = run(tmp_path, "--record", "llm.jsonl", "--", sys.executable, "client.py")
        assert first.returncode == 0, first.stderr
        assert "python ok" in first.stdout
        more = run(tmp_path, "--record", "llm.jsonl", "--", sys.executable, "more.py")
        assert more.returncode == 0, more.stderr
        calls = httpx.get(f"http://127.0.0.1:{port}/_fake/stats").json()["requests"]
    finally:
        stop(provider)
    assert calls == 4  # three recorded first, then only the new one: the file's answer was a hit
    lines = [orjson.loads(line) for line in (tmp_path / "llm.jsonl").read_bytes().splitlines()]
    assert sorted((r["endpoint"], r["tenant"]) for r in lines) == [("chat", "acme")] * 3 + [
        ("embeddings", "acme")
    ]

    # The provider is gone: every answer now comes from the file.
    python = run(tmp_path, "--replay", "llm.jsonl", "--", sys.executable, "client.py")
    assert python.returncode == 0, python.stderr
    assert "python ok" in python.stdout
    javascript = run(tmp_path, "--replay", "llm.jsonl", "--", node, str(NODE_DIR / "client.js"))
    assert javascript.returncode == 0, javascript.stdout + javascript.stderr
    assert "node ok" in javascript.stdout

    miss = run(tmp_path, "--replay", "llm.jsonl", "--", sys.executable, "miss.py")
    assert miss.returncode == 3, miss.stderr
    assert miss.stdout.startswith("no_recorded_answer No recorded answer for this request")
    assert 'messages[0].content: "ci fixture" -> "ci fixturez"' in miss.stdout
    assert (tmp_path / "llm.jsonl").read_bytes().count(b"\n") == 4  # replay never writes the file
