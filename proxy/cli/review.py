"""`llm-cache-proxy review list|show|decide`: the review queue, straight from Redis."""

from __future__ import annotations

import argparse
import getpass
import sys
import time
from typing import Any

import orjson

from proxy.cli.tools import tenant_names, with_redis
from proxy.config import Config
from proxy.store.connection import RedisGate
from proxy.store.review import ReviewQueue


def _namespaces(config: Config, tenant: str | None) -> list[str] | None:
    """Where review items live: every (or one) tenant, or `shared` with cache.scope shared."""
    if config.cache.scope == "shared":
        return ["shared"]
    return tenant_names(config, tenant)


def _when(seconds: int | None) -> str:
    return "-" if seconds is None else time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(seconds))


def _print_json(obj: Any) -> None:
    sys.stdout.write(orjson.dumps(obj, option=orjson.OPT_INDENT_2).decode() + "\n")


def cmd_review(config: Config, args: argparse.Namespace) -> int:
    namespaces = _namespaces(config, args.tenant)
    if namespaces is None:
        return 1
    action = {"list": _list, "show": _show, "decide": _decide}[args.review_command]
    return action(config, args, namespaces)


def _list(config: Config, args: argparse.Namespace, namespaces: list[str]) -> int:
    async def work(gate: RedisGate) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        queue, items, queues = ReviewQueue(gate, config), [], {}
        for ns in namespaces:
            pending, total, dropped = await queue.pending(ns, args.limit)
            items += pending
            queues[ns] = {"pending": total, "dropped": dropped}
        return sorted(items, key=lambda i: i["created_at"] or 0)[: args.limit], queues

    items, queues = with_redis(config, work)
    if args.json:
        _print_json({"object": "list", "data": items, "queues": queues})
        return 0
    for ns, q in queues.items():
        print(f"{ns}: {q['pending']} pending, {q['dropped']} dropped at the cap")
    if not items:
        print("(the queue is empty)")
    for i in items:
        state = "quarantined" if i["quarantined"] else "served"
        print(
            f"{i['id']}  {i['tenant']}  {i.get('model', '-')}  {i['source']}  flags={i['flags']}  "
            f"{state}  queued {_when(i['created_at'])}  {i['reason'] or ''}"
        )
    return 0


def _find(config: Config, args: argparse.Namespace, namespaces: list[str]) -> dict[str, Any] | None:
    async def work(gate: RedisGate) -> dict[str, Any] | None:
        queue = ReviewQueue(gate, config)
        for ns in namespaces:
            (item,) = await queue.items(ns, [args.digest], args.answer, args.request)
            if item is not None:
                return item
        return None

    item = with_redis(config, work)
    if item is None:
        print(f"llm-cache-proxy: no review item {args.digest}", file=sys.stderr)
    return item


def _show(config: Config, args: argparse.Namespace, namespaces: list[str]) -> int:
    item = _find(config, args, namespaces)
    if item is None:
        return 1
    _print_json(item)
    return 0


def _decide(config: Config, args: argparse.Namespace, namespaces: list[str]) -> int:
    if len(namespaces) != 1:
        print("llm-cache-proxy: name the tenant (--tenant) whose item this is", file=sys.stderr)
        return 1
    if args.ttl is not None and (
        args.decision != "pin" or not 1 <= args.ttl <= config.review.pin_max_seconds
    ):
        print(f"llm-cache-proxy: --ttl is for pin, 1 to {config.review.pin_max_seconds}", file=sys.stderr)
        return 1
    who = f"{args.by or getpass.getuser()} (cli)"

    async def work(gate: RedisGate) -> Any:
        return await ReviewQueue(gate, config).decide(
            namespaces[0], args.digest, args.decision, who, args.ttl
        )

    result = with_redis(config, work)
    if result.outcome != "ok":
        detail = f" ({result.state})" if result.state else ""
        print(f"llm-cache-proxy: not decided: {result.outcome}{detail}", file=sys.stderr)
        return 1
    print(f"{args.digest}: {result.state} by {who}")
    return 0


def add_parser(sub: Any, tool: Any) -> None:
    review = sub.add_parser("review", help="list and decide flagged or sampled cached answers")
    actions = review.add_subparsers(dest="review_command", required=True)
    listing = actions.add_parser("list", help="pending items, oldest first")
    listing.add_argument("--limit", type=int, default=50)
    listing.add_argument("--json", action="store_true")
    show = actions.add_parser("show", help="one item, as JSON")
    show.add_argument("digest")
    show.add_argument("--answer", action="store_true", help="include the cached answer")
    show.add_argument("--request", action="store_true", help="include the request (the prompt)")
    decide = actions.add_parser("decide", help="approve, reject or pin a pending item")
    decide.add_argument("digest")
    decide.add_argument("decision", choices=["approve", "reject", "pin"])
    decide.add_argument("--ttl", type=int, help="pin: seconds to keep it (default review.pin_max_seconds)")
    decide.add_argument("--by", help="reviewer name recorded with the decision (default: $USER)")
    for parser in (listing, show, decide):
        parser.add_argument("--config")
        parser.add_argument("--tenant", help="the tenant whose queue (default: all, for list)")
    review.set_defaults(func=tool("cmd_review"))
