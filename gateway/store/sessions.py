"""Sign-In-With-X state: who paid for which route (until when) and which sign-in nonces are
spent. Memory for one process; Redis (on the payment store's connection) for replicas.

The SDK's `SIWxStorage` has the same two questions but checks a nonce and spends it in two
calls; here spending is one atomic set-if-absent (`SET NX`), so one signed proof sent to two
replicas at once is accepted by exactly one of them.

A sign-in asks both in one call (`sign_in`: in Redis two commands written together, one
round trip): the nonce is spent first, then the payment record read. The nonce is spent
whatever the record says: a proof whose signature checked is single-use, like a payment
authorization, so one captured before its wallet paid cannot be replayed once it has (the
SDK's hook spends it only on a grant). The client loses nothing: every 402 carries a fresh
challenge.

In Redis they are `SET nonce 1 NX PX ttl` then `EXISTS record`, pipelined (not a Lua
script: Redis runs the two plain commands in about two thirds of the script's time, and
there is no script to load again after a restart). Nothing needs them atomic together: the
nonce is spent by the `SET NX` alone, and the record is read after it on the same
connection, so a payment recorded or expiring between them is the same as one a moment
before or after (on Redis Cluster, where the keys sit in different slots, they are two
calls). They run on a few connections this store keeps for sign-ins (borrowed from the
client's pool once, closed with it): that one round trip is most of what a sign-in costs
beyond a free request, and redis-py's per-command pool work was about half its client CPU.
"""

from __future__ import annotations

import enum
import hashlib
import time
from typing import Protocol

from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import AbstractConnection, ConnectionPool
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .expiring import ExpiringMap
from .redis import RedisStore

PAID_PREFIX = "x402:siwx:paid:"
NONCE_PREFIX = "x402:siwx:nonce:"


class SessionStore(Protocol):
    async def record_payment(self, route: str, payer: str, ttl: float) -> None:
        """`payer` paid for `route`: it may sign in there for `ttl` seconds."""

    async def has_paid(self, route: str, payer: str) -> bool: ...

    async def spend_nonce(self, nonce: str, ttl: float) -> bool:
        """True when this call spent `nonce`; False when it was spent before."""

    async def sign_in(self, route: str, payer: str, nonce: str, nonce_ttl: float) -> SignIn:
        """Spend `nonce` (kept `nonce_ttl` seconds), then, if this call spent it, whether
        `payer` paid for `route`: atomically, in one store call."""


class SignIn(enum.Enum):
    """What the store says of a sign-in whose signature checked."""

    SIGNED_IN = "signed_in"  # nonce spent by this call, payment on record
    NOT_PAID = "not_paid"  # nonce spent by this call, no payment on record
    NONCE_USED = "nonce_used"  # spent before: nothing read


def paid_key(route: str, payer: str) -> str:
    return f"{route_prefix(route)}{payer.lower()}"


def route_prefix(route: str) -> str:
    # Route patterns are operator text of any length: hash them into a fixed-size key.
    return f"{PAID_PREFIX}{hashlib.sha256(route.encode()).hexdigest()[:32]}:"


class _PaidKeys:
    """`paid_key`, with each route's hash made once (routes are few and fixed by the config;
    bounded all the same, as a store outlives reloads: emptied when full). A plain dict, not
    an LRU cache: its lookup is one C call per sign-in instead of four Python ones."""

    def __init__(self, maxsize: int = 4096) -> None:
        self._prefixes: dict[str, str] = {}
        self._maxsize = maxsize

    def __call__(self, route: str, payer: str) -> str:
        prefix = self._prefixes.get(route)
        if prefix is None:
            if len(self._prefixes) >= self._maxsize:
                self._prefixes.clear()
            prefix = self._prefixes[route] = route_prefix(route)
        return f"{prefix}{payer.lower()}"


class MemorySessions:
    """One process. Bounded, so a flood of sign-ins cannot grow memory without limit.

    Spent nonces and payment records in `ExpiringMap`s (the memory claims' map: a few C
    calls a write or a read, where cachetools' TLRUCache cost about a dozen Python calls a
    write and three a read, and every sign-in does one of each), each entry's value its own
    lifetime in seconds."""

    def __init__(self, maxsize: int = 1_000_000) -> None:
        self._key = _PaidKeys()
        self._paid: ExpiringMap[float] = ExpiringMap(maxsize, float, time.monotonic)
        self._nonces: ExpiringMap[float] = ExpiringMap(maxsize, float, time.monotonic)

    async def record_payment(self, route: str, payer: str, ttl: float) -> None:
        self._paid[self._key(route, payer)] = ttl

    async def has_paid(self, route: str, payer: str) -> bool:
        return self._paid.get(self._key(route, payer)) is not None

    async def spend_nonce(self, nonce: str, ttl: float) -> bool:
        # No await between the check and the write: atomic on one event loop.
        return self._nonces.add(nonce, ttl) is None

    async def sign_in(self, route: str, payer: str, nonce: str, nonce_ttl: float) -> SignIn:
        # No await inside: atomic on one event loop, as the two commands are in Redis.
        if self._nonces.add(nonce, nonce_ttl) is not None:
            return SignIn.NONCE_USED
        paid = self._paid.get(self._key(route, payer)) is not None
        return SignIn.SIGNED_IN if paid else SignIn.NOT_PAID


# A sign-in's two commands, to fill with the nonce's key, its ttl in ms and the record's key.
_SIGN_IN_COMMANDS = (
    b"*6\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$1\r\n1\r\n$2\r\nNX\r\n$2\r\nPX\r\n$%d\r\n%s\r\n"
    b"*2\r\n$6\r\nEXISTS\r\n$%d\r\n%s\r\n"
)
# Connections a store keeps out of redis-py's pool for sign-ins; more sign-ins at once than
# this take the pool's road (the same two commands, the same answer, slower).
KEPT_CONNECTIONS = 8


