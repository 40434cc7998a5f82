"""Claims in this process's memory: one gateway process only (`check` refuses it with
`workers` > 1). Expiry per item comes from `ExpiringMap` (each claim its own ttl); bounded
so a flood of distinct payments cannot grow memory without limit."""

from __future__ import annotations

import operator
import time
from collections import deque
from collections.abc import Sequence

from .buckets import Bucket, MemoryBuckets
from .expiring import ExpiringMap
from .kept import MemoryKept
from .records import RELEASABLE, PaymentRecord, latest_per_request
from .spend import MemorySpend


def _same(held: PaymentRecord, record: PaymentRecord) -> bool:
    """`held` is `record`'s request's claim, in `record`'s status."""
    return (held.request_id, held.status) == (record.request_id, record.status)


class MemoryStore:
    def __init__(self, maxsize: int = 1_000_000, history: int = 10_000) -> None:
        # Single-threaded asyncio: every method below runs without an await between its
        # check and its write, which is what makes claim() atomic here.
        # (record, ttl): each claim lives `ttl` seconds past its last write
        self._claims: ExpiringMap[tuple[PaymentRecord, float]] = ExpiringMap(
            maxsize, operator.itemgetter(1), time.monotonic
        )
        self._history: deque[PaymentRecord] = deque(maxlen=history)
        self.holder = "memory"
        self._buckets = MemoryBuckets()
        self._kept = MemoryKept()
        self._spend = MemorySpend()

    async def claim(self, key: str, record: PaymentRecord, ttl: float) -> PaymentRecord | None:
        held = self._claims.add(key, (record, ttl))
        if held is not None:
            return held[0]
        self._history.appendleft(record)
        return None

    async def update(self, key: str, record: PaymentRecord, ttl: float) -> None:
        self._claims[key] = (record, ttl)
        self._history.appendleft(record)

    def holds(self, key: str, record: PaymentRecord) -> bool:
        """The claim under `key` is still `record`'s request, in `record`'s status."""
        held = self._claims.get(key)
        return held is not None and _same(held[0], record)

    async def release(self, key: str, request_id: str) -> None:
        held = self._claims.get(key)
        # As the Redis script: only our own claim, and only while nothing may be charged.
        if held is None or held[0].request_id != request_id:
            return
        if held[0].status in RELEASABLE:
            del self._claims[key]
            if held[0].status == "claimed":  # a failed settlement keeps `failed` as its last word
                self._history.appendleft(held[0].with_status("released"))

    async def recent(self, limit: int) -> list[PaymentRecord]:
        return latest_per_request(self._history, limit)

    async def ping(self) -> None:
        return None

    async def alive(self, holder: str | None) -> bool:
        return holder == self.holder  # this process's memory: its own claims only

    async def replace(
        self,
        key: str,
        expect: PaymentRecord,
        record: PaymentRecord,
        ttl: float,
        history: tuple[PaymentRecord, ...] = (),
    ) -> bool:
        held = self._claims.get(key)  # one lookup
        if held is None or not _same(held[0], expect):
            return False
        self._claims[key] = (record, ttl if ttl > 0 else held[1])  # 0: keep the expiry
        for entry in (*history, record):
            self._history.appendleft(entry)
        return True

    async def take_tokens(self, buckets: Sequence[Bucket]) -> float:
        return await self._buckets.take_tokens(buckets)

    async def reserve(self, key: str, value: bytes, ttl: float) -> bytes | None:
        return await self._kept.reserve(key, value, ttl)

    async def keep(self, key: str, value: bytes, ttl: float) -> None:
        await self._kept.keep(key, value, ttl)

    async def forget(self, key: str) -> None:
        await self._kept.forget(key)

    async def spent(self, key: str) -> int:
        return await self._spend.spent(key)

    async def add_spent(self, key: str, amount: int, ttl: float) -> None:
        await self._spend.add_spent(key, amount, ttl)

    async def close(self) -> None:
        return None
