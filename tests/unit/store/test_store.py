"""The store contract, on both implementations: the memory one and a real redis-server."""

from __future__ import annotations

import asyncio
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.asyncio import Redis

from gateway.errors import StoreUnavailable
from gateway.store import PaymentRecord, PaymentStore
from gateway.store.backoff import Backoff
from gateway.store.memory import MemoryStore
from gateway.store.redis import ALIVE_PREFIX, ALIVE_TTL, RedisStore
from gateway.store.redis_url import parse_redis_url
from tests.procs import RedisServer, free_port, stop, wait_port

REDIS_SERVER = shutil.which("redis-server") or "redis-server"
needs_redis = pytest.mark.skipif(
    shutil.which("redis-server") is None, reason="redis-server is not installed"
)


def record(request_id: str = "r1", status: str = "claimed") -> PaymentRecord:
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


@pytest.mark.parametrize("status", ["settling", "pending", "settlement_pending", "settled"])
async def test_release_never_drops_a_claim_that_may_be_charged(
    store: PaymentStore, status: str
) -> None:
    """`pending` is the previous version's pre-settlement status: read as `settling`."""
    k = key()
    await store.claim(k, record("a"), 60)
    await store.update(k, record("a").with_status(status), 60)  # type: ignore[arg-type]
    await store.release(k, "a")
    held = await store.claim(k, record("b"), 60)
    assert held is not None and held.status == status
    assert held.in_flight == (status in ("settling", "pending"))


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


async def test_recent_lists_each_request_once_in_its_latest_state(store: PaymentStore) -> None:
    ids = [uuid.uuid4().hex for _ in range(3)]
    settled, crashed, released = ids
    await store.claim(key(), record(crashed), 60)  # its process died: stays claimed
    k = key()
    await store.claim(k, record(settled), 60)
    await store.update(k, record(settled).with_status("settled", transaction="0x01"), 60)
    k = key()
    await store.claim(k, record(released), 60)
    await store.release(k, released)
    rows = await store.recent(3)
    assert [(r.request_id, r.status) for r in rows] == [
        (released, "released"),
        (settled, "settled"),
        (crashed, "claimed"),
    ]
    assert rows[1].transaction == "0x01"


async def test_recent_reads_past_a_page_of_changes(redis: RedisServer) -> None:
    s = RedisStore(redis.url)
    try:
        ids = [uuid.uuid4().hex for _ in range(40)]
        for rid in ids:  # four changes each: one page of 120 holds only 30 requests
            k, rec = key(), record(rid)
            await s.claim(k, rec, 60)
            for status in ("settlement_pending", "settlement_pending", "settled"):
                await s.update(k, rec.with_status(status), 60)
        rows = await s.recent(40)
        assert [r.request_id for r in rows] == ids[::-1]
        assert {r.status for r in rows} == {"settled"}
    finally:
        await s.close()


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


# --- URLs: Sentinel and Cluster are parsed here (redis-py has no URL for them) ----------


def test_plain_urls_go_to_redis_py_unchanged() -> None:
    for url in ("redis://:pw@127.0.0.1:6380/2?ssl_cert_reqs=none", "rediss://h", "unix:///r.sock"):
        target = parse_redis_url(url)
        assert target.kind == "single" and target.url == url


def test_sentinel_url() -> None:
    t = parse_redis_url("redis+sentinel://u:p%40ss@s1:26380,s2,[::1]:5000/mymaster/3?ssl=true")
    assert t.kind == "sentinel"
    assert t.nodes == (("s1", 26380), ("s2", 26379), ("::1", 5000))
    assert (t.service_name, t.db, t.ssl, t.username, t.password) == (
        "mymaster",
        3,
        True,
        "u",
        "p@ss",
    )
    assert "p@ss" not in repr(t)
    q = parse_redis_url("redis+sentinel://s1?service_name=m&sentinel_password=sp&db=1")
    assert (q.service_name, q.db, q.sentinel_password, q.password) == ("m", 1, "sp", None)


