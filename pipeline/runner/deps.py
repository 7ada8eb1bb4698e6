"""What a job's next tasks wait for, counted in one place.

A graph says what each task depends on as keys with counts: ``expect(("upscale", 3),
40)`` (segment 3 waits for 40 regions), ``after(encode_3, [("decode", 3), ("upscale",
3)])``; each settled call ticks its key off with ``done(key)``, which returns the tasks
it released (every key they wait for reached zero), in the order they were registered.
Keys are whatever the graph counts by (a segment, a frame, a pyramid level); tasks are
whatever the graph hands out when they are released (a call to emit, a driver step).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from typing import Any


class Dependencies:
    def __init__(self) -> None:
        self._left: dict[Hashable, int] = {}  # key -> settlements still to come
        self._waiting: dict[Hashable, list[int]] = {}  # key -> ids of items waiting on it
        self._items: dict[int, list[Any]] = {}  # id -> [item, keys not yet reached]
        self._next = 0

    def expect(self, key: Hashable, count: int = 1) -> None:
        """``key`` is reached after ``count`` more ``done(key)`` calls."""
        if count > 0:
            self._left[key] = self._left.get(key, 0) + count

    def left(self, key: Hashable) -> int:
        return self._left.get(key, 0)

    def after(self, item: Any, keys: Iterable[Hashable]) -> list[Any]:
        """Release ``item`` once every key in ``keys`` is reached; returns ``[item]`` when
        they all are already, else ``[]``."""
        pending = [k for k in dict.fromkeys(keys) if self._left.get(k, 0) > 0]
        if not pending:
            return [item]
        self._next += 1
        self._items[self._next] = [item, len(pending)]
        for key in pending:
            self._waiting.setdefault(key, []).append(self._next)
        return []

    def done(self, key: Hashable, count: int = 1) -> list[Any]:
        """``count`` settlements of ``key``; returns the items this released."""
        left = self._left.get(key, 0) - count
        if left > 0:
            self._left[key] = left
            return []
        self._left.pop(key, None)
        released = []
        for ident in self._waiting.pop(key, []):
            entry = self._items[ident]
            entry[1] -= 1
            if not entry[1]:
                released.append((ident, self._items.pop(ident)[0]))
        return [item for _, item in sorted(released, key=lambda pair: pair[0])]

    def waiting(self) -> int:
        """Items registered and not yet released."""
        return len(self._items)
