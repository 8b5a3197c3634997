"""Budget planning: windows (UTC day and month), keys, amounts in nano-dollars, headers."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from proxy.config import parse_config
from proxy.core.budgets import budget_headers, hms, nano, plan_budgets, usd, window_ends


def at(*parts: int) -> float:
    return datetime(*parts, tzinfo=UTC).timestamp()  # type: ignore[misc]


def tenant(budget: dict[str, object]) -> object:
    config = parse_config(
        {
            "models": [{"name": "d", "litellm_model": "demo/echo"}],
            "tenants": [{"name": "acme", "api_keys": ["sk-acme-key-1"], "budget": budget}],
        },
        {},
    )
    return config.tenants[0]


def test_windows_roll_over_at_utc_midnight_and_month_end() -> None:
    assert window_ends(at(2026, 12, 31, 23, 59, 59)) == (
        "20261231",
        int(at(2027, 1, 1)),
        "202612",
        int(at(2027, 1, 1)),
    )
    assert window_ends(at(2027, 1, 1))[0::2] == ("20270101", "202701")
    assert window_ends(at(2028, 2, 29, 12))[1] == int(at(2028, 3, 1))


def test_plan_keys_share_the_tenant_hash_tag_and_hash_the_end_user() -> None:
    t = tenant({"usd_per_day": 25, "usd_per_month": 500, "per_user": {"usd_per_day": 1}, "alert_at": 0.8})
    plans = plan_budgets("llmcp", t, "alice@example.com", at(2026, 12, 3, 6))  # type: ignore[arg-type]
    assert [b.key.split(":", 3)[3] for b in plans] == [
        "budget:t:d:20261203",
        "budget:t:m:202612",
        f"budget:u:{plans[2].key.split(':')[5]}:d:20261203",
    ]
    assert all(b.key.startswith("llmcp:v1:{acme}:") for b in plans)
    assert "alice" not in plans[2].key
    assert [b.limit for b in plans] == [25 * 10**9, 500 * 10**9, 10**9]
    assert [b.alert for b in plans] == [20 * 10**9, 400 * 10**9, 8 * 10**8]
    assert plans[0].expire_at_ms == (int(at(2026, 12, 4)) + 86400) * 1000
    assert plan_budgets("llmcp", t, None, at(2026, 12, 3)).__len__() == 2  # type: ignore[arg-type]


@pytest.mark.parametrize(("amount", "expected"), [(0.1, 100_000_000), (25, 25 * 10**9), (0.000001, 1000)])
def test_usd_as_integer_nano_dollars(amount: float, expected: int) -> None:
    assert nano(amount) == expected
    assert usd(expected) == f"{amount:.6f}"


def test_headers_name_the_budget_with_the_least_left() -> None:
    t = tenant({"usd_per_day": 25, "usd_per_month": 500})
    now = at(2026, 12, 3, 17, 48)
    plans = plan_budgets("p", t, None, now)  # type: ignore[arg-type]
    assert budget_headers(plans, [nano(1), nano(490)], now) == {
        "x-budget-limit-usd": "500.000000",
        "x-budget-remaining-usd": "10.000000",
        "x-budget-reset": "678h12m0s",
    }
    assert budget_headers(plans, [nano(30), 0], now)["x-budget-remaining-usd"] == "0.000000"
    assert budget_headers((), [], now) == {}


@pytest.mark.parametrize(("seconds", "text"), [(0, "0s"), (59.2, "1m0s"), (61, "1m1s"), (22320, "6h12m0s")])
def test_go_style_durations(seconds: float, text: str) -> None:
    assert hms(seconds) == text
