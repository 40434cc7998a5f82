"""The voucher fast path (gateway/payment/channel_fast.py) through `Payments`, held to the
SDK's path on the same channel: same stored state, same receipt, same refusals."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from typing import Any

import pytest
from x402.http.utils import decode_payment_response_header
from x402.mechanisms.evm.batch_settlement.server.storage import InMemoryChannelStorage

from gateway.config.settings import ChannelsSettings
from gateway.errors import PaymentError, SettlementFailed
from gateway.payment.channels import Channels
from gateway.payment.engine import Payments
from gateway.payment.receipts import receipt_headers
from gateway.store.channel_writer import MemoryChannelWriter
from gateway.store.memory import MemoryStore
from tests.unit.payment.test_channel_terms import voucher_payload
from tests.unit.payment.test_channels import (
    CONFIG,
    KEY,
    PRICE,
    PRICED,
    ChannelFacilitator,
    WatchedStorage,
    channel_id,
    matched,
    seed,
)
from tests.unit.wire_helpers import settings


async def payments(
    storage: InMemoryChannelStorage, *, fast: bool = True
) -> tuple[Payments, ChannelFacilitator]:
    fac = ChannelFacilitator()
    p = Payments(fac, MemoryStore())
    gateway = settings(PRICED, channels=ChannelsSettings(authorizer_key=KEY))
    writer = MemoryChannelWriter(storage) if fast else None
    p.use_channels(Channels(gateway, storage, writer=writer))
    assert await p.start() == []
    return p, fac


def stable(storage: InMemoryChannelStorage) -> dict[str, Any]:
    """The stored channel without what differs by the clock or a random id."""
    channel = storage.get(channel_id())
    assert channel is not None
    data = channel.to_dict()
    data.pop("lastRequestTimestamp")
    return data


async def serve(p: Payments, cumulative: int, request_id: str) -> Any:
    async with p.claimed(matched(cumulative), PRICED, request_id) as claim:
        await p.verify(claim)
        held = claim.hold is not None
        settled = await p.settle(claim)
    return settled, held


async def test_a_plain_voucher_is_served_on_the_loop_as_the_sdk_serves_it() -> None:
    stores = {kind: WatchedStorage() for kind in ("fast", "sdk")}
    receipts = {}
    seed(stores["fast"], charged=PRICE)
    seeded = stores["fast"].get(channel_id())
    stores["sdk"].update_channel(channel_id(), lambda _: seeded)  # the very same state
    for kind, storage in stores.items():
        p, fac = await payments(storage, fast=kind == "fast")
        storage.threads.clear()
        settled, held = await serve(p, 2 * PRICE, "req-1")
        assert held is (kind == "fast")
        assert fac.calls == []  # no facilitator, no transaction
        receipts[kind] = decode_payment_response_header(
            receipt_headers(settled, 2)["PAYMENT-RESPONSE"]
        )
        await p.close()
    assert stores["fast"].threads == [threading.get_ident()] * 2  # reserve, commit
    assert stable(stores["fast"]) == stable(stores["sdk"])
    assert receipts["fast"] == receipts["sdk"]
    assert receipts["fast"].extra["channelState"]["chargedCumulativeAmount"] == str(2 * PRICE)


async def test_a_run_of_vouchers_charges_each_once() -> None:
    storage = InMemoryChannelStorage()
    seed(storage, charged=PRICE)
    p, _ = await payments(storage)
    for k in range(2, 12):
        settled, held = await serve(p, k * PRICE, f"req-{k}")
        assert held and settled.success
    assert stable(storage)["chargedCumulativeAmount"] == str(11 * PRICE)
    with pytest.raises(PaymentError) as again:  # a voucher used once buys nothing more
        await serve(p, 11 * PRICE, "req-again")
    assert again.value.reason == "invalid_batch_settlement_evm_cumulative_amount_mismatch"
    await p.close()


async def test_a_fast_voucher_in_memory_settles_to_its_end_without_suspending() -> None:
    # Memory claim store and channel state: the settlement is never a task of its own, so it
    # must end at its first step (a suspension would be a point where a hang-up cuts it short).
    storage = InMemoryChannelStorage()
    seed(storage, charged=PRICE)
    p, _ = await payments(storage)
    async with p.claimed(matched(2 * PRICE), PRICED, "req-1") as claim:
        await p.verify(claim)
        assert claim.hold is not None
        settling = p.settle(claim)
        with pytest.raises(StopIteration) as ended:
            settling.send(None)
    settled = ended.value.value
    assert settled.success and claim.settled is settled and claim.settlement is None
    assert claim.record.status == "settled"
    assert stable(storage)["chargedCumulativeAmount"] == str(2 * PRICE)
    await p.close()


async def test_a_fast_voucher_on_a_remote_channel_store_settles_in_a_task_of_its_own() -> None:
    storage = InMemoryChannelStorage()
    seed(storage, charged=PRICE)
    p = Payments(ChannelFacilitator(), MemoryStore())
    gateway = settings(PRICED, channels=ChannelsSettings(authorizer_key=KEY))
    p.use_channels(Channels(gateway, storage, writer=SlowWriter(storage)))
    assert await p.start() == []
    async with p.claimed(matched(2 * PRICE), PRICED, "req-1") as claim:
        await p.verify(claim)
        assert claim.hold is not None and claim.hold.writing is not None
        settled = await p.settle(claim)
    assert settled.success and isinstance(claim.settlement, asyncio.Task)
    await p.close()


async def test_a_voucher_whose_origin_failed_is_not_charged_and_buys_its_retry() -> None:
    storage = InMemoryChannelStorage()
    seed(storage, charged=PRICE)
    p, _ = await payments(storage)
    m = matched(2 * PRICE)
    with pytest.raises(RuntimeError):
        async with p.claimed(m, PRICED, "req-1") as claim:
            await p.verify(claim)
            assert claim.hold is not None
            raise RuntimeError("the origin failed")
    after = stable(storage)
    assert "pendingRequest" not in after and after["chargedCumulativeAmount"] == str(PRICE)
    settled, held = await serve(p, 2 * PRICE, "req-2")
    assert held and settled.success
    await p.close()


@pytest.mark.parametrize(
    ("charged", "balance", "cumulative", "reason"),
    [
        (3 * PRICE, 10**6, 2 * PRICE, "invalid_batch_settlement_evm_cumulative_amount_mismatch"),
        (PRICE, PRICE, 2 * PRICE, "invalid_batch_settlement_evm_cumulative_exceeds_balance"),
    ],
)
async def test_what_the_fast_path_declines_gets_the_sdks_own_refusal(
    charged: int, balance: int, cumulative: int, reason: str
) -> None:
    storage = InMemoryChannelStorage()
    seed(storage, charged=charged, balance=balance)
    before = stable(storage)
    p, fac = await payments(storage)
    with pytest.raises(PaymentError) as refused:
        await serve(p, cumulative, "req-1")
    assert refused.value.reason == reason
    assert fac.calls == []
    assert stable(storage) == before
    await p.close()


async def test_a_forged_voucher_is_refused_with_the_sdks_reason() -> None:
    storage = InMemoryChannelStorage()
    seed(storage, charged=PRICE)
    p, _ = await payments(storage)
    m = matched(2 * PRICE)
    other = voucher_payload(3 * PRICE, CONFIG)["voucher"]["signature"]
    m.payload.payload["voucher"]["signature"] = other
    with pytest.raises(PaymentError) as refused:
        async with p.claimed(m, PRICED, "req-1") as claim:
            await p.verify(claim)
    assert refused.value.reason == "invalid_batch_settlement_evm_voucher_signature"
    assert stable(storage)["chargedCumulativeAmount"] == str(PRICE)
    await p.close()


async def test_a_channel_with_stale_onchain_state_goes_to_the_facilitator() -> None:
    storage = InMemoryChannelStorage()
    seed(storage, charged=PRICE)
    channel = storage.get(channel_id())
    assert channel is not None
    old = dataclasses.replace(channel, onchain_synced_at=int(time.time() * 1000) - 3_600_000)
    storage.update_channel(channel_id(), lambda _: old)
    p, fac = await payments(storage)
    async with p.claimed(matched(2 * PRICE), PRICED, "req-1") as claim:
        await p.verify(claim)
        assert claim.hold is None  # the SDK's path: the chain is read again (facilitator)
    assert fac.calls == ["verify"]
    await p.close()


async def test_a_busy_channel_is_not_reserved_twice() -> None:
    storage = InMemoryChannelStorage()
    seed(storage, charged=PRICE)
    p, _ = await payments(storage)
    async with p.claimed(matched(2 * PRICE), PRICED, "req-1") as first:
        await p.verify(first)
        assert first.hold is not None
        with pytest.raises(PaymentError) as busy:
            async with p.claimed(matched(3 * PRICE), PRICED, "req-2") as second:
                await p.verify(second)
        assert busy.value.reason == "invalid_batch_settlement_evm_cumulative_amount_mismatch"
        await p.settle(first)
    await p.close()


async def test_a_reservation_lost_before_settling_charges_nothing() -> None:
    storage = InMemoryChannelStorage()
    seed(storage, charged=PRICE)
    p, _ = await payments(storage)
    with pytest.raises(SettlementFailed) as lost:
        async with p.claimed(matched(2 * PRICE), PRICED, "req-1") as claim:
            await p.verify(claim)
            channel = storage.get(channel_id())
            assert channel is not None
            storage.update_channel(
                channel_id(), lambda _: dataclasses.replace(channel, pending_request=None)
            )
            await p.settle(claim)
    assert lost.value.reason == "invalid_batch_settlement_evm_channel_busy"
    assert stable(storage)["chargedCumulativeAmount"] == str(PRICE)
    await p.close()


class SlowWriter:
    """A store round trip that takes 0.3 s (a remote store: its writes suspend)."""

    def __init__(self, storage: InMemoryChannelStorage) -> None:
        self._storage = storage

    async def update(self, channel_id: str, update: Any) -> Any:
        await asyncio.sleep(0.3)
        return self._storage.update_channel(channel_id, update)


async def test_a_client_hanging_up_while_its_reservation_is_written_leaves_the_channel_free() -> (
    None
):
    storage = InMemoryChannelStorage()
    seed(storage, charged=PRICE)
    p = Payments(ChannelFacilitator(), MemoryStore())
    gateway = settings(PRICED, channels=ChannelsSettings(authorizer_key=KEY))
    p.use_channels(Channels(gateway, storage, writer=SlowWriter(storage)))
    assert await p.start() == []
    m = matched(2 * PRICE)

    async def request() -> None:
        async with p.claimed(m, PRICED, "req-1") as claim:
            await p.verify(claim)  # the reservation's round trip: 0.3 s
            await asyncio.sleep(10)  # never reached before the hang-up

    task = asyncio.create_task(request())
    await asyncio.sleep(0.1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    channel = storage.get(channel_id())
    # the release waited for the reservation still being written, then cleared it
    assert channel is not None and channel.pending_request is None
    assert channel.charged_cumulative_amount == str(PRICE)
    settled, held = await serve(p, 2 * PRICE, "req-2")  # the same voucher buys its call
    assert held and settled.success
    await p.close()


async def test_a_copy_charged_after_a_lapsed_reservation_is_not_taken_for_the_first() -> None:
    # Red team (session 8): the first request's reservation lapses while its origin is
    # slow, and a copy of its voucher that the claims did not stop (a second process, or
    # a claim gone before its time) reserves and charges the channel to the very amount the
    # first was to charge. The first's charge must then be refused, not read as its own
    # charge that landed (one voucher, one response).
    storage = InMemoryChannelStorage()
    seed(storage, charged=PRICE)
    first, _ = await payments(storage)
    copy, _ = await payments(storage)
    async with first.claimed(matched(2 * PRICE), PRICED, "req-1") as slow:
        await first.verify(slow)
        assert slow.hold is not None
        channel = storage.get(channel_id())
        assert channel is not None and channel.pending_request is not None
        lapsed = dataclasses.replace(
            channel,
            pending_request=dataclasses.replace(channel.pending_request, expires_at=0),
        )
        storage.update_channel(channel_id(), lambda _: lapsed)
        settled, held = await serve(copy, 2 * PRICE, "req-copy")
        assert held and settled.success
        with pytest.raises(SettlementFailed) as refused:
            await first.settle(slow)
    assert refused.value.reason == "invalid_batch_settlement_evm_channel_busy"
    assert stable(storage)["chargedCumulativeAmount"] == str(2 * PRICE)  # charged once
    await first.close()
    await copy.close()
