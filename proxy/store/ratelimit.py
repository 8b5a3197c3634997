"""Per-tenant token buckets and spend budgets in Redis, checked before a miss goes upstream.

A request passes every bucket that applies to it (tenant, the model inside the tenant,
the end user inside the tenant; requests and tokens) and fits in every budget (tenant
day and month, end user day and month) in one Lua call, or nothing is debited. Tokens
and money are reserved up front (prompt estimate + max completion, at the model's
prices) and settled with the real usage afterwards: refunded when the answer was
shorter, debited when it was longer. The settling runs in its own task, so a client that
hangs up cannot leak a reservation.

Budget spend is also remembered per process (`known_spent`), so a cache hit can carry the
`x-budget-*` headers without a second round trip.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import os
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from proxy.config import Config, TenantConfig
from proxy.core.budgets import Budget, budget_headers, hms, plan_budgets, usd
from proxy.core.limits import Bucket, BucketPlanner, duration, end_user_id, rate_headers
from proxy.errors import BudgetExceeded, RateLimited, ServiceUnavailable, StoreUnavailable
from proxy.store.connection import RedisGate, script

log = logging.getLogger("llmcp.ratelimit")
budget_log = logging.getLogger("llmcp.budget")

_ALLOWED, _WAITED, _DENIED, _TOO_LARGE, _SPENT, _OVER_BUDGET = 1, 2, 0, -1, -2, -3
_MAX_KNOWN = 4096  # budget windows whose spend this process remembers (LRU)
_KNOWN_FRESH_S = 5.0  # older than this, a hit refreshes it in the background
# A budget settlement that found Redis unavailable is retried after these delays (seconds):
# retries are safe for budgets (settled once per reservation id), not for buckets.
_SETTLE_RETRIES_S = (0.2, 0.5, 1.0, 2.0, 4.0, 8.0)
_DRAIN_TIMEOUT_S = 10.0
AlertSink = Callable[[Budget, int], None]


@dataclass(slots=True)
class Reservation:
    """What a request took; `settle` gives back or takes the difference later."""

    buckets: tuple[Bucket, ...]
    costs: list[int]
    levels: list[int]
    resets_ms: list[int]
    budgets: tuple[Budget, ...] = ()
    amount: int = 0  # nano-dollars reserved in each budget
    spent: list[int] = field(default_factory=list)  # each budget's spend after the reservation
    rid: str = ""  # the reservation's id in the budgets (settled once, by adjust.lua)


@dataclass(frozen=True, slots=True)
class BudgetSettlement:
    """What settling a reservation does to its budgets: `delta` nano-dollars added to the
    spend (negative: a refund), `actual` to the settled spend; applied once per `rid`."""

    budgets: tuple[Budget, ...]
    rid: str
    delta: int
    actual: int


class RateLimiter:
    """The buckets and budgets of one config generation, over one set of scripts."""

    def __init__(
        self,
        gate: RedisGate,
        config: Config,
        on_alert: AlertSink | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._gate = gate
        self._config = config
        self._acquire = script(gate.client, "acquire.lua")
        self._adjust = script(gate.client, "adjust.lua")
        self._pending: set[asyncio.Task[list[int]]] = set()
        self._planner = BucketPlanner(config.redis.key_prefix)
        self._on_alert = on_alert
        self.clock = clock
        # budget key -> (spend in nano-dollars, when it was read): the hit path's headers
        self._known: OrderedDict[str, tuple[int, float]] = OrderedDict()
        self._refreshing: set[str] = set()
        self._budget_plans: OrderedDict[tuple[str, str | None, int], tuple[Budget, ...]] = OrderedDict()
        prefix = os.urandom(6).hex()  # once: the generator would run os.urandom for every id
        self._rids = (f"{prefix}.{n}" for n in itertools.count())  # unique per process

    def renewed(self, config: Config) -> RateLimiter:
        """A limiter for a reloaded config, sharing this one's scripts, pending settlements
        and known budget spend."""
        fresh = RateLimiter.__new__(RateLimiter)
        fresh._gate, fresh._config = self._gate, config
        fresh._acquire, fresh._adjust, fresh._pending = self._acquire, self._adjust, self._pending
        fresh._planner = BucketPlanner(config.redis.key_prefix)
        fresh._on_alert, fresh.clock, fresh._known = self._on_alert, self.clock, self._known
        fresh._refreshing = self._refreshing
        fresh._budget_plans = OrderedDict()  # the budgets may have changed
        fresh._rids = self._rids
        return fresh

    def plan(self, tenant: TenantConfig, model: str, end_user: str | None) -> tuple[Bucket, ...]:
        """Every bucket this request must pass; empty for an unlimited tenant."""
        return self._planner.plan(tenant, model, end_user)

    def plan_budgets(self, tenant: TenantConfig, end_user: str | None) -> tuple[Budget, ...]:
        """Every budget this request must fit in, in the current windows; empty without a
        budget. Memoized per (tenant, end user, UTC day) in a bounded LRU: windows change
        only at midnight (a month's end is a day's)."""
        budget = tenant.budget
        if budget is None:
            return ()
        now = self.clock()
        user = end_user_id(end_user) if budget.per_user is not None and end_user else None
        memo = (tenant.name, user, int(now // 86400))
        plan = self._budget_plans.get(memo)
        if plan is None:
            plan = plan_budgets(self._config.redis.key_prefix, tenant, end_user, now)
            self._budget_plans[memo] = plan
            if len(self._budget_plans) > _MAX_KNOWN:
                self._budget_plans.popitem(last=False)
        return plan

    async def acquire(
        self,
        buckets: tuple[Bucket, ...],
        tokens: int,
        now_us: int | None = None,
        budgets: tuple[Budget, ...] = (),
        amount: int = 0,
    ) -> Reservation | None:
        """Take one request and `tokens` from every bucket and reserve `amount`
        nano-dollars in every budget, or raise RateLimited / BudgetExceeded.

        Returns None when Redis is unavailable and `rate_limit.on_redis_error` is open.
        """
        policy = self._config.rate_limit
        costs = [1 if b.kind == "requests" else tokens for b in buckets]
        max_wait = policy.max_wait_ms if policy.on_limit == "wait" else 0
        args: list[Any] = [max_wait, "" if now_us is None else now_us]
        for bucket, cost in zip(buckets, costs, strict=True):
            args += [bucket.per_minute, bucket.capacity, cost]
        rid = next(self._rids) if budgets and amount else ""
        for budget in budgets:
            args += [budget.limit, amount, budget.expire_at_ms, rid]
        keys = [b.key for b in buckets] + [b.key for b in budgets]
        try:
            reply = await self._gate.script(self._acquire, keys, args)
        except StoreUnavailable as exc:
            if rid:  # the script may have run before the reply was lost: release, once at most
                self._settle_soon((), [], BudgetSettlement(budgets, rid, -amount, 0))
            if policy.on_redis_error == "closed":
                raise ServiceUnavailable(
                    "The rate limiter is unavailable and this proxy fails closed; try again shortly."
                ) from exc
            log.warning("rate limiter unavailable; failing open for this request")
            return None
        status, wait_ms, decider = int(reply[0]), int(reply[1]), int(reply[2])
        n = len(buckets)
        levels = [int(v) for v in reply[3 : 3 + 2 * n : 2]]
        resets = [int(v) for v in reply[4 : 4 + 2 * n : 2]]
        spent = [int(v) for v in reply[3 + 2 * n :]]
        self._note_budgets(budgets, spent, [0] * len(budgets))
        if status in (_SPENT, _OVER_BUDGET):
            j = decider - n - 1
            headers = rate_headers(buckets, levels, resets)
            raise self._budget_denial(status, budgets[j], amount, spent, budgets, headers)
        if status in (_DENIED, _TOO_LARGE):
            denial = self._denial(
                status, buckets[decider - 1], costs[decider - 1], levels, resets, wait_ms, buckets
            )
            denial.headers.update(budget_headers(budgets, spent, self.clock()))
            raise denial
        reservation = Reservation(buckets, costs, levels, resets, budgets, amount, spent, rid)
        if status == _WAITED:
            try:
                await asyncio.sleep(wait_ms / 1000)
            except asyncio.CancelledError:
                self.release(reservation)
                raise
        return reservation

    def _budget_denial(
        self,
        status: int,
        budget: Budget,
        amount: int,
        spent: list[int],
        budgets: tuple[Budget, ...],
        headers: dict[str, str],
    ) -> BudgetExceeded:
        now = self.clock()
        headers.update(budget_headers(budgets, spent, now))
        headers["x-should-retry"] = "false"  # the openai SDK must not retry a spent budget
        period = "daily" if budget.window == "day" else "monthly"
        if status == _OVER_BUDGET:
            message = (
                f"This request could cost up to ${usd(amount)}, more than the whole {period} budget "
                f"of {budget.scope} (${usd(budget.limit)}). Lower max_tokens (or max_completion_tokens) "
                "or shorten the input."
            )
        else:
            message = (
                f"You exceeded the {period} budget of {budget.scope}: "
                f"${usd(spent[budgets.index(budget)])} of "
                f"${usd(budget.limit)} spent or reserved, this request could cost up to "
                f"${usd(amount)}. The budget resets in {hms(budget.resets_at - now)}."
            )
        return BudgetExceeded(message, headers=headers)

    def _denial(
        self,
        status: int,
        bucket: Bucket,
        cost: int,
        levels: list[int],
        resets: list[int],
        wait_ms: int,
        buckets: tuple[Bucket, ...],
    ) -> RateLimited:
        unit = "requests per min (RPM)" if bucket.kind == "requests" else "tokens per min (TPM)"
        headers = rate_headers(buckets, levels, resets)
        if status == _TOO_LARGE:
            headers["x-should-retry"] = "false"  # the openai SDK must not retry what can never fit
            return RateLimited(
                f"Request too large for {bucket.scope} on {unit}: Limit {bucket.capacity}, "
                f"Requested {cost}. The input or output tokens must be reduced in order to run "
                "successfully.",
                kind=bucket.kind,
                code="request_too_large",
                headers=headers,
            )
        level = levels[buckets.index(bucket)]
        headers["retry-after"] = str(max(1, math.ceil(wait_ms / 1000)))
        headers["retry-after-ms"] = str(wait_ms)
        # Which limit bound: with a burst capacity apart from the rate, say both, so
        # "Limit 200000, Used 49875" never hides that the 50,000-token burst was spent.
        limit = (
            f"Limit {bucket.per_minute}"
            if bucket.capacity == bucket.per_minute
            else f"burst capacity {bucket.capacity} (refills at {bucket.per_minute} per min)"
        )
        return RateLimited(
            f"Rate limit reached for {bucket.scope} on {unit}: {limit}, "
            f"Used {bucket.capacity - level}, Requested {cost}. Please try again in {duration(wait_ms)}.",
            kind=bucket.kind,
            headers=headers,
        )

    def settle(self, reservation: Reservation | None, actual_tokens: int, actual_cost: int = 0) -> None:
        """Give back (or take) the difference between reserved and used tokens, and between
        the reserved amount and `actual_cost` nano-dollars, in the background."""
        if reservation is None:
            return
        deltas = [
            cost - actual_tokens if b.kind == "tokens" else 0
            for b, cost in zip(reservation.buckets, reservation.costs, strict=True)
        ]
        settlement = None
        if reservation.rid:
            delta = actual_cost - reservation.amount
            settlement = BudgetSettlement(reservation.budgets, reservation.rid, delta, actual_cost)
        self._settle_soon(reservation.buckets, deltas, settlement)

    def release(self, reservation: Reservation | None) -> None:
        """Undo a reservation entirely (the request never went upstream)."""
        if reservation is not None:
            r = reservation
            settlement = BudgetSettlement(r.budgets, r.rid, -r.amount, 0) if r.rid else None
            self._settle_soon(r.buckets, list(r.costs), settlement)

    def _settle_soon(
        self, buckets: tuple[Bucket, ...], deltas: list[int], settlement: BudgetSettlement | None
    ) -> None:
        pairs = [(b, d) for b, d in zip(buckets, deltas, strict=True) if d]
        if not pairs and settlement is None:
            return
        task = asyncio.get_running_loop().create_task(
            self._settle([b for b, _ in pairs], [d for _, d in pairs], settlement)
        )
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _settle(
        self, buckets: list[Bucket], deltas: list[int], settlement: BudgetSettlement | None
    ) -> list[int]:
        """One adjust call; when Redis is unavailable, the budgets' part is retried (a retry
        cannot count twice: adjust.lua settles a reservation id once), the buckets' is not."""
        try:
            return await self.adjust(buckets, deltas, settlement=settlement)
        except StoreUnavailable:
            if settlement is None:
                log.warning("could not settle a rate-limit reservation: Redis unavailable")
                return []
        for delay in _SETTLE_RETRIES_S:
            await asyncio.sleep(delay)
            try:
                return await self.adjust((), [], settlement=settlement)
            except StoreUnavailable:
                continue
        scopes = ", ".join(b.scope for b in settlement.budgets)
        log.warning(
            "could not settle a budget reservation (%s): Redis unavailable; "
            "it stays reserved until its window ends",
            scopes,
        )
        return []

    async def adjust(
        self,
        buckets: Sequence[Bucket],
        deltas: list[int],
        now_us: int | None = None,
        settlement: BudgetSettlement | None = None,
    ) -> list[int]:
        """Refund `deltas` to buckets (negative: debit) and settle `settlement` in its
        budgets; returns the buckets' levels, then each budget's spend. Raises
        StoreUnavailable."""
        args: list[Any] = ["" if now_us is None else now_us]
        for bucket, delta in zip(buckets, deltas, strict=True):
            args += [bucket.per_minute, bucket.capacity, delta]
        budgets: tuple[Budget, ...] = settlement.budgets if settlement is not None else ()
        if settlement is not None:
            for budget in budgets:
                args += [
                    settlement.rid,
                    settlement.delta,
                    budget.expire_at_ms,
                    budget.alert,
                    settlement.actual,
                ]
        keys = [b.key for b in buckets] + [b.key for b in budgets]
        reply = await self._gate.script(self._adjust, keys, args)
        n = len(buckets)
        spent = [int(v) for v in reply[n::2]]
        self._note_budgets(budgets, spent, [int(v) for v in reply[n + 1 :: 2]])
        return [int(v) for v in reply[:n]] + spent

    def _note_budgets(self, budgets: tuple[Budget, ...], spent: list[int], alerted: list[int]) -> None:
        """Remember each budget's spend (for hit headers); log and report a crossed alert."""
        now = time.monotonic()
        for budget, value, crossed in zip(budgets, spent, alerted, strict=True):
            self._known[budget.key] = (value, now)
            self._known.move_to_end(budget.key)
            if crossed:
                budget_log.warning(
                    "budget alert: %s has spent $%s (settled and reserved) of its %s budget of $%s "
                    "(alert at $%s of settled spend)",
                    budget.scope,
                    usd(value),
                    "daily" if budget.window == "day" else "monthly",
                    usd(budget.limit),
                    usd(budget.alert),
                )
                if self._on_alert is not None:
                    self._on_alert(budget, value)
        while len(self._known) > _MAX_KNOWN:
            self._known.popitem(last=False)

    def known_spent(self, budgets: tuple[Budget, ...]) -> tuple[list[int] | None, bool]:
        """(each budget's spend as this process last saw it, or None if one is unknown;
        whether any of it is older than a few seconds)."""
        out, stale, now = [], False, time.monotonic()
        for budget in budgets:
            seen = self._known.get(budget.key)
            if seen is None:
                return None, True
            out.append(seen[0])
            stale = stale or now - seen[1] > _KNOWN_FRESH_S
        return out, stale

    async def read_spent(self, budgets: tuple[Budget, ...]) -> list[int]:
        """Each budget's spend (and reservations) from Redis, in one round trip; remembered."""
        keys = [b.key for b in budgets]

        async def read(r: Any) -> list[Any]:
            pipe = r.pipeline(transaction=False)
            for key in keys:
                pipe.hget(key, "spent")
            return list(await pipe.execute())

        spent = [int(v or 0) for v in await self._gate.run(read)]
        self._note_budgets(budgets, spent, [0] * len(budgets))
        return spent

    def refresh_soon(self, budgets: tuple[Budget, ...]) -> None:
        """Re-read these budgets' spend in the background, once at a time per window."""
        first = budgets[0].key if budgets else None
        if first is None or first in self._refreshing:
            return
        self._refreshing.add(first)

        async def refresh() -> list[int]:
            try:
                return await self.read_spent(budgets)
            except StoreUnavailable:
                return []
            finally:
                self._refreshing.discard(first)

        task = asyncio.get_running_loop().create_task(refresh())
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def drain(self, timeout: float = _DRAIN_TIMEOUT_S) -> None:
        """Wait for settlements still in flight (shutdown), at most `timeout` seconds
        (retries against an unavailable Redis would otherwise hold the shutdown)."""
        if self._pending:
            await asyncio.wait(list(self._pending), timeout=timeout)
