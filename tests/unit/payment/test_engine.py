"""Payments (claim, verify, settle, release) on the SDK's resource server, with a fake
facilitator: every outcome a facilitator can give, and what becomes of the claim."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from typing import Any

import pytest
from x402.http.utils import decode_payment_response_header
from x402.schemas import SettleResponse, SupportedKind, SupportedResponse, VerifyResponse

from gateway.errors import (
    AllowanceRequired,
    FacilitatorUnavailable,
    PaymentConflict,
    PaymentError,
    SettlementFailed,
    SettlementPending,
    StoreUnavailable,
)
from gateway.payment import decode_payment, match_requirement
from gateway.payment.engine import Payments
from gateway.payment.reconcile import ChainState
from gateway.store import PaymentRecord
from gateway.store.memory import MemoryStore
from tests.unit.wire_helpers import URL, headers, new_account, route, sdk_v2_payment

TX = "0x" + "cd" * 32


class FakeFacilitator:
    """Answers as scripted; counts calls."""

    def __init__(self, verify: Any = None, settle: Any = None) -> None:
        self.verify_answer = verify or VerifyResponse(is_valid=True)
        self.settle_answers = list(
            settle or [SettleResponse(success=True, transaction=TX, network="eip155:84532")]
        )
        self.calls: list[str] = []

    async def verify(self, payload: Any, requirements: Any) -> VerifyResponse:
        self.calls.append("verify")
        if isinstance(self.verify_answer, Exception):
            raise self.verify_answer
        return self.verify_answer

    async def settle(self, payload: Any, requirements: Any) -> SettleResponse:
        self.calls.append("settle")
        answer = (
            self.settle_answers.pop(0) if len(self.settle_answers) > 1 else self.settle_answers[0]
        )
        if isinstance(answer, Exception):
            raise answer
        return answer

    def get_supported(self) -> SupportedResponse:
        return SupportedResponse(
            kinds=[SupportedKind(x402_version=2, scheme="exact", network="eip155:84532")]
        )

    async def refresh_supported(self) -> list[str]:
        return []

    async def ping(self) -> None:
        return None

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None


PRICED = route()


def matched() -> Any:
    _, header = sdk_v2_payment(PRICED, new_account())
    decoded = decode_payment(headers(("PAYMENT-SIGNATURE", header)), 16384)
    assert decoded is not None
    return match_requirement(PRICED, decoded, URL)


async def payments(fac: FakeFacilitator) -> tuple[Payments, MemoryStore]:
    store = MemoryStore()
    p = Payments(fac, store)
    assert await p.start() == []
    return p, store


async def test_settled_payment_is_recorded_and_cannot_be_claimed_again() -> None:
    fac = FakeFacilitator()
    p, store = await payments(fac)
    m = matched()
    async with p.claimed(m, PRICED, "req-1") as claim:
        await p.verify(claim)
        settled = await p.settle(claim)
    assert settled.transaction == TX
    (record,) = await store.recent(10)
    assert record.status == "settled" and record.transaction == TX
    with pytest.raises(PaymentConflict) as again:
        await p.claim(m, PRICED, "req-2")
    assert again.value.reason == "payment_already_used"
    receipt = decode_payment_response_header(again.value.headers["PAYMENT-RESPONSE"])
    assert receipt.transaction == TX


async def test_in_flight_claim_is_a_409_without_facilitator_calls() -> None:
    fac = FakeFacilitator()
    p, _ = await payments(fac)
    m = matched()
    await p.claim(m, PRICED, "req-1")
    with pytest.raises(PaymentConflict) as err:
        await p.claim(m, PRICED, "req-2")
    assert err.value.reason == "payment_in_flight"
    assert fac.calls == []


async def test_invalid_payment_is_402_with_the_facilitators_reason_and_released() -> None:
    fac = FakeFacilitator(
        verify=VerifyResponse(is_valid=False, invalid_reason="invalid_exact_evm_payload_signature")
    )
    p, _ = await payments(fac)
    m = matched()
    with pytest.raises(PaymentError) as err:
        async with p.claimed(m, PRICED, "req-1") as claim:
            await p.verify(claim)
    assert err.value.status == 402
    assert err.value.reason == "invalid_exact_evm_payload_signature"
    assert await p.claim(m, PRICED, "req-2") is not None  # released: claimed again, no 409


async def test_missing_permit2_allowance_is_412_and_released() -> None:
    fac = FakeFacilitator(
        verify=VerifyResponse(is_valid=False, invalid_reason="permit2_allowance_required")
    )
    p, _ = await payments(fac)
    m = matched()
    with pytest.raises(AllowanceRequired) as err:
        async with p.claimed(m, PRICED, "req-1") as claim:
            await p.verify(claim)
    assert (err.value.status, err.value.reason) == (412, "permit2_allowance_required")
    assert fac.calls == ["verify"]
    assert await p.claim(m, PRICED, "req-2") is not None  # released: approve, then pay again


async def test_facilitator_down_fails_closed_and_releases() -> None:
    fac = FakeFacilitator(verify=FacilitatorUnavailable("down"))
    p, _ = await payments(fac)
    m = matched()
    with pytest.raises(FacilitatorUnavailable):
        async with p.claimed(m, PRICED, "req-1") as claim:
            await p.verify(claim)
    assert await p.claim(m, PRICED, "req-2") is not None


async def test_settle_failure_is_402_with_a_receipt_and_released() -> None:
    failed = SettleResponse(
        success=False, error_reason="insufficient_funds", transaction="", network="eip155:84532"
    )
    p, store = await payments(FakeFacilitator(settle=[failed]))
    m = matched()
    with pytest.raises(SettlementFailed) as err:
        async with p.claimed(m, PRICED, "req-1") as claim:
            await p.verify(claim)
            await p.settle(claim)
    assert err.value.status == 402 and err.value.reason == "insufficient_funds"
    receipt = decode_payment_response_header(err.value.headers["PAYMENT-RESPONSE"])
    assert not receipt.success and receipt.error_reason == "insufficient_funds"
    assert (await store.recent(1))[0].status == "failed"
    assert await p.claim(m, PRICED, "req-2") is not None


async def test_a_metered_zero_settles_nothing_and_still_buys_one_response() -> None:
    fac = FakeFacilitator()
    p, store = await payments(fac)
    m = matched()
    async with p.claimed(m, PRICED, "req-1") as claim:
        await p.verify(claim)
        result = await p.settle(claim, 0)
    assert (result.success, result.transaction, result.amount) == (True, "", "0")
    assert fac.calls == ["verify"]  # no settlement call, no transaction
    (record,) = await store.recent(1)
    assert (record.status, record.amount) == ("settled", "0")
    with pytest.raises(PaymentConflict):
        await p.claim(m, PRICED, "req-2")


async def test_settlement_pending_is_retried_once_then_5xx_and_the_claim_is_kept() -> None:
    pending = SettleResponse(
        success=False, error_reason="settlement_pending", transaction=TX, network="eip155:84532"
    )
    fac = FakeFacilitator(settle=[pending, pending])
    p, store = await payments(fac)
    m = matched()
    with pytest.raises(SettlementPending) as err:
        async with p.claimed(m, PRICED, "req-1") as claim:
            await p.verify(claim)
            await p.settle(claim)
    assert err.value.status == 503 and err.value.retry_after
    assert fac.calls.count("settle") == 2  # the SDK's single retry
    assert (await store.recent(1))[0].status == "settlement_pending"
    with pytest.raises(PaymentConflict):  # never a second charge
        await p.claim(m, PRICED, "req-2")


async def test_pending_then_confirmed_on_the_retry_is_a_success() -> None:
    pending = SettleResponse(
        success=False, error_reason="settlement_pending", transaction=TX, network="eip155:84532"
    )
    ok = SettleResponse(success=True, transaction=TX, network="eip155:84532")
    p, _ = await payments(FakeFacilitator(settle=[pending, ok]))
    async with p.claimed(matched(), PRICED, "req-1") as claim:
        await p.verify(claim)
        assert (await p.settle(claim)).success


async def test_unknown_settle_outcome_keeps_the_claim() -> None:
    p, _ = await payments(FakeFacilitator(settle=[SettlementPending("timed out")]))
    m = matched()
    with pytest.raises(SettlementPending):
        async with p.claimed(m, PRICED, "req-1") as claim:
            await p.verify(claim)
            await p.settle(claim)
    with pytest.raises(PaymentConflict):
        await p.claim(m, PRICED, "req-2")


async def test_cancelled_request_releases_its_claim() -> None:
    p, _ = await payments(FakeFacilitator())
    m = matched()

    async def hangs() -> None:
        async with p.claimed(m, PRICED, "req-1") as claim:
            await p.verify(claim)
            await asyncio.sleep(10)

    task = asyncio.create_task(hangs())
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await p.claim(m, PRICED, "req-2") is not None  # released, not raised


class SlowSettle(FakeFacilitator):
    """Settles after `gate` is set, so a test can hang up while the settlement runs."""

    def __init__(self, settle: Any = None) -> None:
        super().__init__(settle=settle)
        self.gate = asyncio.Event()
        self.settling = asyncio.Event()

    async def settle(self, payload: Any, requirements: Any) -> SettleResponse:
        self.settling.set()
        await self.gate.wait()
        return await super().settle(payload, requirements)


async def hang_up_during_settle(fac: SlowSettle, p: Payments, m: Any) -> asyncio.Task[None]:
    async def request() -> None:
        async with p.claimed(m, PRICED, "req-1") as claim:
            await p.verify(claim)
            await p.settle(claim)

    task = asyncio.create_task(request())
    await fac.settling.wait()
    task.cancel()
    await asyncio.sleep(0.01)
    assert not task.done()  # still waiting for the settlement it started
    return task


async def test_hang_up_during_settle_never_releases_and_retry_sees_in_flight() -> None:
    fac = SlowSettle()
    p, store = await payments(fac)
    m = matched()
    task = await hang_up_during_settle(fac, p, m)
    with pytest.raises(PaymentConflict) as during:
        await p.claim(m, PRICED, "req-2")
    assert during.value.reason == "payment_in_flight" and during.value.retry_after
    assert (await store.recent(1))[0].status == "settling"
    fac.gate.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert (await store.recent(1))[0].status == "settled"
    with pytest.raises(PaymentConflict) as after:
        await p.claim(m, PRICED, "req-3")
    assert after.value.reason == "payment_already_used"
    assert decode_payment_response_header(after.value.headers["PAYMENT-RESPONSE"]).transaction == TX


async def test_hang_up_during_a_settle_that_fails_releases_after_it() -> None:
    refused = SettleResponse(
        success=False, error_reason="insufficient_funds", transaction="", network="x"
    )
    fac = SlowSettle(settle=[refused])
    p, store = await payments(fac)
    m = matched()
    task = await hang_up_during_settle(fac, p, m)
    fac.gate.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert (await store.recent(1))[0].status == "failed"
    assert await p.claim(m, PRICED, "req-2") is not None  # released: the payer may retry


async def test_settle_without_a_facilitator_records_failed_and_releases() -> None:
    p, _ = await payments(FakeFacilitator(settle=[FacilitatorUnavailable("down")]))
    m = matched()
    with pytest.raises(FacilitatorUnavailable):
        async with p.claimed(m, PRICED, "req-1") as claim:
            await p.settle(claim)
    assert await p.claim(m, PRICED, "req-2") is not None


class FakeChain:
    """Answers authorizationState as scripted (unit tests only; e2e reads anvil)."""

    def __init__(self, state: ChainState | None) -> None:
        self.state = state
        self.asked = 0

    def covers(self, network: str) -> bool:
        return self.state is not None

    async def authorization(
        self, network: str, token: str, authorizer: str, nonce: str
    ) -> ChainState:
        self.asked += 1
        assert self.state is not None
        return self.state

    async def close(self) -> None:
        return None


async def dead_holders_claim(store: MemoryStore, m: Any, status: str, age: float = 0) -> None:
    """A claim left by a process that died (its holder is not this one's)."""
    record = PaymentRecord(
        status="claimed",
        request_id=f"dead-{m.identity.nonce[2:10]}",
        route="/paid/*",
        payer=m.payer,
        amount="1000",
        asset=m.requirement.asset,
        network=m.requirement.network,
        nonce=m.identity.nonce,
        holder="a-process-that-died",
    )
    await store.claim(m.identity.key, record, 600)
    changed = replace(record.with_status(status), updated_at=time.time() - age)  # type: ignore[arg-type]
    await store.update(m.identity.key, changed, 600)


async def test_a_dead_holders_unsettled_claim_is_taken_over() -> None:
    fac = FakeFacilitator()
    p, store = await payments(fac)
    m = matched()
    await dead_holders_claim(store, m, "claimed")
    claim = await p.claim(m, PRICED, "req-2")
    assert claim.record.request_id == "req-2"
    rows = {r.request_id: r.status for r in await store.recent(10)}
    assert sorted(rows.values()) == ["claimed", "released"] and rows["req-2"] == "claimed"


async def test_a_dead_holders_settling_claim_used_on_chain_is_a_409_with_its_transaction() -> None:
    p, store = await payments(FakeFacilitator())
    p.reconciler = replace(p.reconciler, chain=FakeChain(ChainState(used=True, transaction=TX)))
    m = matched()
    await dead_holders_claim(store, m, "settling")
    with pytest.raises(PaymentConflict) as err:
        await p.claim(m, PRICED, "req-2")
    assert err.value.reason == "payment_already_used"
    assert decode_payment_response_header(err.value.headers["PAYMENT-RESPONSE"]).transaction == TX
    assert (await store.recent(1))[0].status == "settled"


async def test_a_dead_holders_settling_claim_unused_waits_for_the_settle_window() -> None:
    p, store = await payments(FakeFacilitator())
    chain = FakeChain(ChainState(used=False))
    p.reconciler = replace(p.reconciler, chain=chain, window=90.0)
    m = matched()
    await dead_holders_claim(store, m, "settling", age=10)
    with pytest.raises(PaymentConflict) as err:
        await p.claim(m, PRICED, "req-2")
    assert err.value.reason == "payment_in_flight" and chain.asked == 1
    await dead_holders_claim(store, m, "settling", age=100)  # the window is over
    claim = await p.claim(m, PRICED, "req-3")
    assert claim.record.request_id == "req-3"


async def test_without_a_chain_a_dead_holders_settling_claim_stays_in_flight() -> None:
    p, store = await payments(FakeFacilitator())
    m = matched()
    await dead_holders_claim(store, m, "pending", age=10_000)
    with pytest.raises(PaymentConflict) as err:
        await p.claim(m, PRICED, "req-2")
    assert err.value.reason == "payment_in_flight"


async def test_the_background_reconciler_resolves_dead_holders_claims_unasked() -> None:
    p, store = await payments(FakeFacilitator())
    p.reconciler = replace(p.reconciler, chain=FakeChain(ChainState(used=True, transaction=TX)))
    p.chain = p.reconciler.chain
    settling, claimed = matched(), matched()
    await dead_holders_claim(store, settling, "settling")
    await dead_holders_claim(store, claimed, "claimed")
    ours = await p.claim(matched(), PRICED, "alive-1")  # this process's: left alone
    task = asyncio.create_task(p.keep_reconciling(interval=0.01))
    try:
        for _ in range(200):
            statuses = {r.nonce: r.status for r in await store.recent(10)}
            if statuses[settling.identity.nonce] == "settled":
                break
            await asyncio.sleep(0.01)
    finally:
        task.cancel()
    assert statuses[settling.identity.nonce] == "settled"
    assert statuses[claimed.identity.nonce] == "released"
    assert statuses[ours.matched.identity.nonce] == "claimed"
    assert await p.claim(claimed, PRICED, "req-2") is not None  # free again


async def test_a_claim_taken_over_meanwhile_is_never_settled_nor_overwritten() -> None:
    """This process lost the store long enough for another replica to take its claim over:
    its `settling` write must fail, and nothing be settled or overwritten."""
    fac = FakeFacilitator()
    p, store = await payments(fac)
    m = matched()
    with pytest.raises(PaymentConflict) as err:
        async with p.claimed(m, PRICED, "req-1") as claim:
            await p.verify(claim)
            taker = claim.record.with_status("claimed", request_id="req-2", holder="other")
            assert await store.replace(claim.key, claim.record, taker, 600)
            await p.settle(claim)
    assert err.value.reason == "payment_in_flight"
    assert fac.calls == ["verify"]  # never asked to settle
    held = {r.request_id: r.status for r in await store.recent(10)}
    assert held["req-2"] == "claimed"  # the other replica's claim stands


class StoreLostAfterSettling(MemoryStore):
    """Redis dies between the `settling` record and the `settled` one."""

    async def update(self, key: str, record: PaymentRecord, ttl: float) -> None:
        if record.status == "settled":
            raise StoreUnavailable("redis: gone")
        await super().update(key, record, ttl)


async def test_charged_when_the_store_dies_before_the_settled_record_serves_the_payer() -> None:
    store = StoreLostAfterSettling()
    p = Payments(FakeFacilitator(), store)
    assert await p.start() == []
    async with p.claimed(matched(), PRICED, "req-1") as claim:
        await p.verify(claim)
        settled = await p.settle(claim)
    assert settled.success and claim.settled is settled  # charged: the payer gets its answer
    assert (await store.recent(1))[0].status == "settling"  # in flight: never released


async def test_settled_up_front_then_failure_records_refund_due() -> None:
    p, store = await payments(FakeFacilitator())
    with pytest.raises(RuntimeError):
        async with p.claimed(matched(), PRICED, "req-1") as claim:
            await p.verify(claim)
            await p.settle(claim)
            raise RuntimeError("origin went away")
    assert (await store.recent(1))[0].status == "refund_due"


async def test_not_ready_until_supported_is_known() -> None:
    fac = FakeFacilitator()
    fac.get_supported = lambda: SupportedResponse(kinds=[])  # type: ignore[method-assign]
    p = Payments(fac, MemoryStore())
    await p.start()
    with pytest.raises(FacilitatorUnavailable):
        async with p.claimed(matched(), PRICED, "req-1") as claim:
            await p.verify(claim)


def test_unsupported_routes_are_named() -> None:
    p = Payments(FakeFacilitator(), MemoryStore())
    mainnet = replace(PRICED.accepts[0], network="eip155:8453")
    other = replace(PRICED, index=7, path="/mainnet/*", accepts=(mainnet,))
    assert p.unsupported((PRICED, other)) == [
        "routes[7] /mainnet/*: no facilitator supports exact on eip155:8453"
    ]
