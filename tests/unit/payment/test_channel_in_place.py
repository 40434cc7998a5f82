"""A fast voucher settled in place (memory claims, memory channel state): its claim goes from
`claimed` to its outcome without the `settling` write, which nothing could read; every
other settlement still writes it first (gateway/payment/settlement.py `Books.settle`)."""

from __future__ import annotations

from typing import Any

import pytest
from x402.mechanisms.evm.batch_settlement.server.storage import InMemoryChannelStorage

from gateway.config.settings import ChannelsSettings
from gateway.errors import PaymentConflict
from gateway.payment.channels import Channels
from gateway.payment.engine import Payments
from gateway.store.channel_writer import MemoryChannelWriter
from gateway.store.memory import MemoryStore
from gateway.store.records import PaymentRecord
from tests.unit.payment.test_channel_fast import SlowWriter, stable
from tests.unit.payment.test_channels import (
    KEY,
    PRICE,
    PRICED,
    ChannelFacilitator,
    matched,
    seed,
)
from tests.unit.wire_helpers import settings


class WatchedStore(MemoryStore):
    """A memory store that keeps the status of each record written, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.written: list[str] = []

    async def claim(self, key: str, record: PaymentRecord, ttl: float) -> PaymentRecord | None:
        self.written.append(record.status)
        return await super().claim(key, record, ttl)

    async def update(self, key: str, record: PaymentRecord, ttl: float) -> None:
        self.written.append(record.status)
        await super().update(key, record, ttl)

    async def replace(
        self,
        key: str,
        expect: PaymentRecord,
        record: PaymentRecord,
        ttl: float,
        history: tuple[PaymentRecord, ...] = (),
    ) -> bool:
        self.written.append(record.status)
        return await super().replace(key, expect, record, ttl, history)


async def payments(storage: InMemoryChannelStorage, writer: Any) -> tuple[Payments, WatchedStore]:
    store = WatchedStore()
    p = Payments(ChannelFacilitator(), store)
    gateway = settings(PRICED, channels=ChannelsSettings(authorizer_key=KEY))
    p.use_channels(Channels(gateway, storage, writer=writer))
    assert await p.start() == []
    return p, store


async def test_a_voucher_settled_in_place_books_its_outcome_without_a_settling_record() -> None:
    storage = InMemoryChannelStorage()
    seed(storage, charged=PRICE)
    p, store = await payments(storage, MemoryChannelWriter(storage))
    async with p.claimed(matched(2 * PRICE), PRICED, "req-1") as claim:
        await p.verify(claim)
        assert claim.hold is not None
        settled = await p.settle(claim)
    assert settled.success and claim.record.status == "settled"
    assert store.written == ["claimed", "settled"]
    assert stable(storage)["chargedCumulativeAmount"] == str(2 * PRICE)
    await p.close()


async def test_a_voucher_settling_on_a_remote_channel_store_writes_settling_first() -> None:
    storage = InMemoryChannelStorage()
    seed(storage, charged=PRICE)
    p, store = await payments(storage, SlowWriter(storage))
    async with p.claimed(matched(2 * PRICE), PRICED, "req-1") as claim:
        await p.verify(claim)
        assert claim.hold is not None
        await p.settle(claim)
    assert store.written == ["claimed", "settling", "settled"]
    await p.close()


async def test_a_claim_taken_over_before_an_in_place_settlement_charges_nothing() -> None:
    # Another request holds the claim now (this one was taken over): the in-place settlement
    # must refuse as `enter_settling` would, before the channel is charged.
    storage = InMemoryChannelStorage()
    seed(storage, charged=PRICE)
    p, store = await payments(storage, MemoryChannelWriter(storage))
    with pytest.raises(PaymentConflict):
        async with p.claimed(matched(2 * PRICE), PRICED, "req-1") as claim:
            await p.verify(claim)
            assert claim.hold is not None
            taker = claim.record.with_status("claimed", request_id="req-2", holder="other")
            await store.update(claim.key, taker, claim.ttl)
            await p.settle(claim)
    assert claim.settled is None
    assert stable(storage)["chargedCumulativeAmount"] == str(PRICE)
    assert "settled" not in store.written
    await p.close()
