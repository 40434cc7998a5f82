"""A channel payment's record and the channel state never disagree after a crash: the record
names its channel and cumulative amount, and a dead holder's `settling` record is reconciled
against the channel state (the truth the claims read), not the chain (a voucher moves
nothing there). On a real redis-server: the payment records and the channel state in it, the
SDK's batch-settlement scheme and the gateway's fast voucher path."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.asyncio import Redis
from x402.mechanisms.evm.batch_settlement.server.storage import (
    Channel,
    ChannelStorage,
    InMemoryChannelStorage,
)

from gateway.config.settings import ChannelsSettings
from gateway.errors import PaymentError, StoreUnavailable
from gateway.payment.channels import Channels
from gateway.payment.engine import Payments
from gateway.payment.reconcile import ChainState
from gateway.payment.recovery import claim_key, reconcile_recent
from gateway.store import PaymentRecord
from gateway.store.channel_writer import open_channel_writer
from gateway.store.channels import ChannelCharges, RedisChannelStorage
from gateway.store.memory import MemoryStore
from gateway.store.redis import ALIVE_PREFIX, RedisStore
from tests.procs import RedisServer
from tests.unit.payment.test_channels import (
    KEY,
    PRICE,
    PRICED,
    ChannelFacilitator,
    channel_id,
    matched,
    seed,
)
from tests.unit.payment.test_engine import FakeChain
from tests.unit.wire_helpers import settings


class Died(Exception):
    """The gateway process dies at this point (nothing after it runs)."""


class DiesBeforeTheOutcome(RedisStore):
    """A gateway that dies after the channel was charged, before the record says so."""

    async def update(self, key: str, record: PaymentRecord, ttl: float) -> None:
        if record.status != "settling":
            raise Died(record.status)
        await super().update(key, record, ttl)


def gateway_payments(store: Any, storage: ChannelStorage) -> Payments:
    p = Payments(ChannelFacilitator(), store)
    gateway = settings(PRICED, channels=ChannelsSettings(authorizer_key=KEY))
    p.use_channels(Channels(gateway, storage, writer=open_channel_writer(storage, store)))
    return p


@pytest.fixture
async def db(redis: RedisServer) -> AsyncIterator[str]:
    """A database of its own on the session's redis-server."""
    url = redis.url.rsplit("/", 1)[0] + "/7"
    client = Redis.from_url(url)
    await client.flushdb()
    await client.aclose()
    yield url


async def crash(db: str, *, charged: bool) -> PaymentRecord:
    """A gateway serves the voucher for 2 * PRICE on a channel charged PRICE, and dies after
    its `settling` record: after the channel's charge (`charged`) or before it."""
    storage = RedisChannelStorage(db)
    seed(storage, charged=PRICE)  # type: ignore[arg-type]  # any ChannelStorage
    store = DiesBeforeTheOutcome(db)
    p = gateway_payments(store, storage)
    assert await p.start() == []
    claim = await p.claim(matched(2 * PRICE), PRICED, "req-1")
    await p.verify(claim)
    if charged:
        with pytest.raises(Died):
            await p.settle(claim)
    else:
        await p.books.enter_settling(claim)
    (left,) = await store.recent(1)  # what the store holds (the process thought it further)
    # Dead: no heartbeat any more (its key lapses within ALIVE_TTL; here at once).
    holder = store.holder
    await store.close()
    await p.channels.close()  # type: ignore[union-attr]
    client = Redis.from_url(db)
    await client.delete(ALIVE_PREFIX + holder)
    await client.aclose()
    storage.close()
    return left


async def restarted(db: str, window: float) -> tuple[Payments, RedisStore]:
    """The gateway started again, its chain saying the voucher's pseudo-nonce is unused (it
    always is: a voucher is no EIP-3009 authorization)."""
    store = RedisStore(db)
    p = gateway_payments(store, RedisChannelStorage(db))
    p.reconciler = dataclasses.replace(
        p.reconciler, chain=FakeChain(ChainState(used=False)), window=window
    )
    p.chain = p.reconciler.chain
    assert await p.start() == []
    return p, store


async def stop(p: Payments, store: RedisStore) -> None:
    await p.close()
    await store.close()
    if p.channels is not None:
        p.channels.storage.close()  # type: ignore[attr-defined]


