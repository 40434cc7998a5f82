"""Sign-In-With-X state: who paid for which route (until when) and which sign-in nonces are
spent. Memory for one process; Redis (on the payment store's connection) for replicas.

The SDK's `SIWxStorage` has the same two questions but checks a nonce and spends it in two
calls; here spending is one atomic set-if-absent (`SET NX`), so one signed proof sent to two
replicas at once is accepted by exactly one of them.
"""

from __future__ import annotations

import hashlib
import time
from typing import Protocol

from cachetools import TLRUCache

from .redis import RedisStore

PAID_PREFIX = "x402:siwx:paid:"
NONCE_PREFIX = "x402:siwx:nonce:"


class SessionStore(Protocol):
    async def record_payment(self, route: str, payer: str, ttl: float) -> None:
        """`payer` paid for `route`: it may sign in there for `ttl` seconds."""

    async def has_paid(self, route: str, payer: str) -> bool: ...

    async def spend_nonce(self, nonce: str, ttl: float) -> bool:
        """True when this call spent `nonce`; False when it was spent before."""


def paid_key(route: str, payer: str) -> str:
    # Route patterns are operator text of any length: hash them into a fixed-size key.
    digest = hashlib.sha256(route.encode()).hexdigest()[:32]
    return f"{PAID_PREFIX}{digest}:{payer.lower()}"


def _expires(_key: str, value: float, now: float) -> float:
    return value  # the value is the deadline itself (time.monotonic() based)


class MemorySessions:
    """One process. Bounded, so a flood of sign-ins cannot grow memory without limit."""

    def __init__(self, maxsize: int = 1_000_000) -> None:
        self._paid: TLRUCache[str, float] = TLRUCache(
            maxsize=maxsize, ttu=_expires, timer=time.monotonic
        )
        self._nonces: TLRUCache[str, float] = TLRUCache(
            maxsize=maxsize, ttu=_expires, timer=time.monotonic
        )

    async def record_payment(self, route: str, payer: str, ttl: float) -> None:
        self._paid[paid_key(route, payer)] = time.monotonic() + ttl

    async def has_paid(self, route: str, payer: str) -> bool:
        return paid_key(route, payer) in self._paid

    async def spend_nonce(self, nonce: str, ttl: float) -> bool:
        # No await between the check and the write: atomic on one event loop.
        if nonce in self._nonces:
            return False
        self._nonces[nonce] = time.monotonic() + ttl
        return True


class RedisSessions:
    """Shared by every replica; fails closed (`StoreUnavailable`) as the payment store does."""

    def __init__(self, store: RedisStore) -> None:
        self._store = store

    async def record_payment(self, route: str, payer: str, ttl: float) -> None:
        client = self._store.client
        await self._store.call(client.set(paid_key(route, payer), "1", px=_ms(ttl)))

    async def has_paid(self, route: str, payer: str) -> bool:
        client = self._store.client
        return bool(await self._store.call(client.exists(paid_key(route, payer))))

    async def spend_nonce(self, nonce: str, ttl: float) -> bool:
        client = self._store.client
        spent = await self._store.call(client.set(NONCE_PREFIX + nonce, "1", nx=True, px=_ms(ttl)))
        return bool(spent)


def open_sessions(store: object) -> SessionStore:
    """Sessions next to the payment store: in Redis when the payments are, else in memory."""
    if isinstance(store, RedisStore):
        return RedisSessions(store)
    return MemorySessions()


def _ms(ttl: float) -> int:
    return max(1, int(ttl * 1000))
