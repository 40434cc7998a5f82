"""A hung Redis (a real redis-server stopped by SIGSTOP: it accepts, and never answers)
fails every store call closed within the store's deadline (`RedisStore._call`, one per
call; the pool's connections have no socket timeout of their own), on each road that talks
to Redis: a claim, a channel change, a sign-in on a kept connection, the books' history.
A call cut short (by that deadline or by its caller) closes its connection: the answer that
arrives after it is never read as the next call's."""

from __future__ import annotations

import asyncio
import os
import signal
import uuid
from collections.abc import Awaitable, Iterator
from typing import TypeVar

import pytest

from gateway.errors import StoreUnavailable
from gateway.store import redis as redis_store
from gateway.store.backoff import Backoff
from gateway.store.channel_writer import RedisChannelWriter, open_channel_writer
from gateway.store.channels import RedisChannelStorage
from gateway.store.redis import RedisStore
from gateway.store.sessions import RedisSessions, SignIn, open_sessions
from tests.procs import RedisServer
from tests.unit.store.test_channel_writer import charge_once
from tests.unit.store.test_channels import channel_id, new_channel
from tests.unit.store.test_store import record

T = TypeVar("T")
DEADLINE = 0.3
BOUND = 10.0  # far past the deadline: a call still waiting then is a hang, not a slow answer


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[RedisServer]:
    """A redis-server of this test's own (it is stopped and continued), always continued
    before it is terminated: a stopped process does not act on SIGTERM."""
    monkeypatch.setattr(redis_store, "COMMAND_TIMEOUT", DEADLINE)
    proc = RedisServer().start()
    try:
        yield proc
    finally:
        _signal(proc, signal.SIGCONT)
        proc.stop()


def _signal(server: RedisServer, sig: int) -> None:
    assert server.proc is not None
    os.kill(server.proc.pid, sig)


def _store(server: RedisServer, now: list[float]) -> RedisStore:
    # A clock the test moves: past the backoff window once the server answers again.
    return RedisStore(server.url, backoff=Backoff(jitter=lambda: 1.0), clock=lambda: now[0])


async def _fails_closed(call: Awaitable[T]) -> StoreUnavailable:
    with pytest.raises(StoreUnavailable) as failed:
        await asyncio.wait_for(call, BOUND)
    return failed.value


async def test_a_claim_on_a_hung_redis_fails_closed_and_its_answer_is_never_read(
    server: RedisServer,
) -> None:
    now = [0.0]
    store = _store(server, now)
    try:
        assert await store.claim(f"x402:claim:{uuid.uuid4().hex}", record("first"), 60) is None
        await store.keep("x402:test:mine", b"mine", 60)
        _signal(server, signal.SIGSTOP)
        hung = f"x402:claim:{uuid.uuid4().hex}"
        failed = await _fails_closed(store.claim(hung, record("hung"), 60))
        assert "TimeoutError" in failed.detail and f"{DEADLINE:g}s" in failed.detail
        _signal(server, signal.SIGCONT)
        await asyncio.sleep(0.2)  # the held command runs now and its answer is sent
        now[0] += 60
        # One connection in the pool: the next call reads its own answer on it, not the
        # claim script's (nil) that came back on the connection the deadline closed.
        assert await store.call(store.client.get("x402:test:mine")) == b"mine"
        # The hung claim did land (Redis ran it late): it is the books' `claimed`, and the
        # same request finds it is its own.
        assert await store.claim(hung, record("hung"), 60) is None
    finally:
        await store.close()


async def test_a_channel_change_on_a_hung_redis_fails_closed(server: RedisServer) -> None:
    now = [0.0]
    store = _store(server, now)
    sdk = RedisChannelStorage(server.url)
    writer = open_channel_writer(sdk, store)
    assert isinstance(writer, RedisChannelWriter)
    cid = channel_id()
    try:
        sdk.update_channel(cid, lambda _: new_channel(cid))
        assert (await writer.update(cid, charge_once(1000))).status == "updated"  # type: ignore[arg-type]
        _signal(server, signal.SIGSTOP)
        await _fails_closed(writer.update(cid, charge_once(2000)))  # type: ignore[arg-type]
        _signal(server, signal.SIGCONT)
        now[0] += 60
        # The held compare-and-set ran late; the writer reads it back as landed, not as a
        # conflict, and the next charge goes on top of it.
        assert (await writer.update(cid, charge_once(3000))).status == "updated"  # type: ignore[arg-type]
        channel = sdk.get(cid)
        assert channel is not None and channel.charged_cumulative_amount == "3000"
    finally:
        sdk.close()
        await store.close()


async def test_a_sign_in_on_a_hung_redis_fails_closed(server: RedisServer) -> None:
    now = [0.0]
    store = _store(server, now)
    sessions = open_sessions(store)
    assert isinstance(sessions, RedisSessions)
    payer = "0x" + "ab" * 20
    try:
        await sessions.record_payment("/r/*", payer, 60)
        assert await sessions.sign_in("/r/*", payer, uuid.uuid4().hex, 60) is SignIn.SIGNED_IN
        _signal(server, signal.SIGSTOP)
        await _fails_closed(sessions.sign_in("/r/*", payer, uuid.uuid4().hex, 60))
        await _fails_closed(store.recent(5))  # the books' history: its own deadline too
        _signal(server, signal.SIGCONT)
        await asyncio.sleep(0.2)
        now[0] += 60
        nonce = uuid.uuid4().hex
        assert await sessions.sign_in("/r/*", payer, nonce, 60) is SignIn.SIGNED_IN
        assert await sessions.sign_in("/r/*", payer, nonce, 60) is SignIn.NONCE_USED
    finally:
        await store.close()


async def test_a_call_cancelled_mid_read_leaves_no_answer_for_the_next(
    server: RedisServer,
) -> None:
    """Its caller gone (a client that hung up) while the answer is on its way: the next call
    on the same client, on the same pooled connection, reads its own answer."""
    store = RedisStore(server.url)
    try:
        await store.keep("x402:test:a", b"answer-a", 60)
        await store.keep("x402:test:b", b"answer-b", 60)
        for _ in range(3):
            _signal(server, signal.SIGSTOP)
            task = asyncio.create_task(store.call(store.client.get("x402:test:a")))
            await asyncio.sleep(0.1)  # sent; the server holds it
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            _signal(server, signal.SIGCONT)
            await asyncio.sleep(0.1)  # "answer-a" is sent to the connection the cancel closed
            assert await store.call(store.client.get("x402:test:b")) == b"answer-b"
    finally:
        await store.close()


def test_the_pool_connections_have_no_socket_timeout(server: RedisServer) -> None:
    """The deadline is the store call's alone: redis-py's socket timeout (5 s by default)
    would run every write as a task of its own and arm a timer for every read."""
    store = RedisStore(server.url)
    conn = store.client.connection_pool.make_connection()
    assert conn.socket_timeout is None
    assert conn.socket_connect_timeout == redis_store.CONNECT_TIMEOUT
