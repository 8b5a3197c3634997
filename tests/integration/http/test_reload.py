"""Config reload: new tenants, keys, quotas and TTLs take effect; a bad file changes nothing."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from proxy.config import load_config
from proxy.http.app import FastPath, create_app
from tests.conftest import ADMIN_KEY, TENANT_KEYS, auth, eventually

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


@asynccontextmanager
async def serving(
    path: Path, redis_url: str, key_prefix: str, **extra: Any
) -> AsyncIterator[tuple[httpx.AsyncClient, FastPath]]:
    """Write a config to `path`, then serve it (started from that file, so it can reload)."""
    path.write_text(yaml.safe_dump(config_dict(key_prefix, **extra)))
    app = create_app(load_config(path, {}), redis_url, config_path=str(path))
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://proxy") as client,
    ):
        yield client, app


@pytest.fixture
async def reloadable(tmp_path: Path, redis_url: str, key_prefix: str) -> Any:
    path = tmp_path / "config.yaml"
    async with serving(path, redis_url, key_prefix) as (client, _):
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


async def test_the_file_watch_reloads_edits_and_keeps_the_old_config_on_a_bad_one(
    tmp_path: Path, redis_url: str, key_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    watch = {"server": {"watch_config_seconds": 0.05}}
    path = tmp_path / "config.yaml"
    globex = {"Authorization": "Bearer sk-globex-test-key"}
    tenants = [
        {"name": "acme", "api_keys": [TENANT_KEYS["acme"]]},
        {"name": "globex", "api_keys": [TENANT_KEYS["globex"]]},
    ]
    async with serving(path, redis_url, key_prefix, **watch) as (client, _):

        async def globex_status() -> int:
            return (await client.post(CHAT, json=ASK, headers=globex)).status_code

        async def admitted() -> bool:
            return await globex_status() == 200

        async def rejected() -> bool:
            return "config reload rejected" in caplog.text

        async def removed() -> bool:
            return await globex_status() == 401

        assert await globex_status() == 401
        path.write_text(yaml.safe_dump(config_dict(key_prefix, tenants=tenants, **watch)))
        await eventually(admitted, 5, "the edit never took effect")

        caplog.clear()
        path.write_text("models: [unclosed")
        await eventually(rejected, 5, "the broken file was never tried")
        assert await globex_status() == 200  # the last good config stays in force
        await asyncio.sleep(0.3)  # six polls of the watch
        assert caplog.text.count("config reload rejected") == 1  # a bad version is tried once

        path.write_text(yaml.safe_dump(config_dict(key_prefix, **watch)))  # globex removed
        await eventually(removed, 5, "the fixed file never took effect")


async def test_an_admin_reload_is_not_repeated_by_the_watch(
    tmp_path: Path, redis_url: str, key_prefix: str
) -> None:
    idle = {"server": {"watch_config_seconds": 3600}}  # polled by hand below, no race with a tick
    path = tmp_path / "config.yaml"
    async with serving(path, redis_url, key_prefix, **idle) as (client, app):
        watcher = app.state.runtime.watcher
        assert watcher is not None and not watcher.check()  # nothing changed yet
        path.write_text(yaml.safe_dump(config_dict(key_prefix, cache={"ttl_seconds": 60}, **idle)))
        assert (await client.post("/admin/reload", headers=auth("admin"))).status_code == 200
        assert not watcher.check()  # the admin reload already put this version in force
        path.write_text(yaml.safe_dump(config_dict(key_prefix, cache={"ttl_seconds": 61}, **idle)))
        assert watcher.check()
        assert app.state.runtime.config.cache.ttl_seconds == 61
