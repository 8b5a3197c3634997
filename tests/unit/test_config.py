"""config.yaml contract: valid files load; each kind of mistake is one clear line."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest

from proxy.config import load_config, parse_config
from proxy.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


def minimal(**extra: Any) -> dict[str, Any]:
    return {
        "models": [{"name": "m", "litellm_model": "openai/gpt-4o-mini"}],
        "tenants": [{"name": "acme", "api_keys": ["sk-acme-123456"]}],
        **extra,
    }


def error_of(raw: dict[str, Any], env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(raw, env or {})
    return str(info.value)


def test_example_config_in_repo_loads_with_no_environment() -> None:
    config = load_config(REPO / "config.yaml", {})
    assert {m.name for m in config.models} >= {"demo"}
    assert config.redis.url is None
    assert config.cache.ttl_seconds == 3600


def test_env_expansion_and_default() -> None:
    raw = minimal()
    raw["tenants"][0]["api_keys"] = ["${ACME_KEY}", "${OTHER:-sk-fallback-1}"]
    config = parse_config(raw, {"ACME_KEY": "sk-from-env-1"})
    assert config.tenants[0].api_keys == ("sk-from-env-1", "sk-fallback-1")


def test_missing_env_var_names_the_field() -> None:
    raw = minimal()
    raw["models"][0]["api_key"] = "${OPENAI_API_KEY}"
    assert error_of(raw) == "config: models[0].api_key: environment variable OPENAI_API_KEY is not set"


def test_unknown_key() -> None:
    assert error_of(minimal(cache={"ttl": 5})) == "config: cache.ttl: unknown key"


def test_a_removed_key_says_what_to_do() -> None:
    message = error_of(minimal(upstream={"http_client": "httpx"}))
    assert message.startswith("config: upstream: http_client was removed") and "delete the line" in message


def test_wrong_type() -> None:
    assert "cache.ttl_seconds" in error_of(minimal(cache={"ttl_seconds": "soon"}))


def test_no_models() -> None:
    assert "models" in error_of({**minimal(), "models": []})


def test_duplicate_tenant_key() -> None:
    raw = minimal()
    raw["tenants"].append({"name": "globex", "api_keys": ["sk-acme-123456"]})
    assert "reuses an API key of tenant 'acme'" in error_of(raw)


def test_duplicate_model_name() -> None:
    raw = minimal()
    raw["models"].append({"name": "m", "litellm_model": "openai/gpt-4o"})
    assert "duplicate model name 'm'" in error_of(raw)


def test_sha256_keys_match_plaintext() -> None:
    digest = hashlib.sha256(b"sk-acme-123456").hexdigest()
    raw = minimal()
    raw["tenants"][0]["api_keys"] = [f"sha256:{digest}"]
    config = parse_config(raw, {})
    assert config.tenant_by_key[hashlib.sha256(b"sk-acme-123456").digest()].name == "acme"


def test_bad_sha256_key() -> None:
    raw = minimal()
    raw["tenants"][0]["api_keys"] = ["sha256:xyz"]
    assert "64 lowercase hex" in error_of(raw)


def test_bad_redis_scheme() -> None:
    assert "redis.url" in error_of(minimal(redis={"url": "http://x"}))


def test_limits_on_unknown_model() -> None:
    raw = minimal()
    raw["tenants"][0]["limits"] = {"models": {"gpt-9": {"requests_per_minute": 1}}}
    assert "unknown model 'gpt-9'" in error_of(raw)


@pytest.mark.parametrize(
    "limits, needle",
    [
        ({"requests_per_minute": -1}, "requests_per_minute"),
        ({"requests_per_minute": 10, "burst_requests": 0}, "burst_requests"),
        ({"burst_tokens": 5}, "burst_tokens needs tokens_per_minute"),
    ],
)
def test_invalid_limits(limits: dict[str, Any], needle: str) -> None:
    raw = minimal()
    raw["tenants"][0]["limits"] = limits
    assert needle in error_of(raw)


def test_load_config_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml", {})
    bad = tmp_path / "bad.yaml"
    bad.write_text("models: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad, {})


def model_of(**fields: Any) -> Any:
    return parse_config(minimal(models=[{"name": "m", **fields}]), {}).models[0]


@pytest.mark.parametrize(
    "litellm_model, api_base, route, via_litellm",
    [
        ("openai/gpt-4o-mini", None, "auto", False),  # OpenAI itself: direct
        ("openai/llama-3", "http://vllm:8000/v1", "auto", False),  # vLLM, Ollama's /v1
        ("text-completion-openai/gpt-3.5-turbo-instruct", None, "auto", False),
        ("anthropic/claude-3-5-haiku-latest", None, "auto", True),  # needs a translation
        ("gemini/gemini-2.0-flash", None, "auto", True),
        ("openai/gpt-4o-mini", None, "litellm", True),  # asked for
        ("openai/gpt-4o-mini", None, "direct", False),
        ("demo/echo", None, "auto", False),  # answered in-process
    ],
)
def test_route_auto_is_direct_for_openai_compatible_servers(
    litellm_model: str, api_base: str | None, route: str, via_litellm: bool
) -> None:
    model = model_of(litellm_model=litellm_model, api_base=api_base, route=route)
    assert model.via_litellm is via_litellm


def test_example_config_needs_no_litellm() -> None:
    config = load_config(REPO / "config.yaml", {})
    assert not any(m.via_litellm for m in config.models)


def test_direct_needs_an_openai_compatible_model() -> None:
    assert "route: direct needs an OpenAI-compatible" in error_of(
        minimal(
            models=[{"name": "m", "litellm_model": "anthropic/claude-3-5-haiku-latest", "route": "direct"}]
        )
    )


def test_passthrough_is_still_accepted_as_route(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING", logger="llmcp.config"):
        assert model_of(litellm_model="openai/x", api_base="http://h/v1", passthrough=True).route == "direct"
        assert model_of(litellm_model="openai/x", passthrough=False).route == "auto"
    assert [r.getMessage() for r in caplog.records] == [
        "model 'm': `passthrough: true` is deprecated; use `route: direct`",
        "model 'm': `passthrough: false` is deprecated; use `route: auto`",
    ]
    both = minimal(
        models=[{"name": "m", "litellm_model": "openai/x", "passthrough": True, "route": "direct"}]
    )
    assert "passthrough is replaced by route" in error_of(both)
    assert "route" in error_of(minimal(models=[{"name": "m", "litellm_model": "openai/x", "route": "fast"}]))


def test_cache_mode_and_record_ttl() -> None:
    raw = minimal()
    assert parse_config(raw, {}).tenants[0].cache_mode == "normal"
    raw["tenants"][0] |= {"cache_mode": "replay", "record_ttl_seconds": 90 * 24 * 3600}
    tenant = parse_config(raw, {}).tenants[0]
    assert (tenant.cache_mode, tenant.record_ttl_seconds) == ("replay", 90 * 24 * 3600)
    raw["tenants"][0]["cache_mode"] = "playback"
    assert error_of(raw).startswith(
        "config: tenants[0].cache_mode: Input should be 'normal', 'record' or 'replay'"
    )
    raw["tenants"][0] |= {"cache_mode": "record", "record_ttl_seconds": 0}
    assert "tenants[0].record_ttl_seconds" in error_of(raw)
