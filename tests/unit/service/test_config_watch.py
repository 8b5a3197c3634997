"""The config file watch: a changed file is reloaded once, a rejected one is not retried."""

from __future__ import annotations

from pathlib import Path

from proxy.errors import ConfigError
from proxy.service.config_watch import ConfigWatcher, file_digest


def test_each_version_is_tried_once_even_when_rejected(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("a: 1")
    tried: list[str] = []

    def reload() -> None:
        tried.append(path.read_text())
        if "bad" in tried[-1]:
            raise ConfigError("rejected")

    watcher = ConfigWatcher(str(path), 3600, reload)
    assert not watcher.check()  # the version it started with
    path.write_text("bad: [")
    assert watcher.check() and not watcher.check()
    path.write_text("a: 2")
    assert watcher.check() and not watcher.check()
    assert tried == ["bad: [", "a: 2"]


def test_a_file_being_swapped_is_skipped_not_fatal(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("a: 1")
    watcher = ConfigWatcher(str(path), 3600, lambda: None)
    path.unlink()
    assert file_digest(path) is None and not watcher.check()
    path.write_text("a: 1")
    assert not watcher.check()  # the same content back: nothing to reload
