"""Claims and records in Redis, shared by every replica.

A claim is one `SET key value NX PX ttl` (atomic set-if-absent with expiry). Releasing must
only delete a claim we still hold, which is a compare-and-delete: one small Lua script,
because that one round trip has to do two things. Records also go to a capped stream for
`x402-gateway payments`.
"""

from __future__ import annotations

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from ..errors import StoreUnavailable
from .records import PaymentRecord

_RELEASE = """
local v = redis.call('GET', KEYS[1])
if v and cjson.decode(v)['request_id'] == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""
HISTORY_KEY = "x402:payments"
HISTORY_LEN = 100_000


class RedisStore:
    def __init__(self, url: str) -> None:
        self._redis: aioredis.Redis = aioredis.from_url(
            url,
            socket_connect_timeout=2,
            socket_timeout=2,
            health_check_interval=15,
            retry_on_timeout=False,
        )
        self._release = self._redis.register_script(_RELEASE)

    async def claim(self, key: str, record: PaymentRecord, ttl: float) -> PaymentRecord | None:
        try:
            won = await self._redis.set(key, record.dumps(), nx=True, px=int(ttl * 1000))
            if won:
                return None
            held = await self._redis.get(key)
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(f"redis: {exc}") from exc
        if held is None:  # expired between the two calls: try once more
            return await self.claim(key, record, ttl)
        return PaymentRecord.loads(held)

    async def update(self, key: str, record: PaymentRecord, ttl: float) -> None:
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.set(key, record.dumps(), px=int(ttl * 1000))
                pipe.xadd(HISTORY_KEY, {"r": record.dumps()}, maxlen=HISTORY_LEN, approximate=True)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(f"redis: {exc}") from exc

    async def release(self, key: str, request_id: str) -> None:
        try:
            await self._release(keys=[key], args=[request_id])
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(f"redis: {exc}") from exc

    async def recent(self, limit: int) -> list[PaymentRecord]:
        try:
            rows = await self._redis.xrevrange(HISTORY_KEY, count=limit)
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(f"redis: {exc}") from exc
        return [PaymentRecord.loads(fields[b"r"]) for _id, fields in rows or () if fields]

    async def ping(self) -> None:
        try:
            await self._redis.ping()
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(f"redis: {exc}") from exc

    async def close(self) -> None:
        await self._redis.aclose()
