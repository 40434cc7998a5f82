"""Token buckets for request rates: the arithmetic, and the in-memory implementation.

A bucket holds up to `burst` tokens and gains `rate` per second; a request takes one token
from every bucket it counts against, or from none of them (all or nothing, so a request
refused by its payer's bucket does not also use up its IP's). Refused: how long until every
bucket has a token again, for `Retry-After`. The Redis implementation (gateway/store/redis.py)
runs the same arithmetic in one Lua script, so the check is one round trip shared by replicas.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from cachetools import TLRUCache


@dataclass(frozen=True, slots=True)
class Bucket:
    key: str
    rate: float  # tokens per second
    burst: int  # most tokens held

    @property
    def full_after(self) -> float:
        """Seconds an empty bucket takes to fill: after that its state can be forgotten."""
        return self.burst / self.rate


@runtime_checkable
class TokenBuckets(Protocol):
    async def take_tokens(self, buckets: Sequence[Bucket]) -> float:
        """Take one token from each bucket, or none: 0.0 when taken, else the seconds until
        every bucket holds a token again."""


def refill(tokens: float, last: float, now: float, bucket: Bucket) -> float:
    return min(float(bucket.burst), tokens + max(0.0, now - last) * bucket.rate)


def wait_for(tokens: float, bucket: Bucket) -> float:
    return 0.0 if tokens >= 1.0 else (1.0 - tokens) / bucket.rate


def _expires(_key: str, value: tuple[float, float, float], now: float) -> float:
    return now + value[2]


class MemoryBuckets:
    """This process's buckets (`store: memory`, one process). Bounded: a flood of distinct
    IPs cannot grow memory without limit (the least recently used bucket goes first)."""

    def __init__(self, maxsize: int = 100_000, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        # key -> (tokens, when counted, seconds until full)
        self._state: TLRUCache[str, tuple[float, float, float]] = TLRUCache(
            maxsize=maxsize, ttu=_expires, timer=clock
        )

    async def take_tokens(self, buckets: Sequence[Bucket]) -> float:
        now = self._clock()
        levels = []
        for bucket in buckets:
            tokens, last, _ = self._state.get(bucket.key, (float(bucket.burst), now, 0.0))
            levels.append(refill(tokens, last, now, bucket))
        wait = max((wait_for(t, b) for t, b in zip(levels, buckets, strict=True)), default=0.0)
        if wait > 0:
            return wait
        for tokens, bucket in zip(levels, buckets, strict=True):
            self._state[bucket.key] = (tokens - 1.0, now, bucket.full_after)
        return 0.0


def retry_after(wait: float) -> int:
    """Whole seconds for `Retry-After` (never 0: a client would retry at once)."""
    return max(1, math.ceil(wait))
