"""Token buckets on both implementations: memory, and the Lua script on a real redis-server."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from gateway.store.buckets import Bucket, MemoryBuckets, TokenBuckets, retry_after
from gateway.store.memory import MemoryStore
from gateway.store.redis import RedisStore
from tests.procs import RedisServer


@pytest.fixture(params=["memory", "redis"])
async def buckets(request: pytest.FixtureRequest) -> AsyncIterator[TokenBuckets]:
    if request.param == "memory":
        yield MemoryStore()
        return
    server: RedisServer = request.getfixturevalue("redis")
    store = RedisStore(server.url)
    yield store
    await store.close()


def fresh(rate: float = 10.0, burst: int = 10) -> Bucket:
    return Bucket(f"x402:rate:test:{uuid.uuid4().hex}", rate, burst)


async def test_a_burst_is_allowed_then_refused_with_a_wait(buckets: TokenBuckets) -> None:
    bucket = fresh(rate=1.0, burst=5)
    waits = [await buckets.take_tokens([bucket]) for _ in range(7)]
    assert waits[:5] == [0.0] * 5
    assert all(0.5 < w <= 1.0 for w in waits[5:]), waits


async def test_tokens_come_back_at_the_rate(buckets: TokenBuckets) -> None:
    bucket = fresh(rate=20.0, burst=1)
    assert await buckets.take_tokens([bucket]) == 0.0
    assert await buckets.take_tokens([bucket]) > 0
    await asyncio.sleep(0.06)  # one token is 50 ms at 20/s
    assert await buckets.take_tokens([bucket]) == 0.0


async def test_all_or_nothing_across_buckets(buckets: TokenBuckets) -> None:
    roomy, tight = fresh(rate=1.0, burst=10), fresh(rate=1.0, burst=1)
    assert await buckets.take_tokens([roomy, tight]) == 0.0
    assert await buckets.take_tokens([roomy, tight]) > 0
    # The refusal took nothing from `roomy`: nine tokens are left, not eight.
    assert [await buckets.take_tokens([roomy]) for _ in range(10)].count(0.0) == 9


async def test_concurrent_takes_never_exceed_the_burst(buckets: TokenBuckets) -> None:
    bucket = fresh(rate=0.01, burst=25)
    waits = await asyncio.gather(*(buckets.take_tokens([bucket]) for _ in range(100)))
    assert waits.count(0.0) == 25


async def test_two_clients_of_one_redis_share_the_buckets(redis: RedisServer) -> None:
    one, two = RedisStore(redis.url), RedisStore(redis.url)
    try:
        bucket = fresh(rate=0.01, burst=4)
        waits = [await (one, two)[i % 2].take_tokens([bucket]) for i in range(8)]
        assert waits.count(0.0) == 4
    finally:
        await one.close()
        await two.close()


async def test_memory_buckets_are_bounded() -> None:
    now = [0.0]
    store = MemoryBuckets(maxsize=3, clock=lambda: now[0])
    for i in range(10):
        assert await store.take_tokens([Bucket(f"k{i}", 1.0, 1)]) == 0.0
    state: Any = store._state  # the bound is the point of this test
    assert len(state) == 3


def test_retry_after_is_whole_seconds_and_never_zero() -> None:
    assert retry_after(0.001) == 1
    assert retry_after(1.2) == 2
