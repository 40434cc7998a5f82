"""Sign-In-With-X state: who paid for which route (until when) and which sign-in nonces are
spent. Memory for one process; Redis (on the payment store's connection) for replicas.

The SDK's `SIWxStorage` has the same two questions but checks a nonce and spends it in two
calls; here spending is one atomic set-if-absent (`SET NX`), so one signed proof sent to two
replicas at once is accepted by exactly one of them.

A sign-in asks both in one call (`sign_in`: one Lua script, one round trip): the nonce is
spent first, then the payment record read. The nonce is spent whatever the record says: a
proof whose signature checked is single-use, like a payment authorization, so one captured
before its wallet paid cannot be replayed once it has (the SDK's hook spends it only on a
grant). The client loses nothing: every 402 carries a fresh challenge.

In Redis that script runs on a few connections this store keeps for it (borrowed from the
client's pool once, closed with it): that one round trip is most of what a sign-in costs
beyond a free request, and redis-py's per-command pool work was about half its client CPU.
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import time
from collections import OrderedDict
from typing import Protocol

from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import AbstractConnection, ConnectionPool
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .redis import COMMAND_TIMEOUT, RedisStore

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


class _Deadlines:
    """Keys with their deadlines (spent nonces, payment records), bounded, oldest written
    first out. Not cachetools' TLRUCache: its heap of deadlines and LRU bookkeeping cost
    about a dozen Python calls per write and three per lookup, and every sign-in does one of
    each; here a few C calls. Keys expire in about the order they were written (one TTL per
    kind, or per route for payments), so expired ones are dropped from the front; a lookup
    checks the deadline itself, so a key kept behind a longer-lived one is never taken for
    live after its TTL. An `OrderedDict`, not a dict: taking from the front of a plain dict
    rescans its deleted slots."""

    def __init__(self, maxsize: int) -> None:
        self._until: OrderedDict[str, float] = OrderedDict()
        self._maxsize = maxsize

    def spend(self, nonce: str, ttl: float) -> bool:
        """True when this call wrote `nonce` (absent or expired); False when it is live."""
        spent = self._until.get(nonce)
        if spent is not None and spent > time.monotonic():
            return False
        self.put(nonce, ttl)
        return True

    def put(self, key: str, ttl: float) -> None:
        """`key` live for `ttl` seconds from now, whatever it was (at the back)."""
        now = time.monotonic()
        until = self._until
        until.pop(key, None)
        until[key] = now + ttl
        while until and (len(until) > self._maxsize or next(iter(until.values())) <= now):
            until.popitem(last=False)

    def __contains__(self, key: str) -> bool:
        deadline = self._until.get(key)
        return deadline is not None and deadline > time.monotonic()

    def __len__(self) -> int:
        return len(self._until)


class MemorySessions:
    """One process. Bounded, so a flood of sign-ins cannot grow memory without limit."""

    def __init__(self, maxsize: int = 1_000_000) -> None:
        self._key = _PaidKeys()
        self._paid = _Deadlines(maxsize)
        self._nonces = _Deadlines(maxsize)

    async def record_payment(self, route: str, payer: str, ttl: float) -> None:
        self._paid.put(self._key(route, payer), ttl)

    async def has_paid(self, route: str, payer: str) -> bool:
        return self._key(route, payer) in self._paid

    async def spend_nonce(self, nonce: str, ttl: float) -> bool:
        # No await between the check and the write: atomic on one event loop.
        return self._nonces.spend(nonce, ttl)

    async def sign_in(self, route: str, payer: str, nonce: str, nonce_ttl: float) -> SignIn:
        # No await inside: atomic on one event loop, as the script is in Redis.
        if not self._nonces.spend(nonce, nonce_ttl):
            return SignIn.NONCE_USED
        return SignIn.SIGNED_IN if self._key(route, payer) in self._paid else SignIn.NOT_PAID


# KEYS: the nonce, the payment record; ARGV: the nonce's ttl in ms.
# Returns -1: nonce spent before; 1: spent now, paid; 0: spent now, not paid.
_SIGN_IN = """
if not redis.call('SET', KEYS[1], '1', 'NX', 'PX', ARGV[1]) then return -1 end
return redis.call('EXISTS', KEYS[2])
"""
_SIGN_IN_ANSWERS = {-1: SignIn.NONCE_USED, 1: SignIn.SIGNED_IN, 0: SignIn.NOT_PAID}
# EVAL <script> 2: what replaces a sign-in command's head when Redis lost the script.
_EVAL_HEAD = b"*6\r\n$4\r\nEVAL\r\n$%d\r\n%s\r\n$1\r\n2\r\n" % (
    len(_SIGN_IN.encode()),
    _SIGN_IN.encode(),
)
# Connections a store keeps out of redis-py's pool for sign-ins; more sign-ins at once than
# this take the pool's road (same script, same answer, slower).
KEPT_CONNECTIONS = 8


class RedisSessions:
    """Shared by every replica; fails closed (`StoreUnavailable`) as the payment store does."""

    def __init__(self, store: RedisStore) -> None:
        self._store = store
        self._key = _PaidKeys()
        # Both keys of a sign-in are in one slot only off a cluster: there, two commands.
        self._cluster = isinstance(store.client, RedisCluster)
        self._sign_in = store.client.register_script(_SIGN_IN)
        # Borrowed from the client's pool and never given back: its close disconnects them.
        self._pool = (
            None if isinstance(store.client, RedisCluster) else store.client.connection_pool
        )
        self._idle: list[AbstractConnection] = []
        self._kept = 0
        # EVALSHA <sha> 2: the first four parts of every sign-in's command, in RESP.
        self._evalsha_head = (
            b"*6\r\n" + _bulk(b"EVALSHA") + _bulk(self._sign_in.sha.encode()) + _bulk(b"2")
        )

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
            command = self._evalsha_command(nonce_key, paid, ttl)
            answer = await self._store.call_kept(self._on_kept(self._pool, command))
        else:
            keys = [nonce_key, paid]
            answer = int(await self._store.call(self._sign_in(keys=keys, args=[ttl])))
        return _SIGN_IN_ANSWERS[answer]

    async def _on_kept(self, pool: ConnectionPool, command: bytes) -> int:
        """The script on a connection kept for sign-ins: one EVALSHA written, its answer read.
        The pool's road costs about twice the client CPU per call (its lock, its check that
        the connection has nothing unread, its metrics and retry wrappers) on the one store
        round trip of a sign-in. A dropped connection (redis-py's `ConnectionError`, what
        its retry takes) is retried once on a new one, as the pool's retry does (written
        out here: `Retry.call_with_retry` is several Python calls on every call, failing or
        not); anything else leaves the connection closed (it may hold an unread answer), to
        reconnect on its next use."""
        conn = self._idle.pop() if self._idle else await self._borrow(pool)
        try:
            try:
                return await self._evalsha(conn, command)
            except (RedisConnectionError, RedisTimeoutError):
                await conn.disconnect()
                return await self._evalsha(conn, command)
        except BaseException:
            await conn.disconnect(nowait=True)
            raise
        finally:
            self._idle.append(conn)

    def _evalsha_command(self, nonce_key: str, paid: str, ttl_ms: int) -> bytes:
        """EVALSHA of the sign-in script (KEYS: the nonce, the payment record; ARGV: the
        nonce's ttl) in RESP, as redis-py's `pack_command` writes it (its encoder: str as
        UTF-8, int as decimal), in one formatting on a head made once: redis-py's packing
        was about a fifth of the client CPU of a sign-in's round trip."""
        n, p, t = nonce_key.encode(), paid.encode(), b"%d" % ttl_ms
        return b"%s$%d\r\n%s\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (
            self._evalsha_head,
            len(n),
            n,
            len(p),
            p,
            len(t),
            t,
        )

    async def _borrow(self, pool: ConnectionPool) -> AbstractConnection:
        self._kept += 1
        try:
            conn: AbstractConnection = await pool.get_connection()  # type: ignore[no-untyped-call]
        except BaseException:
            self._kept -= 1
            raise
        # One deadline per command, set in `_evalsha`: redis-py's own socket timeout runs
        # each write as a task of its own (`asyncio.wait_for`) and arms a second timer for
        # the read, a measurable share of the call's CPU.
        conn.socket_timeout = None
        return conn

    async def _evalsha(self, conn: AbstractConnection, command: bytes) -> int:
        # A timeout cancels the read: redis-py then closes the connection (an answer may be
        # on its way) and the sign-in fails closed, as the pool's.
        async with asyncio.timeout(COMMAND_TIMEOUT):
            try:
                await conn.send_packed_command(command, False)
                return int(await conn.read_response())
            except NoScriptError:  # Redis restarted or its scripts flushed: EVAL loads it
                await conn.send_packed_command(_EVAL_HEAD + command[len(self._evalsha_head) :])
                return int(await conn.read_response())


def open_sessions(store: object) -> SessionStore:
    """Sessions next to the payment store: in Redis when the payments are, else in memory."""
    if isinstance(store, RedisStore):
        return RedisSessions(store)
    return MemorySessions()


def _bulk(data: bytes) -> bytes:
    """One RESP bulk string."""
    return b"$%d\r\n%s\r\n" % (len(data), data)


def _ms(ttl: float) -> int:
    return max(1, int(ttl * 1000))