def test_cluster_url() -> None:
    t = parse_redis_url("rediss://:secret@n1:7000,n2:7001?cluster=true")
    assert t.kind == "cluster" and t.ssl and t.password == "secret"
    assert t.nodes == (("n1", 7000), ("n2", 7001))
    assert parse_redis_url("redis://n1?cluster=yes").nodes == (("n1", 6379),)
    assert parse_redis_url("redis://n1?cluster=false").kind == "single"


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("redis+sentinel://s1", "master's name"),
        ("redis+sentinel://s1/m/x", "bad db"),
        ("redis+sentinel://s1/m/0/extra", "path"),
        ("redis+sentinel://s1:99999/m", "bad port"),
        ("redis+sentinel://s1/m?timeout=1", "does not take"),
        ("redis://a,b/0", "several hosts"),
        ("redis://n1/2?cluster=true", "only db 0"),
        ("redis://n1?cluster=maybe", "not true or false"),
        ("memcached://x", "not a Redis URL"),
        ("redis+sentinel://user:hunter2@,s2/m", "empty host"),
    ],
)
def test_bad_urls_are_refused_without_showing_the_password(url: str, says: str) -> None:
    with pytest.raises(ValueError, match=says) as info:
        parse_redis_url(url)
    assert "hunter2" not in str(info.value)


# --- unreachable: fail closed, back off, reconnect ----------------------------------------


def test_backoff_doubles_to_its_cap_and_resets() -> None:
    b = Backoff(base=0.1, cap=1.0, jitter=lambda: 1.0)
    assert b.wait_left(100.0) == 0 and not b.failing
    delays = [b.failed(100.0, "down") for _ in range(6)]
    assert delays == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    assert b.wait_left(100.5) == pytest.approx(0.5) and b.last_error == "down"
    b.succeeded()
    assert b.wait_left(100.0) == 0 and not b.failing
    half = Backoff(base=0.1, cap=1.0, jitter=lambda: 0.0)
    assert half.failed(0.0, "x") == pytest.approx(0.05)


@needs_redis
async def test_redis_restart_fails_fast_then_recovers(tmp_path: Path) -> None:
    now = [0.0]
    server = RedisServer().start()
    s = RedisStore(server.url, backoff=Backoff(jitter=lambda: 1.0), clock=lambda: now[0])
    try:
        assert await s.claim(key(), record("a"), 60) is None
        server.stop()
        with pytest.raises(StoreUnavailable) as first:
            await s.claim(key(), record("b"), 60)
        assert "ConnectionError" in first.value.detail
        # Inside the backoff window no connection is tried: an instant 503.
        with pytest.raises(StoreUnavailable, match=r"next attempt in 0\.1s") as fast:
            await s.ping()
        assert fast.value.retry_after == 1
        restarted = RedisServer()
        restarted.port = server.port
        restarted.start()
        try:
            now[0] += 0.2
            assert await s.claim(key(), record("c"), 60) is None  # reconnected by itself
            await s.ping()
        finally:
            restarted.stop()
    finally:
        server.stop()
        await s.close()


async def test_lost_answer_retry_finds_its_own_claim(redis: RedisServer) -> None:
    s = RedisStore(redis.url)
    try:
        k = key()
        assert await s.claim(k, record("mine"), 60) is None
        assert await s.claim(k, record("mine"), 60) is None  # the same request, again
        held = await s.claim(k, record("other"), 60)
        assert held is not None and held.request_id == "mine"
    finally:
        await s.close()


# --- Sentinel and Cluster, on real redis-server processes ----------------------------------


async def command(client: Redis, *args: object) -> Any:
    return await client.execute_command(*args)  # type: ignore[no-untyped-call]


def _spawn(args: list[str], port: int) -> subprocess.Popen[bytes]:
    # In a scratch directory: a master serving a replica writes its RDB file into its cwd.
    proc = subprocess.Popen(
        args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tempfile.mkdtemp()
    )
    wait_port(port, proc=proc)
    return proc


