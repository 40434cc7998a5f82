"""Channel payments on `Payments` with the SDK's own batch-settlement server scheme and its
in-memory channel storage (a fake facilitator that only counts calls): vouchers verified and
settled in process, the corrective 402, reservations cleared, hooks off the event loop."""

from __future__ import annotations

import threading
import time
from types import MappingProxyType
from typing import Any

import pytest
from eth_account import Account
from x402.http.utils import decode_payment_required_header, decode_payment_response_header
from x402.mechanisms.evm.batch_settlement.server.storage import (
    Channel,
    ChannelUpdate,
    ChannelUpdateResult,
    InMemoryChannelStorage,
)
from x402.mechanisms.evm.batch_settlement.types import ChannelConfig
from x402.schemas import PaymentRequired, SupportedKind, SupportedResponse

from gateway.config.settings import ChannelsSettings
from gateway.errors import PaymentError
from gateway.payment import decode_payment, match_requirement
from gateway.payment.channel_terms import ChannelIds
from gateway.payment.channels import Channels
from gateway.payment.engine import Payments
from gateway.store.memory import MemoryStore
from tests.unit.payment.test_channel_terms import NETWORK, PAYER, config, voucher_payload
from tests.unit.payment.test_engine import FakeFacilitator
from tests.unit.wire_helpers import URL, accepted, b64json, headers, requirement, route, settings

KEY = "0x" + "5a" * 32
AUTHORIZER = Account.from_key(KEY).address
PRICE = 1000
BATCH = requirement(
    scheme="batch-settlement",
    extra=MappingProxyType(
        {
            "name": "USDC",
            "version": "2",
            "withdrawDelay": 3600,
            "minDeposit": "1000000",
            "receiverAuthorizer": AUTHORIZER,
        }
    ),
)
PRICED = route(requirement(), BATCH)
CONFIG = config(receiverAuthorizer=AUTHORIZER, withdrawDelay=3600)


class ChannelFacilitator(FakeFacilitator):
    def get_supported(self) -> SupportedResponse:
        kinds = [
            SupportedKind(x402_version=2, scheme=scheme, network=NETWORK)
            for scheme in ("exact", "batch-settlement")
        ]
        return SupportedResponse(kinds=kinds)


class WatchedStorage(InMemoryChannelStorage):
    """The SDK's in-memory storage, noting which thread each call came from."""

    def __init__(self) -> None:
        super().__init__()
        self.threads: list[int] = []

    def get(self, channel_id: str) -> Channel | None:
        self.threads.append(threading.get_ident())
        return super().get(channel_id)

    def update_channel(self, channel_id: str, update: ChannelUpdate) -> ChannelUpdateResult:
        self.threads.append(threading.get_ident())
        return super().update_channel(channel_id, update)


def channel_id() -> str:
    raw = voucher_payload(PRICE, CONFIG)
    return str(raw["voucher"]["channelId"]).lower()


def seed(storage: InMemoryChannelStorage, charged: int, balance: int = 1_000_000) -> None:
    """A channel as a deposit leaves it: on-chain state just read."""
    cid = channel_id()
    channel = Channel(
        channel_id=cid,
        channel_config=ChannelConfig.from_dict(CONFIG),
        charged_cumulative_amount=str(charged),
        signed_max_claimable=str(charged),
        signature="0x" + "00" * 65,
        balance=str(balance),
        onchain_synced_at=int(time.time() * 1000),
    )
    storage.update_channel(cid, lambda _: channel)


def matched(cumulative: int, ids: ChannelIds | None = None) -> Any:
    """A voucher for `cumulative`, matched (`ids`: a generation's remembered channels)."""
    data = {
        "x402Version": 2,
        "accepted": accepted(BATCH),
        "payload": voucher_payload(cumulative, CONFIG),
        "resource": {"url": URL},
    }
    decoded = decode_payment(headers(("PAYMENT-SIGNATURE", b64json(data))), 16384)
    assert decoded is not None
    return match_requirement(PRICED, decoded, URL, ids)


async def payments(storage: InMemoryChannelStorage) -> tuple[Payments, ChannelFacilitator]:
    fac = ChannelFacilitator()
    p = Payments(fac, MemoryStore())
    gateway = settings(PRICED, channels=ChannelsSettings(authorizer_key=KEY))
    p.use_channels(Channels(gateway, storage))
    assert await p.start() == []
    return p, fac


