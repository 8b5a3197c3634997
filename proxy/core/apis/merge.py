"""The generic fold of a stream's deltas into the answer a non-stream call returns.

Shared by every chunked API (chat, legacy completions): strings concatenate, lists of
items with an `index` merge by it, dicts merge recursively, other values take their last
non-null value. Nothing here knows a field by name beyond `IDENTITY` (values that name
rather than hold text), so fields the proxy has never heard of survive the cache. Where
the fold cannot be sure (`DeltaMerge.doubt`), the answer is served but not stored.
"""

from __future__ import annotations

from typing import Any, ClassVar

from proxy.core.apis.base import Usage, cached_prompt_tokens, usage_counts

# Fields that name or classify a thing rather than hold a piece of its text: a repeated
# value is the same value (never concatenated); a different one makes the fold ambiguous.
# A function's `name` comes whole (some providers repeat it in every delta).
IDENTITY = frozenset({"id", "type", "role", "object", "index", "name", "call_id"})
BASE64 = frozenset({"data"})  # audio data: base64 pieces join only when none was padded
# Top-level chunk fields that are not the answer's: its choices and usage (folded on their
# own), the chunk's `object`, OpenAI's per-chunk random padding (`obfuscation`).
NOT_HEAD = frozenset({"choices", "usage", "object", "obfuscation"})


class DeltaMerge:
    """Folds the pieces of a streamed value into one value, by its shape, not by field name:

    - strings concatenate (held as `Pieces` until `joined`), except identity fields
      (`IDENTITY`), which keep their one value;
    - dicts merge key by key; lists of dicts carrying an integer `index` merge item by
      item by `index` (in the order the indexes first came); other lists concatenate;
    - numbers and bools take the last value; null never overwrites a value (a null for a
      missing key records the key, as null).

    `doubt` is set when the fold is ambiguous, i.e. when the result may not be the value a
    non-stream call returns: an identity field that changes, a value that changes type, a
    list of typed parts (dicts with a string `type`, no `index`) that arrives in more than
    one piece for the same field (partial blocks: concatenating them gives several parts
    where the whole answer has one), base64 `data` that was padded before its last piece.
    """

    def __init__(self) -> None:
        self.doubt: str | None = None
        self._typed: set[tuple[Any, ...]] = set()  # fields that got a list of typed parts

    def fold(self, acc: dict[str, Any], delta: dict[str, Any], path: tuple[Any, ...]) -> None:
        for key, value in delta.items():
            where = (*path, key)
            old = acc.get(key)
            if value is None:
                acc.setdefault(key, None)
            elif old is None:
                acc[key] = self._fresh(value, where)
            elif key in IDENTITY:
                if old != value:
                    self.note(where, f"changed from {old!r} to {value!r}")
                acc[key] = value
            elif isinstance(old, (str, Pieces)) and isinstance(value, str):
                if key in BASE64 and value and (old[-1] if isinstance(old, Pieces) else old).endswith("="):
                    self.note(where, "is base64 that was padded before its last piece")
                if isinstance(old, Pieces):
                    old.append(value)
                else:
                    acc[key] = Pieces((old, value))
            elif isinstance(old, dict) and isinstance(value, dict):
                self.fold(old, value, where)
            elif isinstance(old, list) and not isinstance(old, Pieces) and isinstance(value, list):
                self._extend(old, value, where)
            elif any(isinstance(v, (str, dict, list)) for v in (old, value)):
                self.note(where, f"changed type ({_kind(old)} to {_kind(value)})")
                acc[key] = self._fresh(value, where)
            else:
                acc[key] = value

    def _fresh(self, value: Any, where: tuple[Any, ...]) -> Any:
        """A first value, copied (so later pieces never change a chunk already sent)."""
        if isinstance(value, dict):
            out: dict[str, Any] = {}
            self.fold(out, value, where)
            return out
        if isinstance(value, list):
            items: list[Any] = []
            self._extend(items, value, where)
            return items
        return value

    def _extend(self, acc: list[Any], items: list[Any], where: tuple[Any, ...]) -> None:
        indexed = [_index_of(item) is not None for item in items]
        if any(indexed):
            if not all(indexed) or any(_index_of(item) is None for item in acc):
                self.note(where, "mixes items with and without an index")
            for item in items:
                index = _index_of(item)
                slot = next((s for s in acc if index is not None and _index_of(s) == index), None)
                if slot is None:
                    acc.append(self._fresh(item, (*where, index)))
                else:
                    self.fold(slot, item, (*where, index))
            return
        if any(isinstance(item, dict) and isinstance(item.get("type"), str) for item in items):
            if where in self._typed:
                self.note(where, "is a list of typed parts that came in more than one piece")
            self._typed.add(where)
        acc.extend(items)

    def note(self, where: tuple[Any, ...], what: str) -> None:
        """Record why the fold is ambiguous (the first reason is kept)."""
        if self.doubt is None:
            self.doubt = f"{_dotted(where)} {what}"


