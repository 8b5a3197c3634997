"""Which spend budgets a request must fit in, their Redis keys, and how they read in headers.

Pure: the budgets follow from the tenant's config, the end user and the time (UTC
calendar day and month); `proxy.store.ratelimit` reserves and settles them in Redis in
the same Lua call as the token buckets. Money here is integer nano-dollars (USD x 10^9).

One key per budget window, hash-tagged by tenant like the buckets (one Cluster slot per
request), expiring a day after its window ends (docs/keyspace.md):

    <prefix>:v1:{<tenant>}:budget:t:d:<YYYYMMDD>          the tenant, one UTC day
    <prefix>:v1:{<tenant>}:budget:t:m:<YYYYMM>            the tenant, one UTC month
    <prefix>:v1:{<tenant>}:budget:u:<user hash>:d:<YYYYMMDD>   an end user, one day
    <prefix>:v1:{<tenant>}:budget:u:<user hash>:m:<YYYYMM>     an end user, one month
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Literal

from proxy.config import TenantConfig, UserBudget
from proxy.core.keys import KEY_VERSION
from proxy.core.limits import end_user_id
from proxy.core.prices import NANO_PER_USD

Window = Literal["day", "month"]
# Keys outlive their window by this much: a settlement of a request reserved just before
# midnight lands after it, and yesterday's spend stays readable for a day.
KEY_MARGIN_SECONDS = 86400


@dataclass(frozen=True, slots=True)
class Budget:
    key: str
    tenant: str
    scope: str  # how a 429 names it: "tenant acme", "end user of tenant acme"
    window: Window
    limit: int  # nano-dollars
    alert: int  # nano-dollars; 0 = no alert
    resets_at: int  # unix seconds: the window's end

    @property
    def expire_at_ms(self) -> int:
        return (self.resets_at + KEY_MARGIN_SECONDS) * 1000


def nano(usd: float) -> int:
    """USD as integer nano-dollars (via the decimal text: 0.1 is 100000000 exactly)."""
    return int(Decimal(repr(float(usd))) * NANO_PER_USD)


def usd(nano_dollars: int) -> str:
    """Nano-dollars as a USD amount for headers and messages: 6 decimals, no float noise."""
    return f"{Decimal(nano_dollars) / NANO_PER_USD:.6f}"


def window_ends(now: float) -> tuple[str, int, str, int]:
    """(day id, day end, month id, month end) of the UTC calendar windows `now` is in."""
    t = datetime.fromtimestamp(now, UTC)
    day_start = datetime(t.year, t.month, t.day, tzinfo=UTC)
    month_end = datetime(t.year + (t.month == 12), t.month % 12 + 1, 1, tzinfo=UTC)
    return (
        f"{t.year:04d}{t.month:02d}{t.day:02d}",
        int(day_start.timestamp()) + 86400,
        f"{t.year:04d}{t.month:02d}",
        int(month_end.timestamp()),
    )


def _scope_budgets(
    base: str, tenant: str, scope: str, budget: UserBudget, alert_at: float | None, now: float
) -> list[Budget]:
    day, day_end, month, month_end = window_ends(now)
    out = []
    for window, amount, wid, end in (
        ("day", budget.usd_per_day, day, day_end),
        ("month", budget.usd_per_month, month, month_end),
    ):
        if amount is None:
            continue
        limit = nano(amount)
        alert = math.ceil(limit * alert_at) if alert_at else 0
        out.append(Budget(f"{base}:{window[0]}:{wid}", tenant, scope, window, limit, alert, end))  # type: ignore[arg-type]
    return out


def plan_budgets(prefix: str, tenant: TenantConfig, end_user: str | None, now: float) -> tuple[Budget, ...]:
    """Every budget this request must fit in (tenant day/month, end user day/month); empty
    for a tenant without a budget."""
    budget = tenant.budget
    if budget is None:
        return ()
    base = f"{prefix}:{KEY_VERSION}:{{{tenant.name}}}:budget"
    out = _scope_budgets(f"{base}:t", tenant.name, f"tenant {tenant.name}", budget, budget.alert_at, now)
    if budget.per_user is not None and end_user:
        out += _scope_budgets(
            f"{base}:u:{end_user_id(end_user)}",
            tenant.name,
            f"end user of tenant {tenant.name}",
            budget.per_user,
            budget.alert_at,
            now,
        )
    return tuple(out)


def tightest(budgets: tuple[Budget, ...], spent: list[int]) -> int | None:
    """Index of the budget with the least left (None when there is none)."""
    if not budgets:
        return None
    return min(range(len(budgets)), key=lambda i: budgets[i].limit - spent[i])


def budget_headers(budgets: tuple[Budget, ...], spent: list[int], now: float) -> dict[str, str]:
    """`x-budget-limit-usd`, `x-budget-remaining-usd` and `x-budget-reset` (a duration like
    6h12m0s) of the budget with the least left."""
    i = tightest(budgets, spent)
    if i is None:
        return {}
    b = budgets[i]
    return {
        "x-budget-limit-usd": usd(b.limit),
        "x-budget-remaining-usd": usd(max(0, b.limit - spent[i])),
        "x-budget-reset": hms(b.resets_at - now),
    }


def hms(seconds: float) -> str:
    """A duration as Go prints one (OpenAI's reset format for long windows): 6h12m0s."""
    total = max(0, math.ceil(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"