class RedisSessions:
    """Shared by every replica; fails closed (`StoreUnavailable`) as the payment store does."""

    def __init__(self, store: RedisStore) -> None:
        self._store = store
        self._key = _PaidKeys()
        # Both keys of a sign-in are in one slot only off a cluster: there, two commands.
        self._cluster = isinstance(store.client, RedisCluster)
        # Borrowed from the client's pool and never given back: its close disconnects them.
        self._pool = (
            None if isinstance(store.client, RedisCluster) else store.client.connection_pool
        )
        self._idle: list[AbstractConnection] = []
        self._kept = 0

    async def record_payment(self, route: str, payer: str, ttl: float) -> None:
        client = self._store.client
        await self._store.call(client.set(self._key(route, payer), "1", px=_ms(ttl)))

    async def has_paid(self, route: str, payer: str) -> bool:
        client = self._store.client
        return bool(await self._store.call(client.exists(self._key(route, payer))))

    async def spend_nonce(self, nonce: str, ttl: float) -> bool:
        client = self._store.client
        spent = await self._store.call(client.set(NONCE_PREFIX + nonce, "1", nx=True, px=_ms(ttl)))
        return bool(spent)

    async def sign_in(self, route: str, payer: str, nonce: str, nonce_ttl: float) -> SignIn:
        if self._cluster:
            if not await self.spend_nonce(nonce, nonce_ttl):
                return SignIn.NONCE_USED
            return SignIn.SIGNED_IN if await self.has_paid(route, payer) else SignIn.NOT_PAID
        nonce_key, paid = NONCE_PREFIX + nonce, self._key(route, payer)
        ttl = _ms(nonce_ttl)
        if self._pool is not None and (self._idle or self._kept < KEPT_CONNECTIONS):
            command = _sign_in_command(nonce_key, paid, ttl)
            spent, known = await self._store.call_kept(self._on_kept(self._pool, command))
        else:
            spent, known = await self._store.call(self._pipelined(nonce_key, paid, ttl))
        if spent is None:  # SET NX answers nil when the key is there
            return SignIn.NONCE_USED
        return SignIn.SIGNED_IN if known else SignIn.NOT_PAID

    async def _pipelined(self, nonce_key: str, paid: str, ttl: int) -> tuple[object, int]:
        """The sign-in's two commands through the client's pool, in one round trip."""
        async with self._store.client.pipeline(transaction=False) as pipe:
            pipe.set(nonce_key, "1", nx=True, px=ttl)
            pipe.exists(paid)
            spent, known = await pipe.execute()
        return spent, int(known)

    async def _on_kept(self, pool: ConnectionPool, command: bytes) -> tuple[object, int]:
        """The sign-in on a connection kept for sign-ins: its two commands written at once,
        their answers read. The pool's road costs about twice the client CPU per call (its
        lock, its check that the connection has nothing unread, its metrics and retry
        wrappers) on the one store round trip of a sign-in. A dropped connection
        (redis-py's `ConnectionError`, what its retry takes) is retried once on a new one,
        as the pool's retry does (written out here: `Retry.call_with_retry` is several
        Python calls on every call, failing or not); anything else leaves the connection
        closed (it may hold an unread answer), to reconnect on its next use."""
        conn = self._idle.pop() if self._idle else await self._borrow(pool)
        try:
            try:
                return await self._round_trip(conn, command)
            except (RedisConnectionError, RedisTimeoutError):
                await conn.disconnect()
                return await self._round_trip(conn, command)
        except BaseException:
            await conn.disconnect(nowait=True)
            raise
        finally:
            self._idle.append(conn)

    async def _borrow(self, pool: ConnectionPool) -> AbstractConnection:
        self._kept += 1
        try:
            conn: AbstractConnection = await pool.get_connection()  # type: ignore[no-untyped-call]
        except BaseException:
            self._kept -= 1
            raise
        return conn

    @staticmethod
    async def _round_trip(conn: AbstractConnection, command: bytes) -> tuple[object, int]:
        # No deadline here: the store call's (`RedisStore._call`, one per sign-in; the
        # pool's connections have no socket timeout). It cancels the read: `_on_kept` then
        # closes the connection (an answer may be on its way) and the sign-in fails closed,
        # as the pool's. An error answer to the SET is raised before the EXISTS answer is
        # read: `_on_kept` closes the connection, so that answer is never read as the next
        # sign-in's.
        await conn.send_packed_command(command, False)
        spent = await conn.read_response()
        return spent, int(await conn.read_response())


def open_sessions(store: object) -> SessionStore:
    """Sessions next to the payment store: in Redis when the payments are, else in memory."""
    if isinstance(store, RedisStore):
        return RedisSessions(store)
    return MemorySessions()


def _sign_in_command(nonce_key: str, paid: str, ttl_ms: int) -> bytes:
    """`SET <nonce_key> 1 NX PX <ttl_ms>` then `EXISTS <paid>` in RESP, as redis-py's
    `pack_command` writes them (its encoder: str as UTF-8, int as decimal), in one
    formatting: redis-py's packing was about a fifth of the client CPU of a sign-in's round
    trip."""
    n, p, t = nonce_key.encode(), paid.encode(), b"%d" % ttl_ms
    return _SIGN_IN_COMMANDS % (len(n), n, len(t), t, len(p), p)


def _ms(ttl: float) -> int:
    return max(1, int(ttl * 1000))