class Pieces(list[str]):
    """A string being streamed, kept as its pieces and joined once (`joined`) when the
    answer is built, rather than copied whole at every chunk (audio data runs to MBs)."""


def joined(value: Any) -> Any:
    """`value` with every `Pieces` in it joined into its string (in place for containers)."""
    if isinstance(value, Pieces):
        return "".join(value)
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(item, (dict, list)):
                value[key] = joined(item)
    elif isinstance(value, list):
        value[:] = [joined(item) if isinstance(item, (dict, list)) else item for item in value]
    return value


def _kind(value: Any) -> str:
    return "str" if isinstance(value, Pieces) else type(value).__name__


def _index_of(item: Any) -> int | None:
    if isinstance(item, dict):
        index = item.get("index")
        if isinstance(index, int) and not isinstance(index, bool):
            return index
    return None


def _dotted(where: tuple[Any, ...]) -> str:
    """('choices', 0, 'message', 'tool_calls', 1, 'id') -> 'choices[0].message.tool_calls[1].id'"""
    out = ""
    for part in where:
        out += f"[{part}]" if isinstance(part, int) else f".{part}" if out else str(part)
    return out


class DeltaAssembler:
    """Folds a stream's chunks: top-level fields take their last non-null value (`id`,
    `created`, `model`, `system_fingerprint`, `service_tier`, unknown ones), `usage` the
    last one sent; each choice's fields merge by `DeltaMerge` per choice index, except
    `finish_reason` (its last non-null value). Subclasses say which part of a choice is the
    delta and give the answer its non-stream shape."""

    # (the part of a chunk's choice that is a delta, the part of the answer's choice it
    # folds into); None: every field of a chunk's choice folds into the answer's choice.
    delta: ClassVar[tuple[str, str] | None] = None

    def __init__(self) -> None:
        self._merge = DeltaMerge()
        self._head: dict[str, Any] = {}
        self._choices: dict[int, dict[str, Any]] = {}
        self.usage: dict[str, Any] | None = None

    def add(self, chunk: dict[str, Any]) -> None:
        for key, value in chunk.items():
            if key not in NOT_HEAD and (value is not None or key not in self._head):
                self._head[key] = value
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        for choice in chunk.get("choices") or ():
            if isinstance(choice, dict):
                self._add_choice(choice)

    def _add_choice(self, choice: dict[str, Any]) -> None:
        index = choice.get("index", 0)
        path = ("choices", index)
        acc = self._choices.setdefault(index, {})
        delta, into = self.delta or ("", "")
        if into in choice and delta not in choice:
            self._merge.note((*path, into), "came whole in a chunk, not as a delta")
        for key, value in choice.items():
            if key == "index":
                continue
            if key == "finish_reason":
                if value is not None or acc.get(key) is None:
                    acc[key] = value
            elif key == delta:
                self._merge.fold(acc.setdefault(into, {}), value or {}, (*path, into))
            else:
                self._merge.fold(acc, {key: value}, path)

    @property
    def doubt(self) -> str | None:
        """Why the answer may not be exactly what a non-stream call returns (None: it is)."""
        return self._merge.doubt

    @property
    def ended(self) -> bool:
        """A stream ends properly when every choice finished (nothing else marks it)."""
        return self.complete

    @property
    def complete(self) -> bool:
        """Every choice got a finish_reason: the stream was not cut off."""
        return bool(self._choices) and all(c.get("finish_reason") for c in self._choices.values())

    def _joined(self) -> dict[int, dict[str, Any]]:
        """The choices so far, their streamed strings joined."""
        for choice in self._choices.values():
            joined(choice)
        return self._choices

    def _answer(self, kind: str, choices: list[dict[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {**self._head, "object": kind, "choices": choices}
        if self.usage is not None:
            out["usage"] = self.usage
        return out

    def usage_counts(self) -> Usage | None:
        return usage_counts(self.usage)

    def cached_tokens(self) -> int:
        return cached_prompt_tokens(self.usage)
