"""What each payer spent today, for `limits.daily_spend`: counters with a lifetime. The Redis
implementation is in gateway/store/redis.py; this is the memory one (`store: memory`)."""

from __future__ import annotations

import time
from typing import Protocol, runtime_checkable

from cachetools import TLRUCache


@runtime_checkable
class SpendCounters(Protocol):
    async def spent(self, key: str) -> int:
        """The counter's value (0 when absent)."""

    async def add_spent(self, key: str, amount: int, ttl: float) -> None:
        """Add `amount`; the counter lives `ttl` seconds from its first addition."""


def _expires(_key: str, value: tuple[int, float], now: float) -> float:
    return now + value[1]


class MemorySpend:
    def __init__(self, maxsize: int = 100_000) -> None:
        self._counts: TLRUCache[str, tuple[int, float]] = TLRUCache(
            maxsize=maxsize, ttu=_expires, timer=time.monotonic
        )

    async def spent(self, key: str) -> int:
        held = self._counts.get(key)
        return held[0] if held is not None else 0

    async def add_spent(self, key: str, amount: int, ttl: float) -> None:
        held = self._counts.get(key)
        if held is None:
            self._counts[key] = (amount, ttl)
        else:  # keep the first lifetime: replacing resets the item's expiry from now
            self._counts[key] = (held[0] + amount, held[1])
