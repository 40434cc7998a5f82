"""Who claims batch-settlement channels now: one replica at a time (issue 14, claims).

A claim round holds a lease: `SET lock token NX PX ttl` in Redis, renewed while the round
runs, deleted at its end only by its holder (compare-and-delete). The token is a fencing
token: a number from one `INCR`, larger for each lease ever taken. A holder that stalled
past its lease (a GC pause, a partition) and comes back is fenced off where it writes:
the round's marks (when each target was last claimed, which targets owe a settle) are
written by a script that refuses a token other than the lock's current one, and the
scheduler checks the lease before each claim it sends. A claim sent by a stale holder
anyway is harmless on chain (vouchers are cumulative: claiming a total again moves
nothing), so the lease saves gas and keeps the marks true; it is not what keeps money safe.

Memory: the same in one process (one gateway process holds the memory store's channels).
Every key shares one hash tag, so a Redis Cluster puts them in one slot.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from ..errors import StoreUnavailable

LOCK_KEY = "x402:{channels}:claim-lock"
FENCE_KEY = "x402:{channels}:claim-fence"
MARKS_KEY = "x402:{channels}:claim-marks"  # hash: "<target>|claimed" -> ms, "<target>|settle" -> 1

# Renew: extend the lease only while it is still ours.
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
# Release: delete the lease only while it is still ours.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
# Fenced write of one mark: refused unless the caller's token is the lock's current one.
_MARK = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if ARGV[3] == '' then redis.call('HDEL', KEYS[2], ARGV[2])
else redis.call('HSET', KEYS[2], ARGV[2], ARGV[3]) end
return 1
"""


@dataclass(frozen=True, slots=True)
class Lease:
    """One claim round's hold on the lock: `token` grows with every lease ever taken."""

    token: int
    value: str  # what the lock key holds: "<token>:<random>"
    ttl: float


class ClaimLock(Protocol):
    async def acquire(self, ttl: float) -> Lease | None:
        """The lease, or None while another holder has it."""

    async def renew(self, lease: Lease) -> bool:
        """Extend the lease by its ttl; False when it is no longer ours."""

    async def held(self, lease: Lease) -> bool:
        """Whether the lease is still ours (checked before each claim is sent)."""

    async def release(self, lease: Lease) -> None: ...

    async def marks(self) -> dict[str, str]:
        """Every mark: "<target>|claimed" -> last claim (ms), "<target>|settle" -> "1"."""

    async def mark(self, lease: Lease, name: str, value: str | None) -> bool:
        """Set (or, with None, clear) one mark; False (nothing written) unless `lease` holds
        the lock now: the fence."""


class MemoryClaimLock:
    """The lock and marks of one process."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._tokens = 0
        self._holder: tuple[str, float] | None = None  # (value, expires at)
        self._marks: dict[str, str] = {}

    def _current(self) -> str | None:
        if self._holder is None or self._holder[1] <= self._clock():
            return None
        return self._holder[0]

    async def acquire(self, ttl: float) -> Lease | None:
        if self._current() is not None:
            return None
        self._tokens += 1
        lease = Lease(self._tokens, f"{self._tokens}:{secrets.token_hex(8)}", ttl)
        self._holder = (lease.value, self._clock() + ttl)
        return lease

    async def renew(self, lease: Lease) -> bool:
        if self._current() != lease.value:
            return False
        self._holder = (lease.value, self._clock() + lease.ttl)
        return True

    async def held(self, lease: Lease) -> bool:
        return self._current() == lease.value

    async def release(self, lease: Lease) -> None:
        if self._current() == lease.value:
            self._holder = None

    async def marks(self) -> dict[str, str]:
        return dict(self._marks)

    async def mark(self, lease: Lease, name: str, value: str | None) -> bool:
        if self._current() != lease.value:
            return False
        if value is None:
            self._marks.pop(name, None)
        else:
            self._marks[name] = value
        return True


class RedisClaimLock:
    """The lock and marks in the store's Redis. `client` is a `redis.asyncio` client; `call`
    wraps each command (the store's: `StoreUnavailable` on failure, backoff)."""

    def __init__(self, client: Any, call: Callable[[Awaitable[Any]], Awaitable[Any]]) -> None:
        self._redis = client
        self._call = call

    async def acquire(self, ttl: float) -> Lease | None:
        if await self._call(self._redis.exists(LOCK_KEY)):
            return None  # held: do not spend a token on a certain refusal
        token = int(await self._call(self._redis.incr(FENCE_KEY)))
        lease = Lease(token, f"{token}:{secrets.token_hex(8)}", ttl)
        won = await self._call(self._redis.set(LOCK_KEY, lease.value, nx=True, px=_ms(ttl)))
        return lease if won else None

    async def renew(self, lease: Lease) -> bool:
        done = await self._call(self._redis.eval(_RENEW, 1, LOCK_KEY, lease.value, _ms(lease.ttl)))
        return bool(done)

    async def held(self, lease: Lease) -> bool:
        return _text(await self._call(self._redis.get(LOCK_KEY))) == lease.value

    async def release(self, lease: Lease) -> None:
        await self._call(self._redis.eval(_RELEASE, 1, LOCK_KEY, lease.value))

    async def marks(self) -> dict[str, str]:
        raw = await self._call(self._redis.hgetall(MARKS_KEY))
        return {_text(k): _text(v) for k, v in raw.items()}

    async def mark(self, lease: Lease, name: str, value: str | None) -> bool:
        script = self._redis.eval(_MARK, 2, LOCK_KEY, MARKS_KEY, lease.value, name, value or "")
        return bool(await self._call(script))


def open_claim_lock(store: object) -> ClaimLock:
    """Beside the payment records: in their Redis when they are there, else in process."""
    from .redis import RedisStore

    if isinstance(store, RedisStore):
        return RedisClaimLock(store.client, store.call)
    return MemoryClaimLock()


async def keep_renewing(lock: ClaimLock, lease: Lease, lost: asyncio.Event) -> None:
    """Renew `lease` every third of its ttl until cancelled; set `lost` when it lapses."""
    while True:
        await asyncio.sleep(lease.ttl / 3)
        try:
            still = await lock.renew(lease)
        except StoreUnavailable:
            still = False  # cannot tell: assume it lapses, stop claiming
        if not still:
            lost.set()
            return


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


def _text(value: bytes | str | None) -> str:
    if value is None:
        return ""
    return value.decode() if isinstance(value, bytes) else value
