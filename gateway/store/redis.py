"""Claims and records in Redis, shared by every replica and worker.

A claim is one `SET key value NX PX ttl` (atomic set-if-absent with expiry). Releasing must
only delete a claim we still hold, which is a compare-and-delete: one small Lua script,
because that one round trip has to do two things. Each record change also goes to a capped
stream (`x402:payments`) for `x402-gateway payments`.

URLs (parsed in `redis_url`): `redis://`, `rediss://`, `unix://` (one server, redis-py's own
options), `redis+sentinel://host1,host2/service_name` (the master Sentinel names, followed
through failovers), `redis://host1,host2?cluster=true` (Redis Cluster; claims spread over
its slots, the record and its history entry are then written in two steps instead of one
transaction, because they live in different slots). Valkey and managed Redis speak the same.

Unreachable: every call fails closed with `StoreUnavailable`, and `Backoff` leaves the
server alone for a growing delay (fail fast, then reconnect on the first call after it);
redis-py's connection pool makes the new connection itself. redis-py would otherwise retry
a failed command ten times with backoff up to a second: here it retries once, which is what
a pooled connection that went stale while Redis restarted needs, and no more.

Hung (a server that takes the command and never answers): each store call has one deadline,
`COMMAND_TIMEOUT`, set in `_call` around the whole call (its connect, its retry, its round
trips), and fails closed the same way. Everything in the gateway that talks to this client
does so through `_call` (`call`, `call_kept`: the sign-ins, the channel writer, the claim
lock), so the pool's connections need no socket timeout of their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import RedisError

from ..errors import StoreUnavailable
from .backoff import Backoff
from .buckets import Bucket
from .records import PaymentRecord, latest_per_request
from .redis_url import RedisTarget, parse_redis_url

# Claim: take the key unless held, and log the claimed record; else hand back the holder.
_CLAIM = """
local held = redis.call('GET', KEYS[1])
if held then return held end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', 'r', ARGV[1])
return false
"""
# Release: delete the claim only if this request still holds it and nothing may have been
# charged (`claimed`, or `failed`: the facilitator refused). A claim with no outcome yet is
# logged as released (one whose settlement failed keeps `failed` as its last word). A record
# in `settling` (or anything after it but `failed`) is never deleted here, whatever the
# caller believes: that is the store's half of "never release while settling".
_RELEASE = """
local v = redis.call('GET', KEYS[1])
if not v then return false end
local r = cjson.decode(v)
if r['request_id'] ~= ARGV[1] then return false end
if r['status'] ~= 'claimed' and r['status'] ~= 'failed' then return false end
redis.call('DEL', KEYS[1])
if r['status'] ~= 'claimed' then return false end
r['status'] = 'released'
local t = redis.call('TIME')
r['updated_at'] = tonumber(t[1]) + tonumber(t[2]) / 1000000
local released = cjson.encode(r)
if #KEYS == 2 then
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', 'r', released)
end
return released
"""
# Replace: swap the record of a claim whose holder is gone, only if it is still the record the
# caller judged (same request, same status): a takeover or a reconcile, never a lost update.
# The key holding exactly the new record is this very swap, its answer lost and the command
# sent again (redis-py's one retry): done, not a conflict (the record names its request and
# its time, so no other writer's is the same text).
_REPLACE = """
local v = redis.call('GET', KEYS[1])
if not v then return 0 end
if v == ARGV[3] then return 1 end
local r = cjson.decode(v)
if r['request_id'] ~= ARGV[1] or r['status'] ~= ARGV[2] then return 0 end
if ARGV[4] == '0' then
  redis.call('SET', KEYS[1], ARGV[3], 'KEEPTTL')
else
  redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[4])
end
if #KEYS == 2 then
  for i = 6, #ARGV do
    redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[5], '*', 'r', ARGV[i])
  end
