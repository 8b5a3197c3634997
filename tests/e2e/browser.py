"""The stats page in the machine's headless Chromium (Debian's package), through playwright."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from tests.conftest import ADMIN_KEY
from tests.e2e.stack import Stack


@contextmanager
def stats_page(stack: Stack, width: int = 1280, height: int = 900) -> Iterator[Any]:
    """A page on the stack's /stats/ui, logged in with the admin key, once it shows its data."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=shutil.which("chromium"),
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-sync"],
        )
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.goto(f"{stack.base_url[:-3]}/stats/ui#key={ADMIN_KEY}")
            page.wait_for_selector("body[data-ready='1']")
            yield page
        finally:
            browser.close()
