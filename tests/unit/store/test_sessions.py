"""gateway.store.sessions on both implementations: memory and a real redis-server."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable
from typing import TypeVar

import pytest

from gateway.errors import StoreUnavailable
from gateway.store import redis as redis_store
from gateway.store import sessions as sessions_module
from gateway.store.backoff import Backoff
from gateway.store.memory import MemoryStore
from gateway.store.redis import RedisStore
from gateway.store.sessions import (
    MemorySessions,
    RedisSessions,
    SessionStore,
    SignIn,
    open_sessions,
)
from tests.procs import RedisServer

T = TypeVar("T")


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


# --- one call per sign-in: the nonce spent, then the payment read -------------------------


async def test_a_sign_in_spends_the_nonce_then_reads_the_payment(sessions: SessionStore) -> None:
    payer = "0x" + uuid.uuid4().hex[:40].ljust(40, "d")
    await sessions.record_payment("/reports/*", payer, 60)
    nonce = uuid.uuid4().hex
    assert await sessions.sign_in("/reports/*", payer, nonce, 60) is SignIn.SIGNED_IN
    assert await sessions.sign_in("/reports/*", payer, nonce, 60) is SignIn.NONCE_USED
    # The same spent set as spend_nonce(): one nonce, one use, whichever call spends it.
    assert not await sessions.spend_nonce(nonce, 60)
    other = uuid.uuid4().hex
    assert await sessions.spend_nonce(other, 60)
    assert await sessions.sign_in("/reports/*", payer, other, 60) is SignIn.NONCE_USED


async def test_a_sign_in_without_payment_still_spends_its_nonce(sessions: SessionStore) -> None:
    payer = "0x" + uuid.uuid4().hex[:40].ljust(40, "e")
    nonce = uuid.uuid4().hex
    assert await sessions.sign_in("/reports/*", payer, nonce, 60) is SignIn.NOT_PAID
    # Paying afterwards does not revive that proof: a captured one cannot be replayed.
    await sessions.record_payment("/reports/*", payer, 60)
    assert await sessions.sign_in("/reports/*", payer, nonce, 60) is SignIn.NONCE_USED
    assert await sessions.sign_in("/other/*", payer, uuid.uuid4().hex, 60) is SignIn.NOT_PAID


async def test_fifty_sign_ins_with_one_nonce_one_wins(sessions: SessionStore) -> None:
    payer = "0x" + uuid.uuid4().hex[:40].ljust(40, "f")
    await sessions.record_payment("/reports/*", payer, 60)
    nonce = uuid.uuid4().hex
    answers = await asyncio.gather(
        *(sessions.sign_in("/reports/*", payer, nonce, 60) for _ in range(50))
    )
    assert answers.count(SignIn.SIGNED_IN) == 1
    assert answers.count(SignIn.NONCE_USED) == 49


async def test_a_spent_nonce_is_forgotten_after_its_ttl(sessions: SessionStore) -> None:
    payer = "0x" + uuid.uuid4().hex[:40].ljust(40, "1")
    nonce = uuid.uuid4().hex
    assert await sessions.sign_in("/reports/*", payer, nonce, 0.05) is SignIn.NOT_PAID
    await asyncio.sleep(0.2)
    assert await sessions.spend_nonce(nonce, 60)


async def test_a_redis_sign_in_is_one_round_trip(redis: RedisServer) -> None:
    store = RedisStore(redis.url)
    sessions = open_sessions(store)
    payer = "0x" + uuid.uuid4().hex[:40].ljust(40, "2")
    await sessions.record_payment("/reports/*", payer, 60)
    await sessions.sign_in("/reports/*", payer, uuid.uuid4().hex, 60)  # loads the script
    calls: list[object] = []
    real, real_kept = store.call, store.call_kept

    async def counted(command: Awaitable[T]) -> T:
        calls.append(command)
        return await real(command)

    async def counted_kept(command: Awaitable[T]) -> T:
        calls.append(command)
        return await real_kept(command)

    store.call = counted  # type: ignore[method-assign]
    store.call_kept = counted_kept  # type: ignore[method-assign]
    try:
        assert await sessions.sign_in("/reports/*", payer, uuid.uuid4().hex, 60) is SignIn.SIGNED_IN
    finally:
        await store.close()
    assert len(calls) == 1


async def test_a_redis_sign_in_survives_a_restart_and_flushed_scripts() -> None:
    """Sign-ins run on connections the store keeps: after Redis restarts (each kept one
    dropped) the next sign-in still gets the right answer, on a new connection, without
    failing closed; flushed scripts change nothing (a sign-in runs none)."""
    server = RedisServer().start()
    store = RedisStore(server.url)
    sessions = open_sessions(store)
    payer = "0x" + uuid.uuid4().hex[:40].ljust(40, "3")
    try:
        await sessions.record_payment("/reports/*", payer, 60)
        assert await sessions.sign_in("/reports/*", payer, uuid.uuid4().hex, 60) is SignIn.SIGNED_IN
        server.stop()
        restarted = RedisServer()
        restarted.port = server.port
        server = restarted.start()
        nonce = uuid.uuid4().hex
        assert await sessions.sign_in("/reports/*", payer, nonce, 60) is SignIn.NOT_PAID
        assert await sessions.sign_in("/reports/*", payer, nonce, 60) is SignIn.NONCE_USED
        await sessions.record_payment("/reports/*", payer, 60)
        await store.client.script_flush()
        assert await sessions.sign_in("/reports/*", payer, uuid.uuid4().hex, 60) is SignIn.SIGNED_IN
    finally:
        await store.close()
        server.stop()


async def test_a_cancelled_redis_sign_in_leaves_no_answer_for_the_next(redis: RedisServer) -> None:
    """A sign-in cancelled while its answer is on the way (a client gone) must not leave that
    answer on a kept connection for the next sign-in to read as its own."""
    store = RedisStore(redis.url)
    sessions = open_sessions(store)
    payer = "0x" + uuid.uuid4().hex[:40].ljust(40, "4")
    try:
        await sessions.record_payment("/reports/*", payer, 60)
        for _ in range(3):
            await store.client.client_pause(300)  # the server holds every answer a while
            task = asyncio.create_task(sessions.sign_in("/reports/*", payer, uuid.uuid4().hex, 60))
            await asyncio.sleep(0.1)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            nonce = uuid.uuid4().hex
            assert await sessions.sign_in("/reports/*", payer, nonce, 60) is SignIn.SIGNED_IN
            assert await sessions.sign_in("/reports/*", payer, nonce, 60) is SignIn.NONCE_USED
    finally:
        await store.close()


async def test_closing_the_store_closes_the_sign_in_connections(redis: RedisServer) -> None:
    store = RedisStore(redis.url)
    sessions = open_sessions(store)
    payer = "0x" + uuid.uuid4().hex[:40].ljust(40, "5")
    await asyncio.gather(
        *(sessions.sign_in("/reports/*", payer, uuid.uuid4().hex, 60) for _ in range(20))
    )
    await store.close()
    watcher = RedisStore(redis.url)
    try:
        clients = await watcher.client.client_list()
    finally:
        await watcher.close()
    assert len(clients) == 1  # the watcher itself


async def test_a_redis_sign_in_that_gets_no_answer_fails_closed_then_recovers(
    redis: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No answer within the command timeout: the sign-in fails closed (503, not a sign-in),
    the connection that waited is closed, and the next sign-in gets its own answer."""
    monkeypatch.setattr(redis_store, "COMMAND_TIMEOUT", 0.2)  # the store call's deadline
    store = RedisStore(redis.url, backoff=Backoff(base=0.01, cap=0.01))
    sessions = open_sessions(store)
    payer = "0x" + uuid.uuid4().hex[:40].ljust(40, "6")
    try:
        await sessions.record_payment("/reports/*", payer, 60)
        await store.client.client_pause(1000)
        with pytest.raises(StoreUnavailable):
            await sessions.sign_in("/reports/*", payer, uuid.uuid4().hex, 60)
        await asyncio.sleep(1.0)  # the pause is over: the held answers are sent
        nonce = uuid.uuid4().hex
        assert await sessions.sign_in("/reports/*", payer, nonce, 60) is SignIn.SIGNED_IN
        assert await sessions.sign_in("/reports/*", payer, nonce, 60) is SignIn.NONCE_USED
    finally:
        await store.close()