async def test_a_voucher_is_verified_and_settled_in_process_off_the_loop() -> None:
    storage = WatchedStorage()
    seed(storage, charged=PRICE)
    p, fac = await payments(storage)
    storage.threads.clear()
    async with p.claimed(matched(2 * PRICE), PRICED, "req-1") as claim:
        await p.verify(claim)
        settled = await p.settle(claim)
    assert fac.calls == []  # no facilitator round trip, no transaction
    assert settled.success and settled.transaction == ""
    channel = storage.get(channel_id())
    assert channel is not None and channel.charged_cumulative_amount == str(2 * PRICE)
    assert channel.pending_request is None
    assert storage.threads and threading.get_ident() not in storage.threads[:-1]
    await p.close()


async def test_the_receipt_carries_the_channel_state_the_client_keeps() -> None:
    storage = InMemoryChannelStorage()
    seed(storage, charged=PRICE)
    p, _ = await payments(storage)
    async with p.claimed(matched(2 * PRICE), PRICED, "req-1") as claim:
        await p.verify(claim)
        settled = await p.settle(claim)
    from gateway.payment.receipts import receipt_headers

    receipt = decode_payment_response_header(receipt_headers(settled, 2)["PAYMENT-RESPONSE"])
    assert receipt.extra is not None
    assert receipt.extra["channelState"]["chargedCumulativeAmount"] == str(2 * PRICE)
    assert receipt.extra["chargedAmount"] == str(PRICE)
    await p.close()


async def test_a_stale_voucher_gets_the_corrective_402_with_the_channel_state() -> None:
    storage = InMemoryChannelStorage()
    seed(storage, charged=3 * PRICE)
    p, fac = await payments(storage)
    with pytest.raises(PaymentError) as refused:
        async with p.claimed(matched(2 * PRICE), PRICED, "req-1") as claim:
            await p.verify(claim)
    reason = "invalid_batch_settlement_evm_cumulative_amount_mismatch"
    assert refused.value.reason == reason
    required = decode_payment_required_header(refused.value.headers["PAYMENT-REQUIRED"])
    assert isinstance(required, PaymentRequired) and required.error == reason
    (offer,) = required.accepts
    assert offer.scheme == "batch-settlement"
    assert offer.extra["channelState"]["chargedCumulativeAmount"] == str(3 * PRICE)
    assert offer.extra["voucherState"]["signedMaxClaimable"] == str(3 * PRICE)
    assert fac.calls == []
    await p.close()


async def test_a_verified_voucher_not_served_frees_its_channel() -> None:
    storage = InMemoryChannelStorage()
    seed(storage, charged=PRICE)
    p, _ = await payments(storage)
    m = matched(2 * PRICE)
    with pytest.raises(RuntimeError):
        async with p.claimed(m, PRICED, "req-1") as claim:
            await p.verify(claim)
            reserved = storage.get(channel_id())
            assert reserved is not None and reserved.pending_request is not None
            raise RuntimeError("the origin failed")
    channel = storage.get(channel_id())
    assert channel is not None and channel.pending_request is None
    assert channel.charged_cumulative_amount == str(PRICE)  # nothing charged
    # the same voucher buys its response on a retry
    async with p.claimed(m, PRICED, "req-2") as claim:
        await p.verify(claim)
        assert (await p.settle(claim)).success
    await p.close()


async def test_an_overspending_voucher_is_refused_locally() -> None:
    storage = InMemoryChannelStorage()
    seed(storage, charged=PRICE, balance=PRICE)
    p, fac = await payments(storage)
    with pytest.raises(PaymentError) as refused:
        async with p.claimed(matched(2 * PRICE), PRICED, "req-1") as claim:
            await p.verify(claim)
    assert refused.value.reason == "invalid_batch_settlement_evm_cumulative_exceeds_balance"
    assert fac.calls == []
    await p.close()


def test_the_channels_register_one_threaded_sdk_scheme_per_network() -> None:
    gateway = settings(PRICED, channels=ChannelsSettings(authorizer_key=KEY, withdraw_delay=900))
    channels = Channels(gateway, InMemoryChannelStorage())
    scheme = channels.sdk_scheme(NETWORK)
    assert scheme is not None and channels.sdk_scheme("eip155:1") is None
    assert scheme.get_receiver_address() == BATCH.pay_to
    assert scheme.get_withdraw_delay() == 900
    signer = scheme.get_receiver_authorizer_signer()
    assert signer is not None and signer.address == AUTHORIZER
    assert scheme.get_enforce_min_deposit()
    # the SDK would refuse to start without an authorizer: ours never fails start-up
    no_key = Channels(settings(PRICED), InMemoryChannelStorage())
    kind = SupportedKind(x402_version=2, scheme="batch-settlement", network=NETWORK)
    threaded = no_key.schemes[NETWORK]
    assert threaded.inner.validate_facilitator_support(NETWORK, kind, []) is not None
    assert threaded.validate_facilitator_support(NETWORK, kind, []) is None
    assert PAYER.address  # the payer of CONFIG