async def test_a_voucher_charged_before_the_crash_is_reconciled_settled_never_released(
    db: str,
) -> None:
    left = await crash(db, charged=True)
    assert (left.status, left.channel, left.cumulative) == ("settling", channel_id(), "2000")
    channel = RedisChannelStorage(db).get(channel_id())
    assert channel is not None and channel.charged_cumulative_amount == str(2 * PRICE)
    p, store = await restarted(db, window=0.0)  # the settle window is long over
    try:
        changed = await reconcile_recent(p.reconciler, 10)
        assert [(old.status, new.status) for old, new in changed] == [("settling", "settled")]
        (row,) = await store.recent(1)
        assert (row.status, row.reason) == ("settled", "reconciled_channel_charged")
        # The same voucher again: already charged (the corrective 402), not a second charge.
        with pytest.raises(PaymentError) as err:
            await p.claim(matched(2 * PRICE), PRICED, "req-2")
        assert err.value.reason == "invalid_batch_settlement_evm_cumulative_amount_mismatch"
    finally:
        await stop(p, store)


async def test_a_voucher_never_charged_is_released_once_the_settle_window_is_over(
    db: str,
) -> None:
    await crash(db, charged=False)
    p, store = await restarted(db, window=600.0)
    try:
        assert await reconcile_recent(p.reconciler, 10) == []  # a cut-off holder may charge
        p.reconciler = dataclasses.replace(p.reconciler, window=0.0)
        changed = await reconcile_recent(p.reconciler, 10)
        assert [(old.status, new.status) for old, new in changed] == [("settling", "released")]
        assert changed[0][1].reason == "reconciled_channel_uncharged"
        # The payer's retry of the very voucher is served and charged once (after the dead
        # request's channel reservation lapsed: its own bound, made to pass here).
        storage = p.channels.storage  # type: ignore[union-attr]
        storage.update_channel(channel_id(), lapsed)
        async with p.claimed(matched(2 * PRICE), PRICED, "req-2") as claim:
            await p.verify(claim)
            assert (await p.settle(claim)).success
        channel = storage.get(channel_id())
        assert channel is not None and channel.charged_cumulative_amount == str(2 * PRICE)
    finally:
        await stop(p, store)


def lapsed(channel: Channel | None) -> Channel | None:
    assert channel is not None and channel.pending_request is not None
    following = channel.copy()
    following.pending_request = None
    return following


class Unreadable(InMemoryChannelStorage):
    def get(self, channel_id: str) -> Any:
        raise StoreUnavailable("redis (channels): gone")


async def test_a_channel_record_waits_while_the_channel_state_cannot_be_read() -> None:
    """Unknown is never released: not with the channel state unreadable, nor without it."""
    store = MemoryStore()
    p = Payments(ChannelFacilitator(), store)
    m = matched(2 * PRICE)
    record = PaymentRecord(
        status="settling",
        request_id="dead-1",
        route="/paid/*",
        payer=m.payer,
        amount=str(PRICE),
        asset=m.requirement.asset,
        network=m.requirement.network,
        nonce=m.identity.nonce,
        holder="a-process-that-died",
        updated_at=time.time() - 10_000,
        channel=channel_id(),
        cumulative=str(2 * PRICE),
    )
    await store.claim(claim_key(record), record, 600)
    unused = FakeChain(ChainState(used=False))
    for charges in (None, ChannelCharges(Unreadable()), ChannelCharges(InMemoryChannelStorage())):
        p.reconciler = dataclasses.replace(p.reconciler, chain=unused, channels=charges, window=1)
        assert await reconcile_recent(p.reconciler, 10) == []
    assert unused.asked == 0  # a voucher's pseudo-nonce is never asked of the chain
    assert (await store.recent(1))[0].status == "settling"


def test_a_record_written_before_the_channel_fields_reads_as_before() -> None:
    old = PaymentRecord(
        status="settled",
        request_id="r",
        route="/p",
        payer="0xabc",
        amount="1",
        asset="0xt",
        network="eip155:84532",
        nonce="0x" + "11" * 32,
    )
    text = old.dumps().replace(',"channel":null,"cumulative":null', "")
    assert '"channel"' not in text
    assert PaymentRecord.loads(text) == old
    voucher = dataclasses.replace(old, channel="0x" + "ab" * 32, cumulative="2000")
    assert PaymentRecord.loads(voucher.dumps()) == voucher
