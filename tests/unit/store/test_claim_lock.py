"""gateway.store.claim_lock: one claim round at a time, fenced, in memory and in a real
redis-server (two lock objects stand for two replicas)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from gateway.store.claim_lock import (
    LOCK_KEY,
    MARKS_KEY,
    ClaimLock,
    MemoryClaimLock,
    RedisClaimLock,
    keep_renewing,
)
from gateway.store.redis import RedisStore
from tests.procs import RedisServer


@pytest.fixture(params=["memory", "redis"])
async def locks(request: pytest.FixtureRequest) -> AsyncIterator[tuple[ClaimLock, ClaimLock]]:
    if request.param == "memory":
        one = MemoryClaimLock()
        yield one, one
        return
    server: RedisServer = request.getfixturevalue("redis")
    stores = RedisStore(server.url), RedisStore(server.url)
    await stores[0].client.delete(LOCK_KEY, MARKS_KEY)  # the session's server is shared
    yield (
        RedisClaimLock(stores[0].client, stores[0].call),
        RedisClaimLock(stores[1].client, stores[1].call),
    )
    for store in stores:
        await store.close()


async def test_one_holder_at_a_time_and_tokens_grow(locks: tuple[ClaimLock, ClaimLock]) -> None:
    one, two = locks
    first = await one.acquire(5.0)
    assert first is not None
    assert await two.acquire(5.0) is None
    assert await two.held(first)
    await two.release(first)  # releasing a lease works from anywhere that holds its value
    second = await two.acquire(5.0)
    assert second is not None and second.token > first.token
    await one.release(first)  # a stale lease releases nothing
    assert await one.held(second)


async def test_a_lapsed_holder_is_fenced_off(locks: tuple[ClaimLock, ClaimLock]) -> None:
    one, two = locks
    stale = await one.acquire(0.15)
    assert stale is not None and await one.mark(stale, "t|claimed", "1")
    await asyncio.sleep(0.3)  # the holder stalled past its lease
    fresh = await two.acquire(5.0)
    assert fresh is not None and fresh.token > stale.token
    assert not await one.held(stale)
    assert not await one.renew(stale)
    assert not await one.mark(stale, "t|claimed", "2")  # refused: the fence
    await one.release(stale)
    assert await two.held(fresh)
    assert await two.mark(fresh, "t|settle", "1")
    assert await two.marks() == {"t|claimed": "1", "t|settle": "1"}
    assert await two.mark(fresh, "t|settle", None)
    assert await one.marks() == {"t|claimed": "1"}
    await two.release(fresh)


async def test_renewal_keeps_a_long_round_s_lease(locks: tuple[ClaimLock, ClaimLock]) -> None:
    one, two = locks
    lease = await one.acquire(0.3)
    assert lease is not None
    lost = asyncio.Event()
    renewer = asyncio.create_task(keep_renewing(one, lease, lost))
    await asyncio.sleep(0.9)  # three lease lengths
    assert await two.acquire(0.3) is None and not lost.is_set()
    renewer.cancel()
    await one.release(lease)
    assert await two.acquire(0.3) is not None


async def test_redis_down_reports_the_lease_lost(redis: RedisServer) -> None:
    store = RedisStore(redis.url)
    lock = RedisClaimLock(store.client, store.call)
    await store.client.delete(LOCK_KEY)
    lease = await lock.acquire(0.3)
    assert lease is not None
    await store.client.aclose()
    dead = RedisStore("redis://127.0.0.1:1/0")
    lost = asyncio.Event()
    await keep_renewing(RedisClaimLock(dead.client, dead.call), lease, lost)
    assert lost.is_set()
    await dead.close()
