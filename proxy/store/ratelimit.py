"""Per-tenant token buckets in Redis, checked before a miss goes upstream.

A request passes every bucket that applies to it (tenant, the model inside the tenant,
the end user inside the tenant; requests and tokens) in one Lua call, or none is debited.
Tokens are reserved up front (prompt estimate + max completion) and settled with the real
usage afterwards: refunded when the answer was shorter, debited when it was longer. The
settling runs in its own task, so a client that hangs up cannot leak a reservation.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from proxy.config import Config, TenantConfig
from proxy.core.limits import Bucket, BucketPlanner, duration, rate_headers
from proxy.errors import RateLimited, ServiceUnavailable, StoreUnavailable
from proxy.store.connection import RedisGate, script

log = logging.getLogger("llmcp.ratelimit")

_ALLOWED, _WAITED, _DENIED, _TOO_LARGE = 1, 2, 0, -1


@dataclass(slots=True)
class Reservation:
    """What a request took; `settle` gives back or takes the difference later."""

    buckets: tuple[Bucket, ...]
    costs: list[int]
    levels: list[int]
    resets_ms: list[int]


class RateLimiter:
    def __init__(self, gate: RedisGate, config: Config) -> None:
        self._gate = gate
        self._config = config
        self._acquire = script(gate.client, "acquire.lua")
        self._adjust = script(gate.client, "adjust.lua")
        self._pending: set[asyncio.Task[list[int]]] = set()
        self._planner = BucketPlanner(config.redis.key_prefix)

    def renewed(self, config: Config) -> RateLimiter:
        """A limiter for a reloaded config, sharing this one's scripts and pending settlements."""
        fresh = RateLimiter.__new__(RateLimiter)
        fresh._gate, fresh._config = self._gate, config
        fresh._acquire, fresh._adjust, fresh._pending = self._acquire, self._adjust, self._pending
        fresh._planner = BucketPlanner(config.redis.key_prefix)
        return fresh

    def plan(self, tenant: TenantConfig, model: str, end_user: str | None) -> tuple[Bucket, ...]:
        """Every bucket this request must pass; empty for an unlimited tenant."""
        return self._planner.plan(tenant, model, end_user)

    async def acquire(
        self, buckets: tuple[Bucket, ...], tokens: int, now_us: int | None = None
    ) -> Reservation | None:
        """Take one request and `tokens` from every bucket, or raise RateLimited.

        Returns None when Redis is unavailable and `rate_limit.on_redis_error` is open.
        """
        policy = self._config.rate_limit
        costs = [1 if b.kind == "requests" else tokens for b in buckets]
        max_wait = policy.max_wait_ms if policy.on_limit == "wait" else 0
        args: list[Any] = [max_wait, "" if now_us is None else now_us]
        for bucket, cost in zip(buckets, costs, strict=True):
            args += [bucket.per_minute, bucket.capacity, cost]
        keys = [b.key for b in buckets]
        try:
            reply = await self._gate.run(lambda r: self._acquire(keys=keys, args=args, client=r))
        except StoreUnavailable as exc:
            if policy.on_redis_error == "closed":
                raise ServiceUnavailable(
                    "The rate limiter is unavailable and this proxy fails closed; try again shortly."
                ) from exc
            log.warning("rate limiter unavailable; failing open for this request")
            return None
        status, wait_ms, decider = int(reply[0]), int(reply[1]), int(reply[2])
        levels = [int(v) for v in reply[3::2]]
        resets = [int(v) for v in reply[4::2]]
        if status in (_DENIED, _TOO_LARGE):
            raise self._denial(
                status, buckets[decider - 1], costs[decider - 1], levels, resets, wait_ms, buckets
            )
        reservation = Reservation(buckets, costs, levels, resets)
        if status == _WAITED:
            try:
                await asyncio.sleep(wait_ms / 1000)
            except asyncio.CancelledError:
                self.release(reservation)
                raise
        return reservation

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

    def settle(self, reservation: Reservation | None, actual_tokens: int) -> None:
        """Give back (or take) the difference between reserved and used tokens, in the background."""
        if reservation is None:
            return
        deltas = [
            cost - actual_tokens if b.kind == "tokens" else 0
            for b, cost in zip(reservation.buckets, reservation.costs, strict=True)
        ]
        self._adjust_soon(reservation.buckets, deltas)

    def release(self, reservation: Reservation | None) -> None:
        """Undo a reservation entirely (the request never went upstream)."""
        if reservation is not None:
            self._adjust_soon(reservation.buckets, list(reservation.costs))

    def _adjust_soon(self, buckets: tuple[Bucket, ...], deltas: list[int]) -> None:
        pairs = [(b, d) for b, d in zip(buckets, deltas, strict=True) if d]
        if not pairs:
            return
        task = asyncio.get_running_loop().create_task(
            self.adjust([b for b, _ in pairs], [d for _, d in pairs])
        )
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def adjust(
        self, buckets: Sequence[Bucket], deltas: list[int], now_us: int | None = None
    ) -> list[int]:
        args: list[Any] = ["" if now_us is None else now_us]
        for bucket, delta in zip(buckets, deltas, strict=True):
            args += [bucket.per_minute, bucket.capacity, delta]
        keys = [b.key for b in buckets]
        try:
            reply = await self._gate.run(lambda r: self._adjust(keys=keys, args=args, client=r))
        except StoreUnavailable:
            log.warning("could not settle a rate-limit reservation: Redis unavailable")
            return []
        return [int(v) for v in reply]

    async def drain(self) -> None:
        """Wait for settlements still in flight (shutdown)."""
        if self._pending:
            await asyncio.gather(*list(self._pending), return_exceptions=True)