async def test_the_sign_in_commands_are_packed_as_redis_py_packs_them(redis: RedisServer) -> None:
    store = RedisStore(redis.url)
    sessions = open_sessions(store)
    assert isinstance(sessions, RedisSessions)
    conn = store.client.connection_pool.make_connection()
    try:
        for nonce_key, paid, ttl in (
            ("x402:siwx:nonce:abc12345", "x402:siwx:paid:f00:0xab", 600000),
            ("x402:siwx:nonce:é€😀 ", "k", 1),  # the SDK's road takes any nonce text
        ):
            expected = b"".join(
                conn.pack_command("SET", nonce_key, "1", "NX", "PX", ttl)
                + conn.pack_command("EXISTS", paid)
            )
            assert sessions_module._sign_in_command(nonce_key, paid, ttl) == expected
        # And Redis reads them: a unicode nonce is spent once, with its ttl.
        payer = "0x" + uuid.uuid4().hex[:40].ljust(40, "3")
        nonce = "é€😀" + uuid.uuid4().hex
        assert await sessions.sign_in("/reports/*", payer, nonce, 60) is SignIn.NOT_PAID
        assert await sessions.sign_in("/reports/*", payer, nonce, 60) is SignIn.NONCE_USED
        assert 0 < await store.client.pttl(sessions_module.NONCE_PREFIX + nonce) <= 60_000
    finally:
        await store.close()


