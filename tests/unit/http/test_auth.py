"""Tenant keys: plaintext or sha256 in config, matched by digest, never echoed."""

from __future__ import annotations

import hashlib

import pytest

from proxy.config import parse_config
from proxy.errors import AuthenticationFailed
from proxy.http.auth import authenticate_tenant, bearer_token, is_admin

CONFIG = parse_config(
    {
        "models": [{"name": "m", "litellm_model": "demo/echo"}],
        "tenants": [
            {"name": "acme", "api_keys": ["sk-acme-plain-1"]},
            {"name": "globex", "api_keys": ["sha256:" + hashlib.sha256(b"sk-globex-2").hexdigest()]},
        ],
        "admin": {"api_keys": ["sk-admin-key-1"]},
    },
    {},
)


def test_plain_and_hashed_keys() -> None:
    assert authenticate_tenant(CONFIG, "Bearer sk-acme-plain-1").name == "acme"
    assert authenticate_tenant(CONFIG, "bearer sk-globex-2").name == "globex"


@pytest.mark.parametrize(
    "header", [None, "", "Bearer", "Basic abc", "Bearer sk-wrong-key", "Bearer sk-admin-key-1"]
)
def test_rejected(header: str | None) -> None:
    with pytest.raises(AuthenticationFailed) as info:
        authenticate_tenant(CONFIG, header)
    assert info.value.status == 401
    assert "sk-" not in info.value.message


def test_admin() -> None:
    assert is_admin(CONFIG, "Bearer sk-admin-key-1")
    assert not is_admin(CONFIG, "Bearer sk-acme-plain-1")
    assert not is_admin(CONFIG, None)


def test_bearer_token() -> None:
    assert bearer_token("Bearer  abc ") == "abc"
