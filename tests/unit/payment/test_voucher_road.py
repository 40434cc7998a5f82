"""The voucher road (gateway/payment/voucher_road.py) held to the full path on the same
inputs: the same decision (served, or which refusal), the same channel state and claim
record after, for a good voucher and for every way one can be wrong. The road declines
(None, nothing taken) whatever the full path must decide: `served()` below then runs the full
path, as `handle()` does (gateway/voucher_road.py)."""

from __future__ import annotations

import contextlib
import dataclasses
import time
from types import SimpleNamespace
from typing import Any

import pytest
from x402.http.utils import decode_payment_response_header
from x402.mechanisms.evm.batch_settlement.server.storage import InMemoryChannelStorage

from gateway.config.settings import ChannelsSettings, RouteSettings
from gateway.errors import GatewayError, PaymentConflict, SettlementFailed
from gateway.payment import decode_payment, match_requirement
from gateway.payment.channels import Channels
from gateway.payment.engine import Payments
from gateway.payment.paid_claim import new_claim
from gateway.payment.receipts import receipt_headers
from gateway.payment.voucher_road import VoucherRoad
from gateway.store.channel_memory import MemoryChannels
from gateway.store.channel_writer import MemoryChannelWriter
from gateway.store.memory import MemoryStore
from tests.unit.payment.test_channel_fast import SlowWriter, stable
from tests.unit.payment.test_channel_terms import voucher_payload
from tests.unit.payment.test_channels import (
    BATCH,
    CONFIG,
    KEY,
    PRICE,
    PRICED,
    ChannelFacilitator,
    channel_id,
    matched,
    seed,
)
from tests.unit.wire_helpers import (
    URL,
    accepted,
    b64json,
    headers,
    requirement,
    route,
    settings,
)

ROADS = ("road", "full")


@dataclasses.dataclass
class Outcome:
    """What a voucher came to: served (its receipt) or refused (the error's reason)."""

    reason: str | None
    receipt: dict[str, Any] | None
    record: str | None  # the claim record's last status in the store (None: no claim)
    road: bool  # the road served it (False: declined, the full path decided)


async def gateway(storage: InMemoryChannelStorage) -> tuple[Payments, ChannelFacilitator]:
    fac = ChannelFacilitator()
    p = Payments(fac, MemoryStore())
    config = settings(PRICED, channels=ChannelsSettings(authorizer_key=KEY))
    p.use_channels(Channels(config, storage, writer=MemoryChannelWriter(storage)))
    assert await p.start() == []
    return p, fac


async def full_path(p: Payments, m: Any, on: RouteSettings, request_id: str) -> Any:
    async with p.claimed(m, on, request_id) as claim:
        await p.verify(claim)
        return await p.settle(claim)


async def via_road(p: Payments, m: Any, on: RouteSettings, request_id: str) -> tuple[Any, bool]:
    """The road, then the full path if it declined (as `handle()` runs them)."""
    assert p.road is not None
    claim = await p.road.take(m, on, request_id)
    if claim is None:
        return await full_path(p, m, on, request_id), False
    try:
        return await p.road.settle(claim), True
    except BaseException as exc:
        await p.end_early(claim, exc)
        raise


async def served(
    kind: str, storage: InMemoryChannelStorage, m: Any, on: RouteSettings = PRICED
) -> tuple[Outcome, Payments, ChannelFacilitator]:
    p, fac = await gateway(storage)
    reason, receipt, road = None, None, False
    try:
        if kind == "road":
            settled, road = await via_road(p, m, on, "req-1")
        else:
            settled = await full_path(p, m, on, "req-1")
        receipt = decode_payment_response_header(
            receipt_headers(settled, 2)["PAYMENT-RESPONSE"]
        ).model_dump()
    except GatewayError as exc:
        reason = exc.reason
    held = [r for r in await p.store.recent(10) if r.request_id == "req-1"]
    record = held[0].status if held else None
    return Outcome(reason, receipt, record, road), p, fac


def seeded(**changes: Any) -> InMemoryChannelStorage:
    storage = InMemoryChannelStorage()
    seed(storage, charged=changes.pop("charged", PRICE), balance=changes.pop("balance", 10**6))
    if changes:
        channel = storage.get(channel_id())
        assert channel is not None
        changed = dataclasses.replace(channel, **changes)
        storage.update_channel(channel_id(), lambda _: changed)
    return storage


def forged(cumulative: int) -> Any:
    m = matched(cumulative)
    other = voucher_payload(cumulative + PRICE, CONFIG)["voucher"]["signature"]
    m.payload.payload["voucher"]["signature"] = other
    return m


