"""A bounded map whose every entry expires after its own lifetime: the memory store's claims.

cachetools' `TLRUCache` did this at ~50 Python calls a claim (its expiry heap orders Python
objects with `__lt__`, and every write also reorders its LRU list); a claim is on every paid
request's path, so here the same contract costs a handful: the heap holds plain
`(expires, key)` tuples (ordered in C) and the entries a plain dict.

- `get`: the live value, None once its lifetime has passed (as `TLRUCache`: `expires <=
  now` is gone);
- a write sets a new lifetime (the value's `ttl`), and drops every entry whose lifetime
  passed (their heap heads, each once);
- bounded: past `maxsize` entries, the soonest to expire go first (`TLRUCache` dropped the
  least recently used; a claim is never read after its request, so LRU order said nothing
  more than age).

Heap entries of a key written again (or deleted) stay until their time, then are skipped;
the heap is rebuilt from the live entries when such stale ones outnumber them.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from typing import Generic, TypeVar

V = TypeVar("V")

_SLACK = 64  # stale heap entries tolerated beyond the live ones before a rebuild


class ExpiringMap(Generic[V]):
    """str -> V, each entry kept `ttl(value)` seconds of `timer` after its last write."""

    def __init__(self, maxsize: int, ttl: Callable[[V], float], timer: Callable[[], float]) -> None:
        self._maxsize = maxsize
        self._ttl = ttl
        self._timer = timer
        self._items: dict[str, tuple[V, float]] = {}  # key: (value, expires)
        self._heap: list[tuple[float, str]] = []  # (expires, key), stale ones included

    def get(self, key: str) -> V | None:
        found = self._items.get(key)
        if found is None or found[1] <= self._timer():
            return None
        return found[0]

    def add(self, key: str, value: V) -> V | None:
        """Set-if-absent: the live value under `key` (nothing written), or None once `value`
        is written (one clock read for both)."""
        now = self._timer()
        found = self._items.get(key)
        if found is not None and now < found[1]:
            return found[0]
        self._write(key, value, now)
        return None

    def __setitem__(self, key: str, value: V) -> None:
        self._write(key, value, self._timer())

    def _write(self, key: str, value: V, now: float) -> None:
        expires = now + self._ttl(value)
        items, heap = self._items, self._heap
        items[key] = (value, expires)
        heapq.heappush(heap, (expires, key))
        count = len(items)  # before any drop: a rebuild is only put off a little
        if heap[0][0] <= now or count > self._maxsize:
            self._drop(now)
        if len(heap) > 2 * count + _SLACK:
            self._heap = [(entry[1], k) for k, entry in self._items.items()]
            heapq.heapify(self._heap)

    def __delitem__(self, key: str) -> None:
        del self._items[key]

    def __len__(self) -> int:
        return len(self._items)

    def _drop(self, now: float) -> None:
        """Every entry whose lifetime has passed, then the soonest to expire past `maxsize`."""
        heap, items = self._heap, self._items
        while heap and (heap[0][0] <= now or len(items) > self._maxsize):
            expires, key = heapq.heappop(heap)
            found = items.get(key)
            if found is not None and found[1] == expires:  # not written again since
                del items[key]
