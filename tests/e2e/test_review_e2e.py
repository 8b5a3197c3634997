"""The review workflow as a team uses it: the openai SDK against two worker processes with
an L1 each, a flag over HTTP, the CLI, and the stats page clicked in headless Chromium."""

from __future__ import annotations

import json
import shutil
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis

from tests.conftest import ADMIN_KEY, TENANT_KEYS
from tests.e2e.browser import stats_page
from tests.e2e.stack import Stack, cli, start_stack, stop_stack

pytestmark = pytest.mark.e2e
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
ACME = {"Authorization": f"Bearer {TENANT_KEYS['acme']}"}


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, redis_url: str, redis_sync: redis.Redis
) -> Iterator[Stack]:
    stack = start_stack(
        tmp_path_factory.mktemp("e2e-review"),
        redis_url,
        workers=2,
        admin={"api_keys": [ADMIN_KEY]},
        cache={"l1": {"enabled": True}},
    )
    yield stack
    stop_stack(stack, redis_sync)


def ask(stack: Stack, prompt: str) -> Any:
    return stack.client("acme").chat.completions.with_raw_response.create(
        model="fake", messages=[{"role": "user", "content": prompt}]
    )


def test_a_flag_stops_serving_on_every_worker_and_the_cli_decides(stack: Stack, redis_url: str) -> None:
    prompt = f"review {uuid.uuid4()}"
    first = ask(stack, prompt)
    digest = first.headers["x-cache-key"]
    assert first.headers["x-cache"] == "MISS"
    # Warm both workers' L1 with the answer.
    assert {ask(stack, prompt).headers["x-cache"] for _ in range(10)} == {"HIT"}
    calls = stack.upstream_calls()

    flagged = httpx.post(f"{stack.base_url}/cache/flags", json={"key": digest, "reason": "bad"}, headers=ACME)
    assert flagged.status_code == 201, flagged.text
    # Within one request, on whichever worker: a miss that refreshes the entry, then hits.
    assert ask(stack, prompt).headers["x-cache"] == "MISS"
    assert {ask(stack, prompt).headers["x-cache"] for _ in range(10)} == {"HIT"}
    assert stack.upstream_calls() == calls + 1

    listed = cli(stack, "review", "list", "--tenant", "acme", "--json", redis_url=redis_url)
    assert listed.returncode == 0, listed.stderr
    (item,) = json.loads(listed.stdout)["data"]
    assert item["id"] == digest and item["reason"] == "bad" and item["quarantined"]
    shown = cli(stack, "review", "show", digest, "--answer", "--request", redis_url=redis_url)
    assert shown.returncode == 0, shown.stderr
    detail = json.loads(shown.stdout)
    assert detail["request"]["messages"][0]["content"] == prompt and detail["answer"]["choices"]

    decided = cli(
        stack, "review", "decide", digest, "reject", "--tenant", "acme", "--by", "ana", redis_url=redis_url
    )
    assert decided.returncode == 0, decided.stderr
    assert f"{digest}: rejected by ana (cli)" in decided.stdout
    again = cli(stack, "review", "decide", digest, "approve", "--tenant", "acme", redis_url=redis_url)
    assert again.returncode == 1 and "decided (rejected)" in again.stderr
    # The rejected decision purged the (refreshed) entry on every worker too.
    assert ask(stack, prompt).headers["x-cache"] == "MISS"


@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian chromium is not installed")
def test_the_stats_page_lists_and_pins(stack: Stack) -> None:
    digest = ask(stack, f"page {uuid.uuid4()}").headers["x-cache-key"]
    other = ask(stack, f"page {uuid.uuid4()}").headers["x-cache-key"]
    with stats_page(stack) as page:
        # Flag one through the page's form, the other over the API.
        page.fill("#flag-key", digest)
        page.fill("#flag-tenant", "acme")
        page.fill("#flag-reason", "from the page")
        page.click("#flag-form button")
        page.wait_for_selector(f"tr[data-id='{digest}']")
        httpx.post(f"{stack.base_url}/cache/flags", json={"key": other}, headers=ACME).raise_for_status()
        page.click(f"tr[data-id='{digest}'] button[data-decision='show']")
        page.wait_for_function("document.getElementById('review-detail').textContent.includes('answer')")
        # Each flag's own copy is shown, with the reason it was flagged for.
        detail = page.text_content("#review-detail") or ""
        assert '"flagged_answers"' in detail and '"reason": "from the page"' in detail
        page.click(f"tr[data-id='{digest}'] button[data-decision='pin']")
        page.wait_for_selector(f"tr[data-id='{digest}']", state="detached")
        assert page.locator(f"tr[data-id='{other}']").count() == 1  # reloaded with the new flag
        assert "pinned by admin:" in page.text_content("#review-detail")
        assert ADMIN_KEY not in page.content()
    item = httpx.get(f"{stack.base_url[:-3]}/admin/review/{digest}?tenant=acme", headers=ADMIN).json()
    assert item["state"] == "pinned" and item["reason"] == "from the page"