async def compare(
    make: Any, on: RouteSettings = PRICED, **channel: Any
) -> tuple[Outcome, Outcome, list[str]]:
    outcomes, states, calls = {}, {}, {}
    first = seeded(**channel).get(channel_id())  # both roads start from this very state
    for kind in ROADS:
        storage = InMemoryChannelStorage()
        storage.update_channel(channel_id(), lambda _: first)
        outcome, p, fac = await served(kind, storage, make(), on)
        outcomes[kind], states[kind], calls[kind] = outcome, stable(storage), list(fac.calls)
        await p.close()
    road, full = outcomes["road"], outcomes["full"]
    assert (road.reason, road.receipt, road.record) == (full.reason, full.receipt, full.record)
    assert states["road"] == states["full"]
    assert calls["road"] == calls["full"]  # the same facilitator calls (none, or the SDK's)
    return road, full, calls["road"]


async def test_a_good_voucher_is_served_on_the_road_as_on_the_full_path() -> None:
    road, _, calls = await compare(lambda: matched(2 * PRICE))
    assert road.road and road.reason is None and road.record == "settled"
    assert road.receipt is not None
    assert road.receipt["extra"]["channelState"]["chargedCumulativeAmount"] == str(2 * PRICE)
    assert calls == []


@pytest.mark.parametrize(
    ("what", "make", "channel", "reason"),
    [
        (
            "a stale amount (already charged past it)",
            lambda: matched(2 * PRICE),
            {"charged": 3 * PRICE},
            "invalid_batch_settlement_evm_cumulative_amount_mismatch",
        ),
        (
            "an amount skipping ahead",
            lambda: matched(4 * PRICE),
            {},
            "invalid_batch_settlement_evm_cumulative_amount_mismatch",
        ),
        (
            "over the balance",
            lambda: matched(2 * PRICE),
            {"balance": PRICE},
            "invalid_batch_settlement_evm_cumulative_exceeds_balance",
        ),
        (
            "a signature not the payer's",
            lambda: forged(2 * PRICE),
            {},
            "invalid_batch_settlement_evm_voucher_signature",
        ),
    ],
)
async def test_a_wrong_voucher_gets_the_full_paths_refusal_and_changes_nothing(
    what: str, make: Any, channel: dict[str, Any], reason: str
) -> None:
    road, _, _ = await compare(make, **channel)
    assert not road.road, what
    assert road.reason == reason, what


def matched_on(on: RouteSettings, cumulative: int) -> Any:
    """A voucher paying `on`'s channel requirement (its price), matched against it."""
    (req,) = [r for r in on.accepts if r.scheme == "batch-settlement"]
    data = {
        "x402Version": 2,
        "accepted": accepted(req),
        "payload": voucher_payload(cumulative, CONFIG),
        "resource": {"url": URL},
    }
    decoded = decode_payment(headers(("PAYMENT-SIGNATURE", b64json(data))), 16384)
    assert decoded is not None
    return match_requirement(on, decoded, URL)


async def test_a_voucher_on_a_dearer_routes_terms_is_held_to_that_price() -> None:
    # A reloaded config or a dynamic price: matched anew against the route's terms (the
    # memo keys on them); charged + the new price is the only amount either road takes.
    dearer = route(requirement(), dataclasses.replace(BATCH, amount=2 * PRICE))
    road, _, _ = await compare(lambda: matched_on(dearer, 2 * PRICE), on=dearer)
    assert road.reason == "invalid_batch_settlement_evm_cumulative_amount_mismatch"
    served_dear, _, _ = await compare(lambda: matched_on(dearer, 3 * PRICE), on=dearer)
    assert served_dear.road and served_dear.receipt is not None
    assert served_dear.receipt["extra"]["chargedAmount"] == str(2 * PRICE)


async def test_a_channel_with_stale_onchain_state_goes_the_full_path() -> None:
    stale = int(time.time() * 1000) - 3_600_000
    road, _, calls = await compare(lambda: matched(2 * PRICE), onchain_synced_at=stale)
    assert not road.road
    assert calls[:1] == ["verify"]  # the SDK reads the chain again (through the facilitator)


async def test_an_unknown_channel_goes_the_full_path() -> None:
    outcomes = {}
    for kind in ROADS:
        outcome, p, _ = await served(kind, InMemoryChannelStorage(), matched(2 * PRICE))
        outcomes[kind] = outcome
        await p.close()
    assert not outcomes["road"].road
    assert outcomes["road"].reason == outcomes["full"].reason is not None


async def test_a_busy_channel_gets_the_full_paths_answer() -> None:
    for kind in ROADS:
        storage = seeded()
        p, _ = await gateway(storage)
        assert p.road is not None
        first = await p.road.take(matched(2 * PRICE), PRICED, "req-1")
        assert first is not None  # holds the channel
        with pytest.raises(GatewayError) as busy:
            if kind == "road":
                await via_road(p, matched(3 * PRICE), PRICED, "req-2")
            else:
                await full_path(p, matched(3 * PRICE), PRICED, "req-2")
        assert busy.value.reason == "invalid_batch_settlement_evm_cumulative_amount_mismatch"
        assert (await p.road.settle(first)).success
        assert stable(storage)["chargedCumulativeAmount"] == str(2 * PRICE)
        await p.close()