end
return 1
"""
# Token buckets (gateway/store/buckets.py), all or nothing: ARGV holds (rate per ms, burst)
# per key. Redis's own clock, so replicas agree; state is forgotten once a bucket is full.
_TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local levels, wait = {}, 0
for i, key in ipairs(KEYS) do
  local rate, burst = tonumber(ARGV[2 * i - 1]), tonumber(ARGV[2 * i])
  local b = redis.call('HMGET', key, 'n', 'at')
  local n, at = tonumber(b[1]) or burst, tonumber(b[2]) or now
  n = math.min(burst, n + math.max(0, now - at) * rate)
  levels[i] = n
  if n < 1 then wait = math.max(wait, (1 - n) / rate) end
end
if wait > 0 then return math.ceil(wait) end
for i, key in ipairs(KEYS) do
  local rate, burst = tonumber(ARGV[2 * i - 1]), tonumber(ARGV[2 * i])
  redis.call('HSET', key, 'n', tostring(levels[i] - 1), 'at', tostring(now))
  redis.call('PEXPIRE', key, math.ceil(burst / rate) + 1000)
end
return 0
"""
# Reserve a kept response's key (gateway/store/kept.py): set unless held; hand back the holder.
_RESERVE = """
local held = redis.call('GET', KEYS[1])
if held then return held end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return false
"""
# Add to a payer's daily spend; the first addition starts the counter's lifetime.
_ADD_SPENT = """
local v = redis.call('INCRBY', KEYS[1], ARGV[1])
if v == tonumber(ARGV[1]) then redis.call('EXPIRE', KEYS[1], ARGV[2]) end
return v
"""
HISTORY_KEY = "x402:payments"
ALIVE_PREFIX = "x402:alive:"  # + a holder id: present while that process runs
ALIVE_TTL = 15.0  # a holder is gone once its heartbeat is this old
ALIVE_EVERY = 5.0
HISTORY_LEN = 100_000
CONNECT_TIMEOUT = 2.0
COMMAND_TIMEOUT = 2.0
# Commands in flight per process. redis-py's pool refuses (MaxConnectionsError) rather than
# waits once it has 100 connections, so a burst of paid requests would read as "Redis is
# down": they queue here instead, and the pool is sized so it never runs out.
MAX_CONCURRENT = 64

T = TypeVar("T")
Client = aioredis.Redis | RedisCluster


def _common() -> dict[str, object]:
    return {
        "socket_connect_timeout": CONNECT_TIMEOUT,
        # No socket timeout (redis-py's default is 5 s, hence None, not absent): the deadline
        # is `RedisStore._call`'s, one per store call. redis-py's own runs every write as a
        # task of its own (`asyncio.wait_for`) and arms a timer for every read. A call cut
        # short cancels the read or write, and redis-py then closes that connection (an
        # answer may still be on its way to it), so no caller reads another's answer.
        "socket_timeout": None,
        "retry": Retry(ExponentialWithJitterBackoff(base=0.01, cap=0.05), retries=1),
        "max_connections": 2 * MAX_CONCURRENT,
    }


def connect(target: RedisTarget) -> tuple[Client, Sentinel | None]:
    """The client for a parsed URL (no I/O yet: connections are made on first use)."""
    if target.kind == "sentinel":
        auth = {"username": target.sentinel_username, "password": target.sentinel_password}
        sentinel = Sentinel(  # type: ignore[no-untyped-call]
            list(target.nodes),
            sentinel_kwargs={
                "socket_connect_timeout": CONNECT_TIMEOUT,
                "socket_timeout": COMMAND_TIMEOUT,
                **{k: v for k, v in auth.items() if v is not None},
            },
            **_common(),
        )
        master = sentinel.master_for(
            target.service_name,
            db=target.db,
            username=target.username,
            password=target.password,
            ssl=target.ssl,
            health_check_interval=15,
        )
        return master, sentinel
    if target.kind == "cluster":
        cluster = RedisCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in target.nodes],
            username=target.username,
            password=target.password,
            ssl=target.ssl,
            **_common(),  # type: ignore[arg-type]
        )
        return cluster, None
    return aioredis.from_url(target.url, health_check_interval=15, **_common()), None