async def test_a_channel_route_without_any_authorizer_is_named_as_not_offered() -> None:
    no_authorizer = requirement(
        scheme="batch-settlement", extra=MappingProxyType({"withdrawDelay": 3600})
    )
    priced = route(requirement(), no_authorizer)
    p = Payments(ChannelFacilitator(), MemoryStore())
    p.use_channels(Channels(settings(priced), InMemoryChannelStorage()))
    assert await p.start() == []  # the SDK's start-up check does not take the gateway down
    (problem,) = p.unsupported((priced,))
    assert "batch-settlement on eip155:84532 is not offered: no receiver authorizer" in problem
    await p.close()


class SlowUpdates(InMemoryChannelStorage):
    """Channel writes that take a while (a slow Redis): time for a client to hang up."""

    def update_channel(self, channel_id: str, update: ChannelUpdate) -> ChannelUpdateResult:
        time.sleep(0.3)
        return super().update_channel(channel_id, update)


async def test_a_client_hanging_up_while_its_reservation_is_written_leaves_the_channel_free() -> (
    None
):
    import asyncio

    storage = SlowUpdates()
    seed(storage, charged=PRICE)
    p, _ = await payments(storage)
    m = matched(2 * PRICE)

    async def request() -> None:
        async with p.claimed(m, PRICED, "req-1") as claim:
            await p.verify(claim)  # the reservation is written in a thread: 0.3 s
            await asyncio.sleep(10)  # never reached before the hang-up

    task = asyncio.create_task(request())
    await asyncio.sleep(0.1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.sleep(0.5)  # long enough for a hook still running to have written
    channel = storage.get(channel_id())
    # the release waited for the hook still running, then cancelled what it reserved
    assert channel is not None and channel.pending_request is None
    assert channel.charged_cumulative_amount == str(PRICE)
    await p.close()


def test_a_cooperative_refund_is_recorded_as_charging_nothing() -> None:
    from gateway.payment.paid_claim import charged_amount

    refund = {**voucher_payload(PRICE, CONFIG), "type": "refund"}
    data = {
        "x402Version": 2,
        "accepted": accepted(BATCH),
        "payload": refund,
        "resource": {"url": URL},
    }
    decoded = decode_payment(headers(("PAYMENT-SIGNATURE", b64json(data))), 16384)
    assert decoded is not None
    assert charged_amount(match_requirement(PRICED, decoded, URL)) == 0
    assert charged_amount(matched(2 * PRICE)) == PRICE


async def test_a_claims_record_names_the_channel_and_amount_its_payload_does() -> None:
    # The record's channel and cumulative come from the matched terms (not parsed again):
    # held to `charged_voucher`, which reads them from the payload (a refund: none).
    from gateway.payment.channel_terms import charged_voucher

    refund = {**voucher_payload(PRICE, CONFIG), "type": "refund"}
    data = {"x402Version": 2, "accepted": accepted(BATCH), "payload": refund}
    decoded = decode_payment(headers(("PAYMENT-SIGNATURE", b64json(data))), 16384)
    assert decoded is not None
    p = Payments(ChannelFacilitator(), MemoryStore())
    for k, m in enumerate((matched(2 * PRICE), match_requirement(PRICED, decoded, URL))):
        claim = await p.claim(m, PRICED, f"req-{k}")
        expected = charged_voucher(m.payload.payload) or (None, None)
        assert (claim.record.channel, claim.record.cumulative) == expected
    assert claim.record.channel is None  # the refund


async def test_a_reservation_lasts_as_long_as_a_live_request_needs_not_five_minutes() -> None:
    from gateway.config.settings import Timeouts
    from gateway.payment.channels import reservation_seconds

    storage = InMemoryChannelStorage()
    seed(storage, charged=PRICE)
    fac = ChannelFacilitator()
    p = Payments(fac, MemoryStore())
    timeouts = Timeouts(connect=2.0, read=20.0)
    gateway = settings(PRICED, channels=ChannelsSettings(authorizer_key=KEY), timeouts=timeouts)
    assert reservation_seconds(gateway) == 2 + 20 + 30 + 10  # the facilitator's default 30 s
    p.use_channels(Channels(gateway, storage))
    await p.start()
    async with p.claimed(matched(2 * PRICE), PRICED, "req-1") as claim:
        before = time.time()
        await p.verify(claim)
        pending = storage.get(channel_id())
        assert pending is not None and pending.pending_request is not None
        held = pending.pending_request.expires_at / 1000 - before
        assert 60 <= held <= 63, held  # the route says 300 s: a dead gateway's lock is shorter
        await p.settle(claim)
    await p.close()