async def test_a_copy_in_flight_is_declined_and_answered_409_as_today() -> None:
    storage = seeded()
    p, _ = await gateway(storage)
    assert p.road is not None
    first = await p.road.take(matched(2 * PRICE), PRICED, "req-1")
    assert first is not None
    assert await p.road.take(matched(2 * PRICE), PRICED, "req-2") is None  # the claim is held
    with pytest.raises(PaymentConflict) as copy:
        await via_road(p, matched(2 * PRICE), PRICED, "req-2")
    assert copy.value.reason == "payment_in_flight" and copy.value.status == 409
    assert (await p.road.settle(first)).success
    # once used: the full path's corrective 402 with the channel state, not a 409
    with pytest.raises(GatewayError) as used:
        await via_road(p, matched(2 * PRICE), PRICED, "req-3")
    assert used.value.reason == "invalid_batch_settlement_evm_cumulative_amount_mismatch"
    assert "PAYMENT-REQUIRED" in used.value.headers
    assert stable(storage)["chargedCumulativeAmount"] == str(2 * PRICE)
    await p.close()


async def test_a_declined_voucher_leaves_no_claim_and_no_reservation() -> None:
    storage = seeded(charged=3 * PRICE)
    before = stable(storage)
    p, _ = await gateway(storage)
    assert p.road is not None
    m = matched(2 * PRICE)
    assert await p.road.take(m, PRICED, "req-1") is None  # the amount is stale
    claim = new_claim(m, PRICED, "req-1", p.store.holder)
    assert isinstance(p.store, MemoryStore) and not p.store.holds(claim.key, claim.record)
    assert stable(storage) == before
    await p.close()


async def test_an_origin_failure_or_a_hang_up_charges_nothing_and_frees_voucher_and_channel() -> (
    None
):
    storage = seeded()
    p, _ = await gateway(storage)
    assert p.road is not None
    m = matched(2 * PRICE)
    for request_id, ended in (("req-1", RuntimeError("origin")), ("req-2", KeyboardInterrupt())):
        claim = await p.road.take(m, PRICED, request_id)
        assert claim is not None
        await p.end_early(claim, ended)  # what the road does on any exception
        after = stable(storage)
        assert "pendingRequest" not in after
        assert after["chargedCumulativeAmount"] == str(PRICE)
    settled, on_road = await via_road(p, m, PRICED, "req-3")  # the voucher still buys its call
    assert settled.success and on_road
    await p.close()


async def test_a_reservation_lost_before_the_charge_is_refused_as_on_the_full_path() -> None:
    reasons, records = {}, {}
    for kind in ROADS:
        storage = seeded()
        p, _ = await gateway(storage)
        assert p.road is not None
        m = matched(2 * PRICE)
        with pytest.raises(SettlementFailed) as lost:
            if kind == "road":
                claim = await p.road.take(m, PRICED, "req-1")
                assert claim is not None
                _drop_reservation(storage)
                try:
                    await p.road.settle(claim)
                except BaseException as exc:
                    await p.end_early(claim, exc)
                    raise
            else:
                async with p.claimed(m, PRICED, "req-1") as claim:
                    await p.verify(claim)
                    _drop_reservation(storage)
                    await p.settle(claim)
        reasons[kind] = lost.value.reason
        records[kind] = [r.status for r in await p.store.recent(10)]
        assert stable(storage)["chargedCumulativeAmount"] == str(PRICE)
        await p.close()
    assert reasons["road"] == reasons["full"] == "invalid_batch_settlement_evm_channel_busy"
    assert records["road"] == records["full"]


def _drop_reservation(storage: InMemoryChannelStorage) -> None:
    channel = storage.get(channel_id())
    assert channel is not None
    freed = dataclasses.replace(channel, pending_request=None)
    storage.update_channel(channel_id(), lambda _: freed)


async def test_a_claim_taken_over_before_the_charge_charges_nothing() -> None:
    storage = seeded()
    p, _ = await gateway(storage)
    assert p.road is not None
    claim = await p.road.take(matched(2 * PRICE), PRICED, "req-1")
    assert claim is not None
    taker = claim.record.with_status("claimed", request_id="req-2", holder="other")
    await p.store.update(claim.key, taker, claim.ttl)
    with pytest.raises(PaymentConflict):
        await p.road.settle(claim)
    assert claim.settled is None
    assert stable(storage)["chargedCumulativeAmount"] == str(PRICE)
    await p.close()


