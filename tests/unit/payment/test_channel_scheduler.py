"""gateway.payment.channel_scheduler: the SDK's real channel manager over the SDK's in-memory
channel storage, with a facilitator that records the claim and settle payloads it is sent."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from decimal import Decimal

import pytest
from prometheus_client import CollectorRegistry
from x402.mechanisms.evm.batch_settlement.server.storage import InMemoryChannelStorage
from x402.mechanisms.evm.batch_settlement.utils import normalize_channel_id

from gateway.observe.channel_metrics import ChannelMetrics
from gateway.payment.channel_claims import ClaimPolicy, Target
from gateway.payment.channel_scheduler import ClaimScheduler
from gateway.store.claim_lock import LOCK_KEY, MARKS_KEY, ClaimLock, MemoryClaimLock, RedisClaimLock
from gateway.store.redis import RedisStore
from tests.procs import RedisServer
from tests.unit.payment.channel_fakes import (
    AUTHORIZER,
    NETWORK,
    RECEIVER,
    TOKEN,
    RecordingFacilitator,
    new_channel,
    put,
)

TARGET = Target(NETWORK, RECEIVER, TOKEN, AUTHORIZER)
POLICY = ClaimPolicy(every=60.0, over=Decimal("5"))


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def scheduler(
    storage: InMemoryChannelStorage,
    facilitator: RecordingFacilitator,
    *,
    lock: ClaimLock | None = None,
    clock: Clock | None = None,
    metrics: ChannelMetrics | None = None,
    policy: ClaimPolicy = POLICY,
) -> ClaimScheduler:
    return ClaimScheduler(
        storage=storage,
        facilitator=facilitator,  # type: ignore[arg-type]
        lock=lock or MemoryClaimLock(),
        policy=policy,
        networks=[NETWORK],
        metrics=metrics,
        clock=clock or Clock(),
    )


async def test_a_voucher_is_claimed_and_settled_once_claim_every_has_passed() -> None:
    storage, fac, clock = InMemoryChannelStorage(), RecordingFacilitator(), Clock()
    one = put(storage, new_channel(charged=3000))
    two = put(storage, new_channel(charged=7000, claimed=2000))
    put(storage, new_channel(charged=500, claimed=500))
    registry = CollectorRegistry()
    sched = scheduler(storage, fac, clock=clock, metrics=ChannelMetrics(registry))
    assert await sched.tick() == []  # first seen now: claimed after claim_every
    assert (
        registry.get_sample_value(
            "x402_gateway_channel_unclaimed_atomic_units",
            {"network": NETWORK, "receiver": RECEIVER, "asset": TOKEN},
        )
        == 8000
    )
    clock.now += 59
    assert await sched.tick() == []
    clock.now += 1
    [outcome] = await sched.tick()
    assert (outcome.reason, outcome.vouchers, outcome.amount) == ("interval", 2, 8000)
    assert len(outcome.claims) == 1 and outcome.settle is not None and outcome.error is None
    assert fac.kinds() == ["claim", "settle"]
    claimed = {c["voucher"]["channel"]["salt"]: c["totalClaimed"] for c in fac.sent[0]["claims"]}  # type: ignore[index, union-attr]
    assert claimed == {one.channel_config.salt: "3000", two.channel_config.salt: "7000"}
    assert storage.get(one.channel_id).total_claimed == "3000"  # type: ignore[union-attr]
    assert storage.get(two.channel_id).total_claimed == "7000"  # type: ignore[union-attr]
    assert await sched.tick() == []  # nothing owed any more
    assert fac.kinds() == ["claim", "settle"]
    await sched.tick()
    sample = registry.get_sample_value
    assert (
        sample("x402_gateway_channel_claims_total", {"outcome": "claimed", "reason": "interval"})
        == 1
    )
    assert (
        sample(
            "x402_gateway_channel_claimed_atomic_units_total", {"network": NETWORK, "asset": TOKEN}
        )
        == 8000
    )
    assert (
        sample(
            "x402_gateway_channel_unclaimed_atomic_units",
            {"network": NETWORK, "receiver": RECEIVER, "asset": TOKEN},
        )
        == 0
    )


async def test_claim_over_and_withdrawals_do_not_wait_for_the_interval() -> None:
    storage, fac = InMemoryChannelStorage(), RecordingFacilitator()
    sched = scheduler(storage, fac)
    put(storage, new_channel(charged=5_000_000))
    [over] = await sched.tick()
    assert over.reason == "over" and over.amount == 5_000_000
    put(storage, new_channel(charged=10, withdraw_requested_at=1_700_000_000))
    [withdrawal] = await sched.tick()
    assert withdrawal.reason == "withdrawal" and withdrawal.amount == 10
    assert fac.kinds() == ["claim", "settle", "claim", "settle"]


async def test_a_failed_claim_is_retried_with_backoff_never_dropped() -> None:
    storage, fac, clock = InMemoryChannelStorage(), RecordingFacilitator(), Clock()
    fac.fail["claim"] = "invalid_batch_settlement_evm_claim_simulation_failed"
    chan = put(storage, new_channel(charged=6_000_000))
    sched = scheduler(storage, fac, clock=clock)
    [failed] = await sched.tick()
    assert failed.error is not None and "claim_simulation_failed" in failed.error
    assert await sched.tick() == []  # backing off: nothing sent
    assert fac.kinds() == ["claim"]
    del fac.fail["claim"]
    clock.now += 3  # past the first backoff (2 s at most)
    [done] = await sched.tick()
    assert done.error is None and done.amount == 6_000_000 and done.settle is not None
    assert storage.get(chan.channel_id).total_claimed == "6000000"  # type: ignore[union-attr]


async def test_a_settle_owed_from_a_crashed_round_is_paid_by_the_next_process() -> None:
    storage, fac, lock = InMemoryChannelStorage(), RecordingFacilitator(), MemoryClaimLock()
    fac.fail["settle"] = "invalid_batch_settlement_evm_settle_transaction_failed"
    put(storage, new_channel(charged=5_000_000))
    [first] = await scheduler(storage, fac, lock=lock).tick()
    assert first.claims and first.error is not None and first.settle is None
    assert (await lock.marks())[f"{TARGET.key}|settle"] == "1"
    del fac.fail["settle"]
    # A new process (a new scheduler), nothing owed in the channels: it still settles.
    [second] = await scheduler(storage, fac, lock=lock).tick()
    assert second.reason == "settle" and second.settle is not None and second.error is None
    assert fac.kinds() == ["claim", "settle", "settle"]
    assert f"{TARGET.key}|settle" not in await lock.marks()
    assert await scheduler(storage, fac, lock=lock).tick() == []


async def test_nothing_to_settle_clears_the_mark_quietly() -> None:
    storage, fac, lock = InMemoryChannelStorage(), RecordingFacilitator(), MemoryClaimLock()
    lease = await lock.acquire(5.0)
    assert lease is not None
    await lock.mark(lease, f"{TARGET.key}|settle", "1")
    await lock.release(lease)
    put(storage, new_channel(charged=0))
    [outcome] = await scheduler(storage, fac, lock=lock).tick()
    assert (outcome.settle, outcome.error) == (None, None)
    assert fac.kinds() == ["settle"] and await lock.marks() == {}


async def test_claim_now_takes_the_named_channels_only() -> None:
    storage, fac = InMemoryChannelStorage(), RecordingFacilitator()
    one = put(storage, new_channel(charged=10))
    two = put(storage, new_channel(charged=20))
    sched = scheduler(storage, fac)
    [outcome] = await sched.claim_now(frozenset({normalize_channel_id(two.channel_id)}))
    assert (outcome.reason, outcome.vouchers, outcome.amount) == ("asked", 1, 20)
    assert storage.get(one.channel_id).total_claimed == "0"  # type: ignore[union-attr]
    [rest] = await sched.claim_now()
    assert rest.amount == 10


async def test_channels_of_another_network_are_left_alone() -> None:
    storage, fac = InMemoryChannelStorage(), RecordingFacilitator()
    put(storage, new_channel(charged=9_000_000, network="eip155:1"))
    registry = CollectorRegistry()
    assert await scheduler(storage, fac, metrics=ChannelMetrics(registry)).claim_now() == []
    assert fac.sent == []
    assert registry.get_sample_value("x402_gateway_channels_unknown_network") == 1


async def test_a_held_lock_means_another_replica_is_claiming() -> None:
    storage, fac, lock = InMemoryChannelStorage(), RecordingFacilitator(), MemoryClaimLock()
    put(storage, new_channel(charged=5_000_000))
    other = await lock.acquire(5.0)
    assert other is not None
    assert await scheduler(storage, fac, lock=lock).tick() == []
    assert fac.sent == []


@pytest.fixture
async def redis_stores(redis: RedisServer) -> AsyncIterator[tuple[RedisStore, RedisStore]]:
    stores = RedisStore(redis.url), RedisStore(redis.url)
    await stores[0].client.delete(LOCK_KEY, MARKS_KEY)
    yield stores
    for store in stores:
        await store.close()


async def test_two_replicas_on_one_redis_send_one_claim(
    redis_stores: tuple[RedisStore, RedisStore],
) -> None:
    storage = InMemoryChannelStorage()  # both replicas see the same channels
    fac = RecordingFacilitator(delay=0.2)  # the claim takes a while: the rounds overlap
    for _ in range(3):
        put(storage, new_channel(charged=5_000_000))
    a, b = (scheduler(storage, fac, lock=RedisClaimLock(s.client, s.call)) for s in redis_stores)
    outcomes = await asyncio.gather(*(s.tick() for s in (a, b) for _ in range(3)))
    done = [o for round_ in outcomes for o in round_]
    assert len(done) == 1 and done[0].vouchers == 3
    assert fac.kinds() == ["claim", "settle"]


async def test_a_round_survives_its_caller_being_cancelled() -> None:
    storage, fac = InMemoryChannelStorage(), RecordingFacilitator(delay=0.2)
    chan = put(storage, new_channel(charged=5_000_000))
    sched = scheduler(storage, fac)
    task = asyncio.create_task(sched.run())
    await asyncio.sleep(0.1)  # the claim is in flight
    task.cancel()
    await sched.wait_idle()
    assert fac.kinds() == ["claim", "settle"]
    assert storage.get(chan.channel_id).total_claimed == "5000000"  # type: ignore[union-attr]


async def test_a_channel_for_another_authorizer_fails_alone() -> None:
    storage, fac = InMemoryChannelStorage(), RecordingFacilitator()
    stranger = "0x" + "99" * 20
    fac.refuse_authorizer = stranger
    ours = put(storage, new_channel(charged=5_000_000))
    theirs = put(storage, new_channel(charged=5_000_000, authorizer=stranger))
    outcomes = {o.target.authorizer: o for o in await scheduler(storage, fac).tick()}
    assert outcomes[AUTHORIZER].error is None and outcomes[AUTHORIZER].amount == 5_000_000
    assert "authorizer_address_mismatch" in (outcomes[stranger].error or "")
    assert storage.get(ours.channel_id).total_claimed == "5000000"  # type: ignore[union-attr]
    assert storage.get(theirs.channel_id).total_claimed == "0"  # type: ignore[union-attr]
