"""Reload the config when its file changes: an edit, or a Kubernetes ConfigMap update (which
swaps a symlink), takes effect in every worker without a signal or an admin call.

Polling, not inotify: it sees a symlink swap and works on every filesystem; reading a small
file once every few seconds costs nothing next to serving requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import Callable
from pathlib import Path

from proxy.errors import ConfigError

log = logging.getLogger("llmcp")


def file_digest(path: str | Path) -> str | None:
    """sha256 of the file's bytes; None while it cannot be read (mid-swap, say)."""
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError:
        return None


class ConfigWatcher:
    """Calls `reload` each time the file's content differs from the last version seen.

    A version is tried once: a rejected file (invalid, or changing a restart-only section)
    is logged by `reload` and not retried until the file changes again.
    """

    def __init__(self, path: str, interval_seconds: float, reload: Callable[[], object]) -> None:
        self.path = path
        self.interval = interval_seconds
        self._reload = reload
        self.seen = file_digest(path)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="llmcp-config-watch")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def check(self) -> bool:
        """Reload if the file changed since the last version seen; True when it did."""
        digest = file_digest(self.path)
        if digest is None or digest == self.seen:
            return False
        self.seen = digest
        log.info("config file %s changed; reloading", self.path)
        with contextlib.suppress(ConfigError):  # logged by reload; the old config stays
            self._reload()
        return True

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                self.check()
            except Exception:  # never let the watch die with the config still being edited
                log.exception("config watch failed; still watching")
