"""A compact structural diff of two canonical requests: which JSON paths differ.

Replay mode (`cache_mode: replay`) answers a miss with the nearest recorded request and
this diff, so a developer sees at once why a test missed (a changed prompt, an added
parameter). Both sides are normalized by the current key rules first
(`proxy.core.keys.normalize`), so only what is in the cache key shows up, and an empty
diff means the two requests have the same digest.

    messages[1].content: "…is the capital of France?" -> "…is the capital of Spain?"
    temperature: (absent) -> 0.2
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import orjson

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_CONTEXT = 12  # characters of a common prefix kept before the first difference of two strings


class _Absent:
    def __repr__(self) -> str:
        return "(absent)"


ABSENT: Any = _Absent()


@dataclass(frozen=True, slots=True)
class Change:
    """One path whose value differs; ABSENT on the side that does not have it."""

    path: str
    recorded: Any
    asked: Any


def diff(recorded: Any, asked: Any, path: str = "") -> list[Change]:
    """Every leaf path where the two values differ, in document order (dict keys sorted)."""
    if isinstance(recorded, dict) and isinstance(asked, dict):
        out: list[Change] = []
        for key in sorted(recorded.keys() | asked.keys()):
            out += diff(recorded.get(key, ABSENT), asked.get(key, ABSENT), _member(path, key))
        return out
    if isinstance(recorded, list) and isinstance(asked, list):
        out = []
        for i in range(max(len(recorded), len(asked))):
            left = recorded[i] if i < len(recorded) else ABSENT
            right = asked[i] if i < len(asked) else ABSENT
            out += diff(left, right, f"{path}[{i}]")
        return out
    if _same(recorded, asked):
        return []
    return [Change(path or "(request)", recorded, asked)]


def distance(changes: list[Change]) -> int:
    """How far apart the differing values are, for ranking candidates with as many
    changes: for two strings the span between their common prefix and suffix (an edit in
    one place of a long prompt is near), otherwise the size of both values."""
    total = 0
    for change in changes:
        left, right = change.recorded, change.asked
        if isinstance(left, str) and isinstance(right, str):
            total += len(left) + len(right) - 2 * _common_ends(left, right)
        else:
            total += _size(left) + _size(right)
    return total


def render(changes: list[Change], width: int = 48, most: int = 6) -> str:
    """`path: recorded -> asked; ...`, values cut to `width` characters, at most `most` paths."""
    parts = []
    for change in changes[:most]:
        left, right = change.recorded, change.asked
        if isinstance(left, str) and isinstance(right, str):
            left, right = _from_first_difference(left, right)
        parts.append(f"{change.path}: {_short(left, width)} -> {_short(right, width)}")
    if len(changes) > most:
        parts.append(f"and {len(changes) - most} more")
    return "; ".join(parts)


def _same(a: Any, b: Any) -> bool:
    return type(a) is type(b) and a == b


def _member(path: str, key: str) -> str:
    """`path.key`, or `path["key"]` for a key that is not an identifier."""
    if not _IDENT.match(key):
        return f"{path}[{orjson.dumps(key).decode()}]"
    return f"{path}.{key}" if path else key


def _size(value: Any) -> int:
    return 0 if value is ABSENT else len(orjson.dumps(value))


def _common_prefix(a: str, b: str) -> int:
    common = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        common += 1
    return common


def _common_ends(a: str, b: str) -> int:
    """Characters the two strings share at their start plus at their end (not overlapping)."""
    prefix = _common_prefix(a, b)
    return prefix + _common_prefix(a[prefix:][::-1], b[prefix:][::-1])


def _from_first_difference(a: str, b: str) -> tuple[str, str]:
    """Both strings from a little before where they start to differ, marked with '…'."""
    common = _common_prefix(a, b)
    if common <= _CONTEXT:
        return a, b
    cut = common - _CONTEXT
    space = a.rfind(" ", max(0, cut - _CONTEXT), cut)
    cut = space + 1 if space >= 0 else cut  # from the start of a word, when one is near
    return "…" + a[cut:], "…" + b[cut:]


def _short(value: Any, width: int) -> str:
    if value is ABSENT:
        return "(absent)"
    text = orjson.dumps(value).decode()
    return text if len(text) <= width else text[: width - 1] + "…"