async def _contract(s: RedisStore) -> None:
    k = key()
    results = await asyncio.gather(*(s.claim(k, record(f"r{i}"), 60) for i in range(20)))
    assert sum(r is None for r in results) == 1
    winner = next(f"r{i}" for i, r in enumerate(results) if r is None)
    settled = record(winner).with_status("settled", transaction="0x" + "cd" * 32)
    await s.update(k, settled, 60)
    held = await s.claim(k, record("late"), 60)
    assert held is not None and held.transaction == settled.transaction
    assert (await s.recent(1))[0] == settled
    k2 = key()
    await s.claim(k2, record("gone"), 60)
    await s.release(k2, "gone")
    assert await s.claim(k2, record("again"), 60) is None
    assert [r.status for r in await s.recent(2)] == ["claimed", "released"]


async def test_sentinel_url_reaches_the_master(redis: RedisServer, tmp_path: Path) -> None:
    port = free_port()
    conf = tmp_path / "sentinel.conf"
    conf.write_text(f"port {port}\nbind 127.0.0.1\nsentinel monitor gw 127.0.0.1 {redis.port} 1\n")
    sentinel = _spawn([REDIS_SERVER, str(conf), "--sentinel"], port)
    s = RedisStore(f"redis+sentinel://127.0.0.1:{port},127.0.0.1:{free_port()}/gw")
    try:
        await _contract(s)
    finally:
        await s.close()
        stop(sentinel)


@needs_redis
async def test_cluster_url_spreads_claims_over_slots(tmp_path: Path) -> None:
    port = free_port()
    node = _spawn(
        [REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--cluster-enabled", "yes",
         "--cluster-config-file", str(tmp_path / "nodes.conf"),
         "--cluster-port", str(free_port())],  # not port+10000: that may pass 65535
        port,
    )  # fmt: skip
    admin = Redis(port=port)
    s = RedisStore(f"redis://127.0.0.1:{port}?cluster=true")
    try:
        await command(admin, "CLUSTER", "ADDSLOTSRANGE", 0, 16383)
        for _ in range(100):  # a one-node cluster turns "ok" within a couple of seconds
            if b"cluster_state:ok" in await command(admin, "CLUSTER", "INFO"):
                break
            await asyncio.sleep(0.05)
        await _contract(s)
    finally:
        await s.close()
        await admin.aclose()
        stop(node)


async def test_a_failed_settlement_stays_failed_in_the_books_after_release(
    store: PaymentStore,
) -> None:
    k, rid = key(), uuid.uuid4().hex
    await store.claim(k, record(rid), 60)
    await store.update(k, record(rid).with_status("failed", reason="insufficient_funds"), 60)
    await store.release(k, rid)
    assert await store.claim(k, record("next"), 60) is None  # released: usable again
    rows = await store.recent(2)
    assert [(r.request_id, r.status) for r in rows] == [("next", "claimed"), (rid, "failed")]


async def test_a_burst_beyond_the_connection_pool_queues_instead_of_failing(
    redis: RedisServer,
) -> None:
    # 500 claims at once: redis-py's own pool would refuse past 100 connections, which
    # would read as "store down" (503s, and backoff for everyone after).
    s = RedisStore(redis.url)
    try:
        keys = [key() for _ in range(500)]
        won = await asyncio.gather(*(s.claim(k, record(k), 60) for k in keys))
        assert won == [None] * 500
        await s.ping()
    finally:
        await s.close()


