"""The review queue: flagged and sampled cached answers wait here for a person's decision.

An item is keyed by the cache entry's digest inside its namespace (tenant, or `shared`):

    <prefix>:v1:<ns>:rv:item:{<digest>}      hash: state, source, flags, reason, who, when
    <prefix>:v1:<ns>:rv:answer:{<digest>}    the answer under review (a copy of the entry)
    <prefix>:v1:<ns>:rv:request:{<digest>}   the request that produced it
    <prefix>:v1:<ns>:rv:flags:{<digest>}     each flag's own copy of the answer it flagged
                                             (list, oldest first, at most FLAG_COPIES)
    <prefix>:v1:{<ns>}:rv:queue              sorted set of pending digests, capped
    <prefix>:v1:{<ns>}:rv:dropped            how many were dropped to honour the cap

The item keys share the cache entry's `{<digest>}` hash tag, so flagging (copy, quarantine)
and deciding (the claim, purge or put back) are each one script in one cluster slot. The
queue is an index over items in another slot: it is written after the item, which then
records `indexed`, so a flag retried after a failure in between indexes it; an item dropped
from a full queue is not put back by later flags. Readers skip members whose item has gone
or been decided.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from proxy.config import Config
from proxy.core.apis import ANSWER_KINDS as KINDS
from proxy.core.apis import API_OF_KIND
from proxy.core.apis.base import earliest_expires_at
from proxy.core.keys import KEY_VERSION, cache_key, sibling_key
from proxy.store.cache import HEADER_MAX, REQUEST_KIND, decode_entry, decode_meta, unpack_blob
from proxy.store.connection import RedisGate, script
from proxy.store.l1 import l1_channel

Decision = Literal["approve", "reject", "pin"]
DECISIONS: tuple[str, ...] = ("approve", "reject", "pin")
_UINT32 = 2**32
# Each flag keeps its own copy of the answer it flagged (quarantine refreshes the entry, so
# a second flag is often about a different answer), up to this many per item: the first
# flag's copy and the newest ones (docs/keyspace.md). Bounded: an item costs at most this
# many answers, whatever a client flags.
FLAG_COPIES = 10


def is_sampled(digest: str, rate: float) -> bool:
    """Deterministic by digest, so every replica samples the same answers."""
    return rate > 0 and int(digest[:8], 16) < rate * _UINT32


@dataclass(frozen=True, slots=True)
class Marked:
    outcome: str  # "missing", "skipped", "queued" or "counted" (see review_mark.lua)
    flags: int
    dropped: int = 0


@dataclass(frozen=True, slots=True)
class Decided:
    outcome: str  # "ok", "missing", "decided" or "gone" (see review_decide.lua)
    state: str


class ReviewQueue:
    """Flag, sample, list and decide; every method is a few round trips at most."""

    def __init__(self, gate: RedisGate, config: Config) -> None:
        self._gate = gate
        self._config = config
        self._review = config.review
        self._prefix = config.redis.key_prefix
        self._channel = l1_channel(self._prefix)
        self._mark = script(gate.client, "review_mark.lua")
        self._decide = script(gate.client, "review_decide.lua")
        self._enqueue = script(gate.client, "review_enqueue.lua")

    # Keys ---------------------------------------------------------------------------------

    def _keys(self, namespace: str, digest: str, kind: str = "chat") -> list[str]:
        """The entry of this kind, its request, and the review keys (the same for every kind)."""
        entry = cache_key(self._prefix, namespace, kind, digest)
        return [
            entry,
            sibling_key(entry, REQUEST_KIND),
            sibling_key(entry, "rv:item"),
            sibling_key(entry, "rv:answer"),
            sibling_key(entry, "rv:request"),
            sibling_key(entry, "rv:flags"),
        ]

    def queue_key(self, namespace: str) -> str:
        return f"{self._prefix}:{KEY_VERSION}:{{{namespace}}}:rv:queue"

    def dropped_key(self, namespace: str) -> str:
        return f"{self._prefix}:{KEY_VERSION}:{{{namespace}}}:rv:dropped"

    # Writes -------------------------------------------------------------------------------

    async def flag(self, namespace: str, digest: str, reason: str, who: str) -> Marked:
        """A client says this cached answer is wrong; quarantine or keep it per config. The
        digest alone names the answer: chat first, then the other APIs' entries."""
        marked = Marked("missing", 0)
        for kind in KINDS:
            marked = await self._put_under_review(namespace, digest, kind, self._review.on_flag, reason, who)
            if marked.outcome != "missing":
                break
        return marked

    async def sample(self, namespace: str, digest: str, kind: str = "chat") -> Marked:
        """Queue a newly stored answer for routine review (it stays served)."""
        return await self._put_under_review(namespace, digest, kind, "sample", "", "")

    async def _put_under_review(
        self, namespace: str, digest: str, kind: str, mode: str, reason: str, who: str
    ) -> Marked:
        now = _now_ms()
        retention = self._review.retention_seconds * 1000
        meta = orjson.dumps({"flagged_ms": now, "flagged_by": who, "reason": reason}).decode()
        argv: list[str | int] = [now, retention, mode, reason, who, self._channel, kind, meta, FLAG_COPIES]
        keys = self._keys(namespace, digest, kind)
        outcome, flags = await self._gate.run(lambda r: self._mark(keys, argv))
        outcome = outcome.decode()
        dropped = 0
        # A flag on a pending item indexes it again too: the cap may have dropped it from the
        # queue, and an answer flagged anew belongs in front of reviewers (ZADD NX keeps the
        # place of one still queued). The queue is in the namespace's slot, the item in the
        # digest's, hence two scripts.
        if outcome in ("queued", "counted"):
            queue = [self.queue_key(namespace), self.dropped_key(namespace)]
            args: list[str | int] = [now, digest, self._review.max_items, retention]
            dropped = int(await self._gate.run(lambda r: self._enqueue(queue, args)))
        if outcome == "queued":
            # Only now is the item indexed: a flag retried after a failure here indexes it again.
            item = self._keys(namespace, digest)[2]
            await self._gate.run(lambda r: r.hset(item, "indexed", 1))
        return Marked(outcome, int(flags), dropped)

    async def decide(
        self, namespace: str, digest: str, decision: Decision, who: str, pin_seconds: int | None = None
    ) -> Decided:
        """Approve, reject or pin a pending item; exactly one concurrent decision wins."""
        pin_ms = (pin_seconds or self._review.pin_max_seconds) * 1000
        argv = [
            decision,
            _now_ms(),
            who,
            self._review.retention_seconds * 1000,
            pin_ms,
            self._config.cache.ttl_seconds * 1000,
            self._channel,
        ]
        item, answer_key = self._keys(namespace, digest)[2:4]

        async def read(r: Any) -> list[Any]:
            pipe = r.pipeline(transaction=False)
            pipe.hget(item, "kind")
            pipe.get(answer_key) if decision != "reject" else pipe.exists(answer_key)
            return list(await pipe.execute())

        kind, answer = await self._gate.run(read)
        argv.append(_expires_ms(answer) if decision != "reject" else 0)
        keys = self._keys(namespace, digest, kind.decode() if isinstance(kind, bytes) else "chat")
        outcome, state = await self._gate.run(lambda r: self._decide(keys, argv))
        result = Decided(outcome.decode(), state.decode())
        if result.outcome in ("ok", "decided"):
            await self._gate.run(lambda r: r.zrem(self.queue_key(namespace), digest))
        return result

    # Reads --------------------------------------------------------------------------------

    async def pending(self, namespace: str, limit: int) -> tuple[list[dict[str, Any]], int, int]:
        """The oldest `limit` pending items, the queue's length and how many were dropped."""

        async def index(r: Any) -> list[Any]:
            pipe = r.pipeline(transaction=False)
            pipe.zrange(self.queue_key(namespace), 0, limit - 1)
            pipe.zcard(self.queue_key(namespace))
            pipe.get(self.dropped_key(namespace))
            return list(await pipe.execute())

        members, total, dropped = await self._gate.run(index)
        digests = [m.decode() for m in members]
        items = await self.items(namespace, digests)
        stale = [
            d for d, item in zip(digests, items, strict=True) if item is None or item["state"] != "pending"
        ]
        if stale:  # expired or decided elsewhere: tidy the index as we go
            await self._gate.run(lambda r: r.zrem(self.queue_key(namespace), *stale))
        found = [i for i in items if i is not None and i["state"] == "pending"]
        return found, int(total) - len(stale), int(dropped or 0)

    async def items(
        self, namespace: str, digests: list[str], with_answer: bool = False, with_request: bool = False
    ) -> list[dict[str, Any] | None]:
        """Each item's metadata (None where there is none), optionally with its answer (and
        each flag's own copy of the answer it flagged) and request."""
        if not digests:
            return []

        async def read(r: Any) -> list[Any]:
            pipe = r.pipeline(transaction=False)
            for digest in digests:
                _, _, item, answer, request, copies = self._keys(namespace, digest)
                pipe.hgetall(item)
                pipe.get(answer) if with_answer else pipe.getrange(answer, 0, HEADER_MAX)
                pipe.get(request) if with_request else pipe.exists(request)
                pipe.lrange(copies, 0, -1) if with_answer else pipe.llen(copies)
                for kind in KINDS:  # the item says which; reading all three saves a round trip
                    pipe.pttl(cache_key(self._prefix, namespace, kind, digest))
            return list(await pipe.execute())

        raw = await self._gate.run(read)
        out: list[dict[str, Any] | None] = []
        width = 4 + len(KINDS)
        for i, digest in enumerate(digests):
            fields, answer, request, copies, *ttls = raw[width * i : width * (i + 1)]
            kind = (fields or {}).get(b"kind", b"chat").decode()
            entry_pttl = ttls[KINDS.index(kind)] if kind in KINDS else -2
            if not fields:
                out.append(None)
                continue
            item = _describe(
                namespace, digest, fields, answer, request, entry_pttl, with_answer, with_request
            )
            if with_answer:
                item["flagged_answers"] = [_flagged_copy(c) for c in copies]
            item["flag_copies"] = len(copies) if with_answer else int(copies)
            out.append(item)
        return out


