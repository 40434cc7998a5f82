"""A claim's record changed in Redis on a network that loses the reply (red-team case,
session 8): the swap ran, its answer was lost, and redis-py's one retry sent it again. The
second run finds the record it is to write already there: the swap is done, not taken by
another request (which would answer the payer 409 and leave the claim stuck until it
expires)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import pytest

from gateway.store.records import PaymentRecord
from gateway.store.redis import HISTORY_KEY, RedisStore
from tests.procs import RedisServer
from tests.unit.payment.test_channel_fast_redis import LosingProxy
from tests.unit.store.test_store import record


def _key() -> str:
    return f"x402:claim:lost-reply:{os.urandom(4).hex()}"  # the server outlives one test


@pytest.fixture
async def lossy(redis: RedisServer) -> AsyncIterator[tuple[RedisStore, RedisStore, LosingProxy]]:
    proxy = LosingProxy(redis.port)
    store, direct = RedisStore(await proxy.start()), RedisStore(redis.url)
    yield store, direct, proxy
    await store.close()
    await direct.close()
    await proxy.close()


async def test_a_swap_whose_reply_was_lost_is_done(
    lossy: tuple[RedisStore, RedisStore, LosingProxy],
) -> None:
    store, direct, proxy = lossy
    key, claimed = _key(), record(os.urandom(4).hex())
    assert await store.claim(key, claimed, 60) is None
    settling = claimed.with_status("settling")
    proxy.lose = 1
    assert await store.replace(key, claimed, settling, 60)
    assert proxy.lost == 1  # the first run's answer never came back
    held = PaymentRecord.loads(await direct.client.get(key))
    assert held == settling
    rows = await direct.client.xrevrange(HISTORY_KEY, count=50)
    history = [PaymentRecord.loads(fields[b"r"]) for _id, fields in rows]
    mine = [r.status for r in history if r.request_id == claimed.request_id]
    assert mine == ["settling", "claimed"]  # each change once, newest first


async def test_another_requests_record_is_still_a_conflict(
    lossy: tuple[RedisStore, RedisStore, LosingProxy],
) -> None:
    store, direct, _ = lossy
    key, ours, theirs = _key(), record("req-1"), record("req-2")
    assert await direct.claim(key, theirs, 60) is None
    assert not await store.replace(key, ours, ours.with_status("settling"), 60)
    held = PaymentRecord.loads(await direct.client.get(key))
    assert held == theirs
