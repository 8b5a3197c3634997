"""The yardstick: the least a Redis-backed cache can do per hit.

A raw ASGI app (no framework) that reads the body, hashes it and does one redis.asyncio
GET, answering the stored bytes. The benchmark reports the proxy's throughput as a ratio
of this app's, measured side by side in the same run.

With `--store dict` it is the yardstick for the proxy's in-process L1: a plain dict in
front of Redis (a key not in the dict is read from Redis once, then kept), so a hot key
costs a hash and a dict lookup, no round trip.

    python -m bench.reference_app --port 9200 --redis-url redis://127.0.0.1:6379/0 [--store dict]
"""

from __future__ import annotations

import argparse
import hashlib
from typing import Any

import redis.asyncio as aioredis


def build(redis_url: str, prefix: str, store: str = "redis") -> Any:
    client = aioredis.Redis.from_url(redis_url)
    local: dict[str, bytes] | None = {} if store == "dict" else None

    async def lookup(key: str) -> Any:
        if local is None:
            return await client.get(key)
        value = local.get(key)
        if value is not None:
            return value
        fetched = await client.get(key)
        if isinstance(fetched, bytes):
            local[key] = fetched
        return fetched

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await client.aclose()
            await send({"type": "lifespan.shutdown.complete"})
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        value = await lookup(f"{prefix}:{hashlib.sha256(body).hexdigest()}")
        status, payload = (200, value) if value is not None else (404, b'{"error":"miss"}')
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(payload)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": payload})

    return app


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.reference_app")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9200)
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--prefix", default="llmcpbench:ref")
    parser.add_argument(
        "--store",
        choices=("redis", "dict"),
        default="redis",
        help="dict: an in-process dict in front of Redis",
    )
    args = parser.parse_args()
    import uvicorn

    uvicorn.run(
        build(args.redis_url, args.prefix, args.store),
        host=args.host,
        port=args.port,
        loop="uvloop",
        http="httptools",
        log_level="warning",
        access_log=False,
    )


if __name__ == "__main__":
    main()
