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
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import RedisError

from ..errors import StoreUnavailable
from .backoff import Backoff
from .records import PaymentRecord
from .redis_url import RedisTarget, parse_redis_url

_RELEASE = """
local v = redis.call('GET', KEYS[1])
if v and cjson.decode(v)['request_id'] == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""
HISTORY_KEY = "x402:payments"
HISTORY_LEN = 100_000
CONNECT_TIMEOUT = 2.0
COMMAND_TIMEOUT = 2.0

T = TypeVar("T")
Client = aioredis.Redis | RedisCluster


def _common() -> dict[str, object]:
    return {
        "socket_connect_timeout": CONNECT_TIMEOUT,
        "socket_timeout": COMMAND_TIMEOUT,
        "retry": Retry(ExponentialWithJitterBackoff(base=0.01, cap=0.05), retries=1),
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
        self._release = self._redis.register_script(_RELEASE)
        self._backoff = backoff or Backoff()
        self._clock = clock

    async def claim(self, key: str, record: PaymentRecord, ttl: float) -> PaymentRecord | None:
        for _ in range(3):
            won = await self._call(self._redis.set(key, record.dumps(), nx=True, px=_ms(ttl)))
            if won:
                return None
            held = await self._call(self._redis.get(key))
            if held is None:  # expired between the two calls: try again
                continue
            found = PaymentRecord.loads(held)
            # Our own SET may have landed before its answer was lost (the one retry after
            # a dropped connection then finds it): that claim is ours, not a conflict.
            return None if found.request_id == record.request_id else found
        raise StoreUnavailable("redis: a claim kept expiring while it was read")

    async def update(self, key: str, record: PaymentRecord, ttl: float) -> None:
        text = record.dumps()
        if isinstance(self._redis, RedisCluster):
            # Key and stream sit in different slots: no transaction can hold both. The
            # claim's record is the truth; the stream entry is the operator's copy.
            await self._call(self._redis.set(key, text, px=_ms(ttl)))
            await self._call(self._history(self._redis, text))
            return

        async def both() -> None:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.set(key, text, px=_ms(ttl))
                pipe.xadd(HISTORY_KEY, {"r": text}, maxlen=HISTORY_LEN, approximate=True)
                await pipe.execute()

        await self._call(both())

    async def release(self, key: str, request_id: str) -> None:
        await self._call(self._release(keys=[key], args=[request_id]))

    async def recent(self, limit: int) -> list[PaymentRecord]:
        rows = await self._call(self._redis.xrevrange(HISTORY_KEY, count=limit))
        return [PaymentRecord.loads(fields[b"r"]) for _id, fields in rows or () if fields]

    async def ping(self) -> None:
        await self._call(self._redis.ping())

    async def close(self) -> None:
        await self._redis.aclose()
        if self._sentinel is not None:
            for client in self._sentinel.sentinels:
                await client.aclose()

    # --- failing closed, with backoff ---------------------------------------------------

    async def _call(self, command: Awaitable[T]) -> T:
        left = self._backoff.wait_left(self._clock())
        if left > 0:
            if hasattr(command, "close"):
                command.close()  # a coroutine never awaited would warn
            error = StoreUnavailable(
                f"redis unreachable, next attempt in {left:.1f}s: {self._backoff.last_error}"
            )
            error.retry_after = max(1, math.ceil(left))
            raise error
        try:
            result = await command
        except (RedisError, OSError) as exc:
            detail = f"{type(exc).__name__}: {exc}"
            self._backoff.failed(self._clock(), detail)
            raise StoreUnavailable(f"redis: {detail}") from exc
        if self._backoff.failing:
            self._backoff.succeeded()
        return result

    @staticmethod
    async def _history(client: RedisCluster, text: str) -> None:
        await client.xadd(HISTORY_KEY, {"r": text}, maxlen=HISTORY_LEN, approximate=True)


def _ms(ttl: float) -> int:
    return max(1, int(ttl * 1000))