async def test_a_run_of_vouchers_on_the_road_charges_each_once() -> None:
    storage = seeded()
    p, _ = await gateway(storage)
    for k in range(2, 8):
        settled, on_road = await via_road(p, matched(k * PRICE), PRICED, f"req-{k}")
        assert settled.success and on_road
    assert stable(storage)["chargedCumulativeAmount"] == str(7 * PRICE)
    await p.close()


async def test_there_is_no_road_unless_claims_and_channels_are_both_in_memory() -> None:
    storage = seeded()
    config = settings(PRICED, channels=ChannelsSettings(authorizer_key=KEY))
    remote = Payments(ChannelFacilitator(), MemoryStore())
    remote.use_channels(Channels(config, storage, writer=SlowWriter(storage)))
    assert remote.road is None  # channel state behind a store that suspends (Redis)
    sdk_only = Payments(ChannelFacilitator(), MemoryStore())
    sdk_only.use_channels(Channels(config, storage, writer=None))
    assert sdk_only.road is None  # no fast path: the SDK serves every voucher
    in_memory = Payments(ChannelFacilitator(), MemoryStore())
    in_memory.use_channels(Channels(config, storage, writer=MemoryChannelWriter(storage)))
    assert isinstance(in_memory.road, VoucherRoad)
    claims_elsewhere = SimpleNamespace(holder="replica-1")  # claims in Redis, say
    parts = (in_memory.channel_payments, in_memory.supported, in_memory.books)
    assert VoucherRoad.over(claims_elsewhere, *parts) is None


async def test_the_gateways_memory_channels_change_in_place_as_the_sdks_storage_updates() -> None:
    # `MemoryChannels` (store: memory) lets the road change the record itself; the SDK's
    # storage takes the same steps as pure updates on copies: the same answers and states.
    first = seeded().get(channel_id())
    seen: dict[str, list[Any]] = {}
    for storage in (MemoryChannels(), InMemoryChannelStorage()):
        storage.update_channel(channel_id(), lambda _: first)
        p, _ = await gateway(storage)  # type: ignore[arg-type]
        assert p.road is not None
        log: list[Any] = []
        settled, on_road = await via_road(p, matched(2 * PRICE), PRICED, "req-2")
        log.append((settled.model_dump(), on_road))
        held = await p.road.take(matched(3 * PRICE), PRICED, "req-3")
        assert held is not None
        with pytest.raises(GatewayError) as busy:  # the SDK's path, on the same storage
            await via_road(p, matched(4 * PRICE), PRICED, "req-4")
        log.append(busy.value.reason)
        await p.end_early(held, RuntimeError("the origin failed"))
        log.append(stable(storage))  # type: ignore[arg-type]
        settled, on_road = await via_road(p, matched(3 * PRICE), PRICED, "req-5")
        log.append((settled.model_dump(), on_road, stable(storage)))  # type: ignore[arg-type]
        seen[type(storage).__name__] = log
        await p.close()
    assert seen["MemoryChannels"] == seen["InMemoryChannelStorage"]
    assert seen["MemoryChannels"][-1][1] is True


async def test_the_requirements_a_remembered_channel_shares_are_never_changed() -> None:
    """A remembered channel's vouchers share one `MatchedPayment.requirements` (built once
    per memo entry, gateway/payment/voucher_memo.py): neither the road nor the full path with
    the SDK's own hooks (a refusal's corrective 402; verify and settle on stale on-chain
    state) changes it, so each voucher is matched against the route's terms as if built for
    it alone."""
    storage = seeded()
    p, fac = await gateway(storage)

    def next_voucher(cumulative: int) -> Any:
        return matched(cumulative, p.channel_ids)

    first = next_voucher(2 * PRICE)
    shared, before = first.requirements, first.requirements.model_dump()
    assert shared == matched(2 * PRICE).requirements  # what the full match builds for it
    for k in (2, 3):
        m = first if k == 2 else next_voucher(k * PRICE)
        assert m.requirements is shared  # remembered: built once
        settled, on_road = await via_road(p, m, PRICED, f"req-{k}")
        assert settled.success and on_road
    copy = next_voucher(2 * PRICE)  # used already: the full path's corrective 402
    with pytest.raises(GatewayError):
        await via_road(p, copy, PRICED, "req-copy")
    channel = storage.get(channel_id())
    assert channel is not None
    stale = dataclasses.replace(channel, onchain_synced_at=int(time.time() * 1000) - 3_600_000)
    storage.update_channel(channel_id(), lambda _: stale)
    later = next_voucher(4 * PRICE)
    # the SDK's verify and settle hooks; whatever the fake facilitator's chain says of it
    # (served or refused), the requirements are the point
    with contextlib.suppress(GatewayError):
        await via_road(p, later, PRICED, "req-4")
    assert "verify" in fac.calls
    assert copy.requirements is later.requirements is shared
    assert shared.model_dump() == before
    await p.close()
