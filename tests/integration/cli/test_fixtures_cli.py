"""`llm-cache-proxy export` and `import` in a child process against the test Redis (a
Redis Cluster with LLMCP_TEST_CLUSTER=1): bad lines reported by number and skipped, older
key rules re-keyed, another tenant with --tenant, and exports that are byte-for-byte stable."""

from __future__ import annotations

import base64
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
import yaml

from proxy.config import parse_config
from proxy.core.apis import CHAT
from proxy.core.fixture_format import Fixture
from tests.conftest import TENANT_KEYS, UPSTREAM_BASE, own_keys
from tests.servers import child_env

MODELS = [
    {"name": "gpt-4o-mini", "litellm_model": "openai/gpt-4o-mini", "api_base": UPSTREAM_BASE},
    {"name": "emb", "litellm_model": "openai/text-embedding-3-small", "api_base": UPSTREAM_BASE},
]
DAY = 24 * 3600


@pytest.fixture
def config_file(tmp_path: Path, key_prefix: str) -> Path:
    path = tmp_path / "config.yaml"
    tenants = [{"name": n, "api_keys": [k]} for n, k in TENANT_KEYS.items()]
    path.write_text(
        yaml.safe_dump({"redis": {"key_prefix": key_prefix}, "models": MODELS, "tenants": tenants})
    )
    return path


def cli(config: Path, redis_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "proxy", *args, "--config", str(config)],
        env=child_env(REDIS_URL=redis_url),
        capture_output=True,
        text=True,
        timeout=60,
    )


def chat_line(question: str, digest: str | None = None, rules: int | None = None) -> bytes:
    request = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": question}]}
    if digest is None:
        config = parse_config(
            {"models": MODELS, "tenants": [{"name": "acme", "api_keys": ["sk-acme-xyz"]}]}, {}
        )
        digest = CHAT.digest(request, config.model_index["gpt-4o-mini"])
    answer = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "gpt-4o-mini",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": f"A: {question}"},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
    }
    meta = {"digest": digest, "prompt_tokens": 3, "completion_tokens": 2, "stored_at_ms": 1_700_000_000_000}
    line = Fixture("acme", "chat", "gpt-4o-mini", request, answer, meta).line()
    if rules is not None:
        line = orjson.dumps({**orjson.loads(line), "key_rules": rules})
    return line


def embedding_line(text: str) -> bytes:
    vector = base64.b64encode(struct.pack("<3f", 0.25, -0.5, 1.0)).decode()
    answer = {"object": "embedding", "embedding": vector}
    meta = {"tokens": 2, "stored_at_ms": 1_700_000_000_000}
    return Fixture("acme", "embeddings", "emb", {"model": "emb", "input": text}, answer, meta).line()


def test_import_skips_bad_lines_rekeys_old_ones_and_exports_stably(
    tmp_path: Path, config_file: Path, redis_url: str, redis_sync: redis.Redis, key_prefix: str
) -> None:
    fixture = tmp_path / "llm.jsonl"
    lines = [
        chat_line("current rules"),
        b'{"tenant": "acme", "endpoint": "chat", "model": "gpt-4o-mini", "request": {"messa',  # cut short
        chat_line("recorded under key rules 1", digest="0" * 64, rules=1),
        embedding_line("an item"),
        chat_line("unknown model").replace(b'"model":"gpt-4o-mini"', b'"model":"nope"'),
    ]
    fixture.write_bytes(b"\n".join(lines) + b"\n")

    loaded = cli(config_file, redis_url, "import", str(fixture))
    assert loaded.returncode == 1, loaded.stderr  # some lines were bad
    errors = loaded.stderr.splitlines()
    assert errors[0].startswith(f"{fixture}:2: not JSON")
    assert errors[1] == f"{fixture}:5: model 'nope' is not configured"
    assert errors[2] == "2 bad lines skipped (listed above)"
    assert loaded.stdout.strip() == (
        f"imported 3 entries into acme from {fixture} (1 re-keyed under the current key rules, version 2)"
    )
    keys = own_keys(redis_sync, key_prefix)
    # Three entries, each with its request beside it, 30 days (record_ttl_seconds).
    assert len([k for k in keys if b":req:" in k]) == 3 and len(keys) == 6
    assert all(29 * DAY < redis_sync.ttl(k) <= 30 * DAY for k in keys)

    first = tmp_path / "first.jsonl"
    exported = cli(config_file, redis_url, "export", "--out", str(first))
    assert exported.returncode == 0, exported.stderr
    assert "exported 3 entries (2 chat, 1 embeddings)" in exported.stderr
    out = [orjson.loads(line) for line in first.read_bytes().splitlines()]
    assert [(o["endpoint"], o["meta"]["stored_at_ms"]) for o in out] == [("chat", 1_700_000_000_000)] * 2 + [
        ("embeddings", 1_700_000_000_000)
    ]
    rekeyed = next(o for o in out if "key rules 1" in o["request"]["messages"][0]["content"])
    assert rekeyed["key_rules"] == 2 and rekeyed["meta"]["digest"] != "0" * 64

    # Deleted and imported again, the export is the same file byte for byte; and stdout
    # gives the same bytes as --out.
    redis_sync.unlink(*keys)
    again = cli(config_file, redis_url, "import", str(first))
    assert again.returncode == 0 and "(0 re-keyed" in again.stdout, again.stderr
    second = cli(config_file, redis_url, "export")
    assert second.stdout.encode() == first.read_bytes()


def test_import_into_another_tenant_and_export_filters(
    tmp_path: Path, config_file: Path, redis_url: str, redis_sync: redis.Redis, key_prefix: str
) -> None:
    fixture = tmp_path / "llm.jsonl"
    fixture.write_bytes(chat_line("for globex") + b"\n" + embedding_line("vector") + b"\n")
    loaded = cli(config_file, redis_url, "import", str(fixture), "--tenant", "globex", "--ttl", "600")
    assert loaded.returncode == 0, loaded.stderr
    assert "into globex" in loaded.stdout
    keys = own_keys(redis_sync, key_prefix)
    assert keys and all(b":v1:globex:" in k for k in keys)
    assert all(590 < redis_sync.ttl(k) <= 600 for k in keys)

    acme = cli(config_file, redis_url, "export", "--tenant", "acme")
    assert acme.returncode == 0 and acme.stdout == ""
    chat_only = cli(config_file, redis_url, "export", "--tenant", "globex", "--endpoint", "chat")
    rows: list[dict[str, Any]] = [orjson.loads(line) for line in chat_only.stdout.splitlines()]
    assert [(r["tenant"], r["endpoint"]) for r in rows] == [("globex", "chat")]
    by_model = cli(config_file, redis_url, "export", "--model", "emb")
    assert [orjson.loads(line)["model"] for line in by_model.stdout.splitlines()] == ["emb"]

    unknown = cli(config_file, redis_url, "import", str(fixture), "--tenant", "initech")
    assert unknown.returncode == 1 and "no tenant named 'initech'" in unknown.stderr