@needs_redis
async def test_sentinel_failover_is_followed_and_keeps_the_claims(tmp_path: Path) -> None:
    master, replica, sentinel_port = free_port(), free_port(), free_port()
    common = ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    # No 5 s pause before the replica's first sync (Redis's default for diskless sync).
    primary_args = [*common, "--repl-diskless-sync-delay", "0"]
    procs = [_spawn([REDIS_SERVER, "--port", str(master), *primary_args], master)]
    try:
        procs.append(
            _spawn(
                [REDIS_SERVER, "--port", str(replica), *common,
                 "--replicaof", "127.0.0.1", str(master)],
                replica,
            )
        )  # fmt: skip
        conf = tmp_path / "sentinel.conf"
        conf.write_text(
            f"port {sentinel_port}\nbind 127.0.0.1\n"
            f"sentinel monitor gw 127.0.0.1 {master} 1\n"
            "sentinel down-after-milliseconds gw 200\nsentinel failover-timeout gw 2000\n"
        )
        procs.append(_spawn([REDIS_SERVER, str(conf), "--sentinel"], sentinel_port))
        sentinel = Redis(port=sentinel_port)
        primary = Redis(port=master)
        s = RedisStore(f"redis+sentinel://127.0.0.1:{sentinel_port}/gw")
        try:
            for _ in range(100):  # the Sentinel must know the replica before it can promote it
                if await command(sentinel, "SENTINEL", "REPLICAS", "gw"):
                    break
                await asyncio.sleep(0.05)
            k = key()
            assert await s.claim(k, record("before"), 60) is None
            assert await command(primary, "WAIT", 1, 2000) == 1  # on the replica too
            stop(procs[0], signal.SIGKILL)
            deadline = time.monotonic() + 15
            while True:  # fails closed until the Sentinel has promoted the replica
                try:
                    held = await s.claim(k, record("after"), 60)
                    break
                except StoreUnavailable:
                    assert time.monotonic() < deadline, "the store never followed the failover"
                    await asyncio.sleep(0.1)
            assert held is not None and held.request_id == "before"  # still one winner
            assert await s.claim(key(), record("new"), 60) is None
        finally:
            await s.close()
            await sentinel.aclose()
            await primary.aclose()
    finally:
        for proc in reversed(procs):
            stop(proc)


async def test_replace_swaps_only_the_record_that_was_judged(store: PaymentStore) -> None:
    k = key()
    old = record("dead")
    await store.claim(k, old, 60)
    settling = old.with_status("settling")
    await store.update(k, settling, 60)
    assert not await store.replace(k, old, record("new"), 60)  # it moved on: not ours to take
    settled = settling.with_status("settled", transaction="0x01")
    assert await store.replace(k, settling, settled, 0)
    held = await store.claim(k, record("late"), 60)
    assert held is not None and (held.status, held.transaction) == ("settled", "0x01")
    assert (await store.recent(1))[0].status == "settled"


async def test_a_holder_is_alive_while_its_store_beats(store: PaymentStore) -> None:
    await store.claim(key(), record("a"), 60)  # the first claim starts the heartbeat
    assert await store.alive(store.holder)
    assert not await store.alive("a-process-that-died")
    assert not await store.alive(None)  # a record from before heartbeats


@needs_redis
async def test_a_closed_stores_holder_is_gone_once_its_heartbeat_expires(
    redis: RedisServer,
) -> None:
    s = RedisStore(redis.url)
    await s.claim(key(), record("a"), 60)
    other = RedisStore(redis.url)
    try:
        assert await other.alive(s.holder)
        await s.close()
        raw = aioredis.from_url(redis.url)  # the heartbeat key's expiry, read directly
        ttl = await raw.pttl(ALIVE_PREFIX + s.holder)
        await raw.aclose()
        assert 0 < ttl <= ALIVE_TTL * 1000  # no longer renewed: gone within ALIVE_TTL
    finally:
        await other.close()


async def test_a_busy_store_fails_closed_after_the_command_timeout(
    redis: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every command slot taken: the next command waits at most COMMAND_TIMEOUT, then fails
    closed (busy, not down); a free slot is taken at once (no timer armed)."""
    from gateway.store import redis as redis_store

    monkeypatch.setattr(redis_store, "COMMAND_TIMEOUT", 0.05)
    store = RedisStore(redis.url)
    try:
        assert await store.call(store.client.exists("x")) == 0
        for _ in range(redis_store.MAX_CONCURRENT):
            await store._slots.acquire()
        started = time.monotonic()
        with pytest.raises(StoreUnavailable, match="in flight"):
            await store.call(store.client.exists("x"))
        assert time.monotonic() - started < 1
        store._slots.release()
        assert await store.call(store.client.exists("x")) == 0
    finally:
        await store.close()
