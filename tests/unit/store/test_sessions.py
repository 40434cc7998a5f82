"""gateway.store.sessions on both implementations: memory and a real redis-server."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest

from gateway.store.memory import MemoryStore
from gateway.store.redis import RedisStore
from gateway.store.sessions import MemorySessions, RedisSessions, SessionStore, open_sessions
from tests.procs import RedisServer


@pytest.fixture(params=["memory", "redis"])
async def sessions(request: pytest.FixtureRequest) -> AsyncIterator[SessionStore]:
    if request.param == "memory":
        yield MemorySessions()
        return
    server: RedisServer = request.getfixturevalue("redis")
    store = RedisStore(server.url)
    yield open_sessions(store)
    await store.close()


def test_sessions_sit_beside_the_payment_store() -> None:
    assert isinstance(open_sessions(MemoryStore()), MemorySessions)
    assert isinstance(open_sessions(RedisStore("redis://127.0.0.1:9/0")), RedisSessions)


async def test_a_payment_opens_its_route_for_its_payer_only(sessions: SessionStore) -> None:
    payer = "0x" + uuid.uuid4().hex[:40].ljust(40, "a")
    assert not await sessions.has_paid("/reports/*", payer)
    await sessions.record_payment("/reports/*", payer, 60)
    assert await sessions.has_paid("/reports/*", payer.upper().replace("0X", "0x"))
    assert not await sessions.has_paid("/other/*", payer)
    assert not await sessions.has_paid("/reports/*", "0x" + "b" * 40)


async def test_the_window_ends(sessions: SessionStore) -> None:
    payer = "0x" + uuid.uuid4().hex[:40].ljust(40, "c")
    await sessions.record_payment("/reports/*", payer, 0.05)
    await asyncio.sleep(0.2)
    assert not await sessions.has_paid("/reports/*", payer)


async def test_fifty_spends_of_one_nonce_one_wins(sessions: SessionStore) -> None:
    nonce = uuid.uuid4().hex
    spent = await asyncio.gather(*(sessions.spend_nonce(nonce, 60) for _ in range(50)))
    assert spent.count(True) == 1