def _flagged_copy(raw: bytes) -> dict[str, Any]:
    """One flag's record (`<metadata JSON>\\n<entry>`, review_mark.lua) for a reviewer."""
    meta_raw, _, blob = raw.partition(b"\n")
    meta = orjson.loads(meta_raw)
    entry = decode_entry(blob)
    return {
        "flagged_at": _seconds(str(meta.get("flagged_ms") or "")),
        "flagged_by": meta.get("flagged_by"),
        "reason": meta.get("reason"),
        "answer": orjson.loads(entry.body) if entry else None,
    }


def _expires_ms(raw: Any) -> int:
    """The earliest `expires_at` in a stored answer, in ms (0 for none): a put-back entry
    must not outlive what the answer refers to (audio ids)."""
    entry = decode_entry(raw) if isinstance(raw, bytes) else None
    if entry is None:
        return 0
    try:
        at = earliest_expires_at(orjson.loads(entry.body))
    except orjson.JSONDecodeError:
        return 0
    return at * 1000 if at is not None else 0


def _describe(
    namespace: str,
    digest: str,
    fields: dict[bytes, bytes],
    answer: Any,
    request: Any,
    entry_pttl: int,
    with_answer: bool,
    with_request: bool,
) -> dict[str, Any]:
    f = {k.decode(): v.decode(errors="replace") for k, v in fields.items()}
    item: dict[str, Any] = {
        "object": "cache.review_item",
        "id": digest,
        "tenant": namespace,
        "state": f.get("state", "pending"),
        "source": f.get("source", "flag"),
        "api": API_OF_KIND.get(f.get("kind", "chat")),
        "flags": int(f.get("flags", 0)),
        "reason": f.get("reason"),
        "flagged_by": f.get("flagged_by"),
        "created_at": _seconds(f.get("created_ms")),
        "flagged_at": _seconds(f.get("flagged_ms")),
        "quarantined": "quarantined" in f,
        "decided_by": f.get("decided_by"),
        "decided_at": _seconds(f.get("decided_ms")),
        "pinned_until": _seconds(f.get("pinned_until_ms")),
        # The live cache entry: seconds left, or null when nothing is cached under this key.
        "entry_ttl_seconds": entry_pttl // 1000 if entry_pttl >= 0 else None,
        "has_request": bool(request),
    }
    decoded = decode_meta(answer) if isinstance(answer, bytes) else None
    if decoded is not None:
        meta = decoded[0]
        item["model"] = meta.model
        item["stored_at"] = meta.stored_at_ms // 1000
        item["usage"] = {"prompt_tokens": meta.prompt_tokens, "completion_tokens": meta.completion_tokens}
    if with_answer:
        entry = decode_entry(answer) if isinstance(answer, bytes) else None
        item["answer"] = orjson.loads(entry.body) if entry else None
    if with_request:
        body = unpack_blob(request) if isinstance(request, bytes) else None
        item["request"] = orjson.loads(body) if body else None
    return item


def _seconds(ms: str | None) -> int | None:
    return int(ms) // 1000 if ms else None


def _now_ms() -> int:
    return int(time.time() * 1000)