class RedisStore:
    def __init__(
        self,
        url: str,
        *,
        backoff: Backoff | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.target = parse_redis_url(url)
        self._redis, self._sentinel = connect(self.target)
        self._cluster = self._redis if isinstance(self._redis, RedisCluster) else None
        self._claim = self._redis.register_script(_CLAIM)
        self._release = self._redis.register_script(_RELEASE)
        self._replace = self._redis.register_script(_REPLACE)
        self._take = self._redis.register_script(_TAKE)
        self._reserve = self._redis.register_script(_RESERVE)
        self._add_spent = self._redis.register_script(_ADD_SPENT)
        self._backoff = backoff or Backoff()
        self._clock = clock
        self._slots = asyncio.Semaphore(MAX_CONCURRENT)
        # This process's claims name it; one heartbeat key says it is still running.
        self.holder = os.urandom(8).hex()
        self._heartbeat: asyncio.Task[None] | None = None

    async def claim(self, key: str, record: PaymentRecord, ttl: float) -> PaymentRecord | None:
        if self._heartbeat is None:
            await self._call(self._beat())  # alive before the first claim names us
            self._heartbeat = asyncio.create_task(self._keep_beating())
        text = record.dumps()
        if self._cluster is None:
            held = await self._call(
                self._claim(keys=[key, HISTORY_KEY], args=[text, _ms(ttl), HISTORY_LEN])
            )
        else:
            held = await self._call(self._cluster_claim(self._cluster, key, text, ttl))
        if held is None:
            return None
        found = PaymentRecord.loads(held)
        # Our own write may have landed before its answer was lost (the one retry after a
        # dropped connection then finds it): that claim is ours, not a conflict.
        return None if found.request_id == record.request_id else found

    async def update(self, key: str, record: PaymentRecord, ttl: float) -> None:
        text = record.dumps()
        if self._cluster is not None:
            # Key and stream sit in different slots: no transaction can hold both. The
            # claim's record is the truth; the stream entry is the operator's copy.
            await self._call(self._cluster.set(key, text, px=_ms(ttl)))
            await self._call(self._history(self._cluster, text))
            return

        async def both() -> None:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.set(key, text, px=_ms(ttl))
                pipe.xadd(HISTORY_KEY, {"r": text}, maxlen=HISTORY_LEN, approximate=True)
                await pipe.execute()

        await self._call(both())

    async def release(self, key: str, request_id: str) -> None:
        if self._cluster is None:
            await self._call(self._release(keys=[key, HISTORY_KEY], args=[request_id, HISTORY_LEN]))
            return
        released = await self._call(self._release(keys=[key], args=[request_id]))
        if released is not None:
            await self._call(self._history(self._cluster, released))

    async def recent(self, limit: int) -> list[PaymentRecord]:
        """Each request's newest record, newest first (the stream holds every change)."""
        return latest_per_request(await self._changes(limit), limit)

    async def _changes(self, limit: int) -> list[PaymentRecord]:
        # A request has two or three changes: read pages until `limit` requests are seen,
        # each page a store call of its own (its own deadline: a long history is many).
        page = max(3 * limit, 100)
        changes: list[PaymentRecord] = []
        top = "+"
        while len({c.request_id for c in changes}) < limit:
            read = self._redis.xrevrange(HISTORY_KEY, max=top, count=page)
            rows = await self._call(read) or []
            changes += [PaymentRecord.loads(fields[b"r"]) for _id, fields in rows if fields]
            if len(rows) < page:
                break
            top = "(" + _text(rows[-1][0])
        return changes

    async def ping(self) -> None:
        await self._call(self._redis.ping())

    async def alive(self, holder: str | None) -> bool:
        if holder is None:
            return False  # written by a version without heartbeats
        return bool(await self._call(self._redis.exists(ALIVE_PREFIX + holder)))

    async def replace(
        self,
        key: str,
        expect: PaymentRecord,
        record: PaymentRecord,
        ttl: float,
        history: tuple[PaymentRecord, ...] = (),
    ) -> bool:
        entries = [r.dumps() for r in (*history, record)]
        keep = 0 if ttl <= 0 else _ms(ttl)  # 0: keep the claim's expiry
        args: list[str | int] = [
            expect.request_id,
            expect.status,
            record.dumps(),
            keep,
            HISTORY_LEN,
        ]
        if self._cluster is None:
            done = await self._call(self._replace(keys=[key, HISTORY_KEY], args=[*args, *entries]))
            return bool(done)
        done = await self._call(self._replace(keys=[key], args=args))
        for text in entries if done else ():
            await self._call(self._history(self._cluster, text))
        return bool(done)

    async def _beat(self) -> None:
        await self._redis.set(ALIVE_PREFIX + self.holder, "1", px=_ms(ALIVE_TTL))

    async def _keep_beating(self) -> None:
        while True:
            await asyncio.sleep(ALIVE_EVERY)
            try:
                await self._call(self._beat())
            except StoreUnavailable:
                continue  # the claims fail closed meanwhile; the next beat may get through

    async def reserve(self, key: str, value: bytes, ttl: float) -> bytes | None:
        held = await self._call(self._reserve(keys=[key], args=[value, _ms(ttl)]))
        return None if held is None else bytes(held)

    async def keep(self, key: str, value: bytes, ttl: float) -> None:
        await self._call(self._redis.set(key, value, px=_ms(ttl)))

    async def forget(self, key: str) -> None:
        await self._call(self._redis.delete(key))

    async def spent(self, key: str) -> int:
        return int(await self._call(self._redis.get(key)) or 0)

    async def add_spent(self, key: str, amount: int, ttl: float) -> None:
        await self._call(self._add_spent(keys=[key], args=[amount, max(1, int(ttl))]))

    async def take_tokens(self, buckets: Sequence[Bucket]) -> float:
        """One round trip for all of them; a cluster keeps each key in its own slot, so
        there each bucket is its own call (a refusal may then leave an earlier one used)."""
        groups = [buckets] if self._cluster is None else [[b] for b in buckets]
        for group in groups:
            args = [x for b in group for x in (repr(b.rate / 1000), b.burst)]
            waited = await self._call(self._take(keys=[b.key for b in group], args=args))
            if int(waited) > 0:
                return int(waited) / 1000
        return 0.0

    async def close(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeat
        await self._redis.aclose()
        if self._sentinel is not None:
            for client in self._sentinel.sentinels:
                await client.aclose()

    # --- for the stores that share this connection (gateway/store/sessions.py) ------------

    @property
    def client(self) -> Client:
        return self._redis

    async def call(self, command: Awaitable[T]) -> T:
        """Run one command on this store's connection, failing closed like its own."""
        return await self._call(command)

    def call_kept(self, command: Awaitable[T]) -> Awaitable[T]:
        """`call()` for a command on a connection the caller keeps out of the pool (the
        sign-ins'): failing closed the same way, without a slot (the slots bound the
        pool's connections in use; taking and giving one back is about seven Python calls).
        A plain function handing back `_call`'s coroutine: no coroutine of its own."""
        return self._call(command, slot=False)

    # --- failing closed, with backoff ---------------------------------------------------

    async def _call(self, command: Awaitable[T], *, slot: bool = True) -> T:
        left = self._backoff.wait_left(self._clock())
        if left > 0:
            _close(command)
            error = StoreUnavailable(
                f"redis unreachable, next attempt in {left:.1f}s: {self._backoff.last_error}"
            )
            error.retry_after = max(1, math.ceil(left))
            raise error
        if slot:
            await self._take_slot(command)
        try:
            async with asyncio.timeout(COMMAND_TIMEOUT):
                result = await command
        except (RedisError, OSError) as exc:
            # A TimeoutError here is the deadline's (`asyncio.timeout`): Redis hung.
            detail = f"{type(exc).__name__}: {str(exc) or f'no answer in {COMMAND_TIMEOUT:g}s'}"
            self._backoff.failed(self._clock(), detail)
            raise StoreUnavailable(f"redis: {detail}") from exc
        finally:
            if slot:
                self._slots.release()
        if self._backoff.failing:
            self._backoff.succeeded()
        return result

    async def _take_slot(self, command: Awaitable[object]) -> None:
        if not self._slots.locked():
            # A free slot is taken at once: no timer to arm and cancel (one each per call,
            # a measurable share of a sign-in's store round trip).
            await self._slots.acquire()
            return
        try:
            async with asyncio.timeout(COMMAND_TIMEOUT):
                await self._slots.acquire()
        except TimeoutError:
            _close(command)
            # Busy, not down: no backoff, or one burst would turn into an outage.
            raise StoreUnavailable(
                f"redis: {MAX_CONCURRENT} commands in flight for {COMMAND_TIMEOUT:g}s"
            ) from None

    @staticmethod
    async def _history(client: RedisCluster, text: str | bytes) -> None:
        await client.xadd(HISTORY_KEY, {"r": text}, maxlen=HISTORY_LEN, approximate=True)

    @classmethod
    async def _cluster_claim(
        cls, client: RedisCluster, key: str, text: str, ttl: float
    ) -> bytes | str | None:
        # The claim and the stream live in different slots, so no script can do both.
        for _ in range(3):
            if await client.set(key, text, nx=True, px=_ms(ttl)):
                await cls._history(client, text)
                return None
            held = await client.get(key)
            if held is not None:
                return held
        raise StoreUnavailable("redis: a claim kept expiring while it was read")


def _ms(ttl: float) -> int:
    return max(1, int(ttl * 1000))


def _text(value: bytes | str | None) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _close(command: Awaitable[object]) -> None:
    if hasattr(command, "close"):
        command.close()  # a coroutine never awaited would warn
