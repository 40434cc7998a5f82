"""Kept responses for idempotent retries (the payment-identifier extension): small values
under a key, with a lifetime. `reserve` is set-if-absent (it returns what was there), so two
requests racing with one identifier cannot both go ahead. The Redis implementation is in
gateway/store/redis.py; this is the memory one (`store: memory`, one process)."""

from __future__ import annotations

import time
from typing import Protocol, runtime_checkable

from cachetools import TLRUCache


@runtime_checkable
class KeptResponses(Protocol):
    async def reserve(self, key: str, value: bytes, ttl: float) -> bytes | None:
        """Store `value` unless `key` holds something; None if stored, else what it holds."""

    async def keep(self, key: str, value: bytes, ttl: float) -> None:
        """Replace what `key` holds."""

    async def forget(self, key: str) -> None: ...


def _expires(_key: str, value: tuple[bytes, float], now: float) -> float:
    return now + value[1]


class MemoryKept:
    def __init__(self, maxsize: int = 10_000) -> None:
        # Bounded by count; each value is bounded by `idempotency.keep_body`.
        self._values: TLRUCache[str, tuple[bytes, float]] = TLRUCache(
            maxsize=maxsize, ttu=_expires, timer=time.monotonic
        )

    async def reserve(self, key: str, value: bytes, ttl: float) -> bytes | None:
        held = self._values.get(key)
        if held is not None:
            return held[0]
        self._values[key] = (value, ttl)
        return None

    async def keep(self, key: str, value: bytes, ttl: float) -> None:
        self._values[key] = (value, ttl)

    async def forget(self, key: str) -> None:
        self._values.pop(key, None)
