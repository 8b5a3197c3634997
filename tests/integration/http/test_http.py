"""HTTP surface: auth, routing, body limits and bad input all answer in the OpenAI shape."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import auth

pytestmark = pytest.mark.anyio
CHAT = "/v1/chat/completions"


def assert_error(response: Any, status: int, code: str | None = None, param: str | None = None) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    if code is not None:
        assert error["code"] == code
    if param is not None:
        assert error["param"] == param


async def test_auth_required(make_client: Any) -> None:
    client = await make_client()
    assert_error(await client.post(CHAT, json={}), 401, "invalid_api_key")
    assert_error(
        await client.post(CHAT, json={}, headers={"Authorization": "Bearer sk-nope-nope"}),
        401,
        "invalid_api_key",
    )
    assert_error(await client.get("/v1/models"), 401)


async def test_bad_bodies(make_client: Any) -> None:
    client = await make_client()
    assert_error(await client.post(CHAT, content=b"{nope", headers=auth()), 400, "invalid_json")
    assert_error(await client.post(CHAT, json={"messages": []}, headers=auth()), 400, param="model")
    assert_error(await client.post(CHAT, json={"model": "demo"}, headers=auth()), 400, param="messages")
    assert_error(
        await client.post(
            CHAT, json={"model": "nope", "messages": [{"role": "user", "content": "x"}]}, headers=auth()
        ),
        404,
        "model_not_found",
        "model",
    )
    assert_error(
        await client.post(
            CHAT,
            json={"model": "demo", "messages": [{"role": "user", "content": "x"}], "temperature": "warm"},
            headers=auth(),
        ),
        400,
        param="temperature",
    )


async def test_body_size_limit(make_client: Any) -> None:
    client = await make_client(server={"max_body_bytes": 2048})
    big = {"model": "demo", "messages": [{"role": "user", "content": "x" * 4000}]}
    assert_error(await client.post(CHAT, json=big, headers=auth()), 413, "request_too_large")

    async def chunked() -> Any:
        for _ in range(10):
            yield b"x" * 1000

    assert_error(await client.post(CHAT, content=chunked(), headers=auth()), 413, "request_too_large")
    # The other routes that read a body hold to the same limit, declared or streamed.
    for path in ("/v1/cache/flags", f"/admin/review/{'0' * 64}/decision"):
        big_flag = {"key": "0" * 64, "reason": "x" * 4000}
        assert_error(await client.post(path, json=big_flag, headers=auth()), 413, "request_too_large")
        assert_error(await client.post(path, content=chunked(), headers=auth()), 413, "request_too_large")


async def test_more_than_one_authorization_header_is_refused_everywhere(make_client: Any) -> None:
    client = await make_client()
    tenant, admin = auth()["Authorization"], auth("admin")["Authorization"]
    routes = (("POST", CHAT), ("GET", "/stats"), ("GET", "/v1/models"), ("POST", "/v1/cache/flags"))
    for method, path in routes:
        for pair in ((tenant, admin), (admin, tenant), (tenant, tenant)):
            headers = [("authorization", pair[0]), ("authorization", pair[1])]
            response = await client.request(method, path, headers=headers, json={})
            assert_error(response, 400)
            assert "more than one Authorization header" in response.json()["error"]["message"]


async def test_echoed_values_are_cut_short(make_client: Any) -> None:
    client = await make_client()
    body = {"model": "m" * (1 << 20), "messages": [{"role": "user", "content": "hi"}]}
    response = await client.post(CHAT, json=body, headers=auth())
    assert response.status_code in (400, 404)
    assert len(response.json()["error"]["message"]) <= 2000
    assert len(response.content) < 3000


async def test_routing_errors(make_client: Any) -> None:
    client = await make_client()
    assert_error(await client.get("/v1/nothing-here"), 404, "not_found")
    assert_error(await client.get(CHAT, headers=auth()), 405, "method_not_allowed")


async def test_models_list(make_client: Any) -> None:
    client = await make_client()
    listing = (await client.get("/v1/models", headers=auth())).json()
    assert listing["object"] == "list"
    assert [m["id"] for m in listing["data"]] == ["demo", "gpt-4o-mini"]
    assert (await client.get("/v1/models/demo", headers=auth())).json()["id"] == "demo"
    assert_error(await client.get("/v1/models/nope", headers=auth()), 404, "model_not_found")


async def test_health_and_readiness(make_client: Any) -> None:
    client = await make_client()
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    assert (await client.get("/readyz")).json()["redis"] == "ok"


async def test_request_id_is_echoed_or_made(make_client: Any) -> None:
    client = await make_client()
    body = {"model": "demo", "messages": [{"role": "user", "content": "id"}]}
    given = await client.post(CHAT, json=body, headers={**auth(), "X-Request-Id": "trace-42_a"})
    assert given.headers["x-request-id"] == "trace-42_a"
    made = await client.post(CHAT, json=body, headers={**auth(), "X-Request-Id": "bad id <script>"})
    assert made.headers["x-request-id"] != "bad id <script>" and len(made.headers["x-request-id"]) == 16
    error = await client.post(CHAT, json={}, headers=auth())
    assert error.status_code == 400 and "x-request-id" in error.headers


async def test_every_request_gets_one_access_line(make_client: Any, caplog: pytest.LogCaptureFixture) -> None:
    import logging

    client = await make_client()
    with caplog.at_level(logging.INFO, logger="llmcp.access"):
        assert (await client.get("/v1/models", headers=auth())).status_code == 200
        assert (await client.get("/healthz")).status_code == 200
        assert (await client.post(CHAT, json={}, headers=auth())).status_code == 400
    lines = [r for r in caplog.records if r.name in ("llmcp.access", "uvicorn.access")]
    assert [(r.name, r.path, r.status) for r in lines] == [  # type: ignore[attr-defined]
        ("llmcp.access", "/v1/models", 200),
        ("llmcp.access", "/healthz", 200),
        ("llmcp.access", CHAT, 400),
    ]
    assert not any("sk-acme-test-key" in r.getMessage() for r in lines)


@pytest.mark.parametrize("depth", [100, 260, 1000, 100_000])
async def test_deep_nesting_is_a_400_on_every_endpoint(make_client: Any, depth: int) -> None:
    client = await make_client()
    deep = "[" * depth + "1" + "]" * depth
    bodies = {
        CHAT: '{"model": "demo", "messages": [{"role": "user", "content": "hi"}], "x": %s}',
        "/v1/completions": '{"model": "demo", "prompt": "hi", "x": %s}',
        "/v1/responses": '{"model": "demo", "input": "hi", "x": %s}',
        "/v1/embeddings": '{"model": "demo", "input": "hi", "x": %s}',
        "/v1/cache/flags": '{"key": "k", "reason": %s}',
    }
    for path, template in bodies.items():
        response = await client.post(path, content=(template % deep).encode(), headers=auth())
        assert_error(response, 400, "nesting_too_deep")
