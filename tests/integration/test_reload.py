"""Config reload: new tenants, keys, quotas and TTLs take effect; a bad file changes nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from proxy.app import create_app
from proxy.config import load_config
from tests.conftest import ADMIN_KEY, TENANT_KEYS, auth

pytestmark = pytest.mark.anyio
CHAT = "/v1/chat/completions"
ASK = {"model": "demo", "messages": [{"role": "user", "content": "reload me"}]}


def config_dict(key_prefix: str, **extra: Any) -> dict[str, Any]:
    return {
        "redis": {"key_prefix": key_prefix},
        "models": [{"name": "demo", "litellm_model": "demo/echo"}],
        "tenants": [{"name": "acme", "api_keys": [TENANT_KEYS["acme"]]}],
        "admin": {"api_keys": [ADMIN_KEY]},
        **extra,
    }


@pytest.fixture
async def reloadable(tmp_path: Path, redis_url: str, key_prefix: str) -> Any:
    import httpx

    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config_dict(key_prefix)))
    app = create_app(load_config(path, {}), redis_url, config_path=str(path))
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://proxy") as client,
    ):
        yield client, path


async def test_reload_adds_tenants_and_changes_quotas(reloadable: Any, key_prefix: str) -> None:
    client, path = reloadable
    globex = {"Authorization": "Bearer sk-globex-test-key"}
    assert (await client.post(CHAT, json=ASK, headers=globex)).status_code == 401
    tenants = [
        {"name": "acme", "api_keys": [TENANT_KEYS["acme"]], "limits": {"requests_per_minute": 1}},
        {"name": "globex", "api_keys": [TENANT_KEYS["globex"]]},
    ]
    path.write_text(yaml.safe_dump(config_dict(key_prefix, tenants=tenants)))
    reloaded = await client.post("/admin/reload", headers=auth("admin"))
    assert reloaded.status_code == 200, reloaded.text
    assert reloaded.json()["tenants"] == 2
    assert (await client.post(CHAT, json=ASK, headers=globex)).status_code == 200
    other = {**ASK, "messages": [{"role": "user", "content": "quota"}]}
    assert (await client.post(CHAT, json=other, headers=auth())).status_code == 200
    other2 = {**ASK, "messages": [{"role": "user", "content": "quota 2"}]}
    assert (await client.post(CHAT, json=other2, headers=auth())).status_code == 429  # the new quota


@pytest.mark.parametrize(
    "broken, why",
    [
        ("models: [unclosed", "not valid YAML"),
        ("models: []\ntenants: []", "models"),
        (None, "redis.* changed"),
        ("upstream", "upstream.* changed"),
    ],
)
async def test_a_bad_config_changes_nothing(
    reloadable: Any, key_prefix: str, broken: str | None, why: str
) -> None:
    client, path = reloadable
    if broken is None:
        broken = yaml.safe_dump(config_dict("otherprefix"))
    elif broken == "upstream":
        broken = yaml.safe_dump(config_dict(key_prefix, upstream={"timeout_seconds": 5}))
    path.write_text(broken)
    response = await client.post("/admin/reload", headers=auth("admin"))
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid_config" and why in error["message"]
    assert (await client.post(CHAT, json=ASK, headers=auth())).status_code == 200  # still in force


async def test_reload_needs_an_admin_key(reloadable: Any) -> None:
    client, _ = reloadable
    assert (await client.post("/admin/reload")).status_code == 401
    assert (await client.post("/admin/reload", headers=auth())).status_code == 403