async def test_the_pools_road_answers_as_the_kept_connections(
    redis: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """More sign-ins at once than the kept connections go through the client's pool: the
    same two commands, the same answers."""
    monkeypatch.setattr(sessions_module, "KEPT_CONNECTIONS", 0)
    store = RedisStore(redis.url)
    sessions = open_sessions(store)
    payer = "0x" + uuid.uuid4().hex[:40].ljust(40, "7")
    try:
        nonce = uuid.uuid4().hex
        assert await sessions.sign_in("/reports/*", payer, nonce, 60) is SignIn.NOT_PAID
        assert await sessions.sign_in("/reports/*", payer, nonce, 60) is SignIn.NONCE_USED
        await sessions.record_payment("/reports/*", payer, 60)
        assert await sessions.sign_in("/reports/*", payer, uuid.uuid4().hex, 60) is SignIn.SIGNED_IN
        answers = await asyncio.gather(
            *(sessions.sign_in("/reports/*", payer, nonce + "x", 60) for _ in range(20))
        )
        assert answers.count(SignIn.SIGNED_IN) == 1
        assert answers.count(SignIn.NONCE_USED) == 19
    finally:
        await store.close()


async def test_an_error_answer_leaves_no_answer_for_the_next_sign_in(redis: RedisServer) -> None:
    """Redis refusing the nonce's SET (here: a ttl it will not take) fails the sign-in
    closed; the EXISTS answer behind it is never read as the next sign-in's."""
    store = RedisStore(redis.url, backoff=Backoff(base=0.01, cap=0.01))
    sessions = open_sessions(store)
    payer = "0x" + uuid.uuid4().hex[:40].ljust(40, "8")
    try:
        await sessions.record_payment("/reports/*", payer, 60)
        for _ in range(3):
            with pytest.raises(StoreUnavailable):
                await sessions.sign_in("/reports/*", payer, uuid.uuid4().hex, 1e30)
            await asyncio.sleep(0.05)  # the store's backoff after a failure
            nonce = uuid.uuid4().hex
            assert await sessions.sign_in("/reports/*", payer, nonce, 60) is SignIn.SIGNED_IN
            assert await sessions.sign_in("/reports/*", payer, nonce, 60) is SignIn.NONCE_USED
    finally:
        await store.close()


async def test_a_record_sits_under_paid_key_for_replicas_of_any_version(
    redis: RedisServer,
) -> None:
    # The route's hash is made once per store: the key must stay the one `paid_key` names,
    # so a payment recorded by one replica (or an older release) opens sign-ins on another.
    store = RedisStore(redis.url)
    try:
        sessions, payer = open_sessions(store), "0x" + uuid.uuid4().hex[:40].ljust(40, "d")
        for route in ("/reports/*", "/other/*", "/reports/*"):
            await sessions.record_payment(route, payer.upper().replace("0X", "0x"), 60)
            assert await store.client.exists(sessions_module.paid_key(route, payer)) == 1
        assert sessions_module.paid_key("/a", payer) != sessions_module.paid_key("/b", payer)
        assert sessions_module.paid_key("/a", payer).startswith(sessions_module.PAID_PREFIX)
    finally:
        await store.close()


# --- the memory store's spent nonces and payment records -----------------------------------


async def test_spent_nonces_are_bounded_oldest_out() -> None:
    store = MemorySessions(maxsize=3)
    assert [await store.spend_nonce(n, 60) for n in "abcd"] == [True] * 4
    assert len(store._nonces) == 3
    assert await store.spend_nonce("a", 60)  # the oldest went out to make room
    assert not await store.spend_nonce("c", 60) and not await store.spend_nonce("d", 60)


async def test_spent_nonces_expire_each_on_its_own_deadline(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = [1000.0]
    monkeypatch.setattr(sessions_module.time, "monotonic", lambda: now[0])
    store = MemorySessions(maxsize=100)
    spend = store.spend_nonce
    assert await spend("long", 60) and await spend("short", 1) and await spend("mid", 30)
    now[0] += 2
    # "short" sits behind a live nonce: not dropped yet, but no longer taken for spent.
    assert await spend("short", 60)
    assert not await spend("long", 60) and not await spend("mid", 60)
    now[0] += 59
    assert await spend("fresh", 60)  # expired ones are dropped as spends come
    assert len(store._nonces) == 2  # "short" (spent again at 1002) and "fresh"
    assert await spend("long", 60) and await spend("mid", 60)
    assert not await spend("short", 60)


async def test_a_nonce_spent_with_no_time_left_is_not_kept() -> None:
    store = MemorySessions(maxsize=10)
    assert await store.spend_nonce("x", 0) and len(store._nonces) == 0
    assert await store.spend_nonce("x", 0)


async def test_a_payment_record_lives_its_own_window_and_a_new_one_replaces_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = [1000.0]
    monkeypatch.setattr(sessions_module.time, "monotonic", lambda: now[0])
    store = MemorySessions(maxsize=3)
    day, hour, other = ("0x" + c * 40 for c in "dea")
    await store.record_payment("/r", day, 86400)
    await store.record_payment("/r", hour, 3600)
    assert await store.has_paid("/r", day) and await store.has_paid("/r", hour)
    assert not await store.has_paid("/r", other) and not await store.has_paid("/s", day)
    now[0] += 3601
    assert not await store.has_paid("/r", hour) and await store.has_paid("/r", day)
    await store.record_payment("/r", hour, 3600)  # paid again: a new window from now
    await store.record_payment("/r", day, 10)  # the latest record counts, shorter or not
    assert await store.has_paid("/r", hour) and await store.has_paid("/r", day)
    now[0] += 11
    assert not await store.has_paid("/r", day) and await store.has_paid("/r", hour)
    for payer in ("0x" + c * 40 for c in "123"):
        await store.record_payment("/r", payer, 60)
    # Bounded: past 3 records the soonest to expire go first, the hour's window stays.
    assert len(store._paid) == 3 and await store.has_paid("/r", hour)


def test_the_route_hashes_kept_are_bounded_and_keys_stay_paid_key() -> None:
    keys = sessions_module._PaidKeys(maxsize=2)
    payer = "0x" + "AbC" * 13 + "d"
    for route in ("/a", "/b", "/c", "/a", "/d", "/b"):
        assert keys(route, payer) == sessions_module.paid_key(route, payer)
        assert len(keys._prefixes) <= 2
