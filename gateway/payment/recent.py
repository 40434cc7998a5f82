"""Bounded in-process caches of the request path, in plain `OrderedDict`s: a hit is C calls
only (`get`, `move_to_end`), where cachetools' `LRUCache` costs about four Python calls, and
these are looked up on every voucher or sign-in. One writer for all of them (`keep`)."""

from __future__ import annotations

from collections import OrderedDict
from typing import TypeVar

K = TypeVar("K")
V = TypeVar("V")


def keep(kept: OrderedDict[K, V], key: K, value: V, maxsize: int) -> None:
    """`kept[key] = value` as the most recently used, the least recently used out when full."""
    kept[key] = value
    kept.move_to_end(key)
    while len(kept) > maxsize:
        kept.popitem(last=False)
