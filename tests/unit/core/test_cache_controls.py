"""Cache controls per tenant mode: record stores longer and keeps the request; replay
always looks up and never stores."""

from __future__ import annotations

from typing import Any

import pytest

from proxy.config import parse_config
from proxy.core.cache_controls import CacheControls, RequestMeta, cache_controls
from proxy.errors import InvalidRequest

DAY = 24 * 3600


def controls(mode: str, **headers: Any) -> CacheControls:
    config = parse_config(
        {
            "models": [{"name": "m", "litellm_model": "openai/gpt-4o-mini"}],
            "tenants": [{"name": "t", "api_keys": ["sk-tenant-1"], "cache_mode": mode}],
        },
        {},
    )
    return cache_controls(RequestMeta(**headers), config, config.tenants[0], config.models[0])


def test_normal_mode() -> None:
    assert controls("normal") == CacheControls(lookup=True, store=True, ttl=3600, keep_request=False)


def test_record_stores_for_the_record_ttl_past_the_cache_cap_and_keeps_the_request() -> None:
    assert controls("record") == CacheControls(lookup=True, store=True, ttl=30 * DAY, keep_request=True)
    assert controls("record", cache_ttl="60").ttl == 60
    assert controls("record", cache_ttl=str(90 * DAY)).ttl == 30 * DAY  # capped by record_ttl_seconds
    assert not controls("record", cache_ttl="0").store
    assert not controls("record", cache_control="no-store").store


def test_replay_always_looks_up_and_never_stores() -> None:
    for headers in ({}, {"cache_control": "no-cache"}, {"cache_control": "no-store"}):
        got = controls("replay", **headers)
        assert (got.lookup, got.store, got.keep_request) == (True, False, False)
    with pytest.raises(InvalidRequest):
        controls("replay", cache_ttl="soon")
