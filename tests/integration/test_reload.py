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


async def _until(predicate: Any, timeout: float = 5.0) -> bool:
    import asyncio

    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        if await predicate():
            return True
        await asyncio.sleep(0.05)
    return False


async def test_the_file_watch_reloads_edits_and_keeps_the_old_config_on_a_bad_one(
    tmp_path: Path, redis_url: str, key_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    import httpx

    watch = {"server": {"watch_config_seconds": 0.05}}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config_dict(key_prefix, **watch)))
    app = create_app(load_config(path, {}), redis_url, config_path=str(path))
    globex = {"Authorization": "Bearer sk-globex-test-key"}
    tenants = [
        {"name": "acme", "api_keys": [TENANT_KEYS["acme"]]},
        {"name": "globex", "api_keys": [TENANT_KEYS["globex"]]},
    ]

    async def globex_status() -> int:
        return (await client.post(CHAT, json=ASK, headers=globex)).status_code

    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://proxy") as client,
    ):
        assert await globex_status() == 401
        path.write_text(yaml.safe_dump(config_dict(key_prefix, tenants=tenants, **watch)))

        async def admitted() -> bool:
            return await globex_status() == 200

        assert await _until(admitted), "the edit never took effect"

        caplog.clear()
        path.write_text("models: [unclosed")

        async def rejected() -> bool:
            return "config reload rejected" in caplog.text

        assert await _until(rejected), "the broken file was never tried"
        assert await globex_status() == 200  # the last good config stays in force
        await _sleep_ticks()
        assert caplog.text.count("config reload rejected") == 1  # a bad version is tried once

        path.write_text(yaml.safe_dump(config_dict(key_prefix, **watch)))  # globex removed

        async def removed() -> bool:
            return await globex_status() == 401

        assert await _until(removed), "the fixed file never took effect"


async def test_an_admin_reload_is_not_repeated_by_the_watch(
    tmp_path: Path, redis_url: str, key_prefix: str
) -> None:
    import httpx

    idle = {"server": {"watch_config_seconds": 3600}}  # polled by hand below, no race with a tick
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config_dict(key_prefix, **idle)))
    app = create_app(load_config(path, {}), redis_url, config_path=str(path))
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://proxy") as client,
    ):
        watcher = app.state.runtime.watcher
        assert watcher is not None and not watcher.check()  # nothing changed yet
        path.write_text(yaml.safe_dump(config_dict(key_prefix, cache={"ttl_seconds": 60}, **idle)))
        assert (await client.post("/admin/reload", headers=auth("admin"))).status_code == 200
        assert not watcher.check()  # the admin reload already put this version in force
        path.write_text(yaml.safe_dump(config_dict(key_prefix, cache={"ttl_seconds": 61}, **idle)))
        assert watcher.check()
        assert app.state.runtime.config.cache.ttl_seconds == 61


async def _sleep_ticks() -> None:
    import asyncio

    await asyncio.sleep(0.3)  # six polls of the watch
