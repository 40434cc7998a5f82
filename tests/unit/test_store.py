"""The store contract, on both implementations: the memory one and a real redis-server."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest

from gateway.errors import StoreUnavailable
from gateway.store import PaymentRecord, PaymentStore
from gateway.store.memory import MemoryStore
from gateway.store.redis import RedisStore
from tests.procs import RedisServer, free_port


def record(request_id: str = "r1", status: str = "pending") -> PaymentRecord:
    return PaymentRecord(
        status=status,  # type: ignore[arg-type]
        request_id=request_id,
        route="/paid/*",
        payer="0xabc",
        amount="1000",
        asset="0xtoken",
        network="eip155:84532",
        nonce="0x" + "11" * 32,
    )


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[PaymentStore]:
    if request.param == "memory":
        s: PaymentStore = MemoryStore()
    else:
        server: RedisServer = request.getfixturevalue("redis")
        s = RedisStore(server.url)
    yield s
    await s.close()


def key() -> str:
    return f"x402:claim:test:{uuid.uuid4().hex}"


async def test_first_claim_wins_and_others_see_the_record(store: PaymentStore) -> None:
    k = key()
    assert await store.claim(k, record("a"), 60) is None
    held = await store.claim(k, record("b"), 60)
    assert held is not None and held.request_id == "a" and held.in_flight


async def test_fifty_concurrent_claims_one_winner(store: PaymentStore) -> None:
    k = key()
    results = await asyncio.gather(*(store.claim(k, record(f"r{i}"), 60) for i in range(50)))
    assert sum(r is None for r in results) == 1


async def test_release_only_by_the_holder(store: PaymentStore) -> None:
    k = key()
    await store.claim(k, record("a"), 60)
    await store.release(k, "someone-else")
    assert await store.claim(k, record("b"), 60) is not None
    await store.release(k, "a")
    assert await store.claim(k, record("c"), 60) is None


async def test_update_keeps_the_claim_and_shows_settlement(store: PaymentStore) -> None:
    k = key()
    rec = record("a")
    await store.claim(k, rec, 60)
    settled = rec.with_status("settled", transaction="0x" + "ab" * 32)
    await store.update(k, settled, 60)
    await store.release(k, "b")
    held = await store.claim(k, record("b"), 60)
    assert held is not None and held.status == "settled" and held.transaction == settled.transaction
    assert any(r.transaction == settled.transaction for r in await store.recent(10))


async def test_claim_expires(store: PaymentStore) -> None:
    k = key()
    await store.claim(k, record("a"), 0.05)
    await asyncio.sleep(0.15)
    assert await store.claim(k, record("b"), 60) is None


async def test_redis_down_fails_closed() -> None:
    s = RedisStore(f"redis://127.0.0.1:{free_port()}/0")
    try:
        with pytest.raises(StoreUnavailable):
            await s.claim(key(), record(), 60)
        with pytest.raises(StoreUnavailable):
            await s.ping()
    finally:
        await s.close()


def test_record_round_trip() -> None:
    rec = record().with_status("settled", transaction="0x01")
    assert PaymentRecord.loads(rec.dumps()) == rec
