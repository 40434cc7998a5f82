"""A claim's books: the store's record of what became of a payment, written as it happens.

`settle` runs one settlement and records its outcome (settled, pending, failed), so a copy
of the payment, a crash and the release script all see whether the payer may be charged.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from x402.schemas import PaymentAbortedError, SettleResponse

from gateway.errors import (
    FacilitatorUnavailable,
    PaymentConflict,
    SettlementFailed,
    SettlementPending,
    StoreUnavailable,
)
from gateway.observe.logs import get_logger
from gateway.payment.channels import RefusedBeforeSettle
from gateway.payment.paid_claim import Claim
from gateway.payment.receipts import receipt_headers
from gateway.store import PaymentStore
from gateway.store.memory import MemoryStore
from gateway.store.records import Status

log = get_logger("gateway.payments")


class Books:
    """Writes each change of a claim's record to the store, in the order money moves."""

    def __init__(self, store: PaymentStore) -> None:
        self.store = store

    async def settle(
        self,
        claim: Claim,
        charge: Callable[[], Awaitable[SettleResponse]],
        *,
        in_place: bool = False,
    ) -> SettleResponse:
        """Mark the claim settling, `charge` the payer, and record the outcome.
        `in_place`: the claim is in this process's memory and nothing up to the outcome's
        record suspends (`Payments.settle`): no other coroutine could read a `settling`
        record before the outcome replaces it, and a crash takes the memory that would
        hold it, so it is not written; the claim is only checked to be still ours."""
        if in_place:
            self.still_ours(claim)
        else:
            # Written before the facilitator is asked: from here on the payment may be
            # charged, and the record says so to every copy of it, to a crash, and to the
            # release script.
            await self.enter_settling(claim)
        started = time.perf_counter()
        try:
            result = await charge()
        except SettlementPending as exc:
            claim.outcome_unknown = True
            await self.record(claim, "settlement_pending", reason=exc.detail)
            raise
        except FacilitatorUnavailable as exc:
            # No facilitator was reached (remote and local raise it only then): not charged.
            await self.record(claim, "failed", reason=exc.reason)
            raise
        except (PaymentAbortedError, RefusedBeforeSettle) as exc:
            # A scheme's before-settle hook refused it before anything moved (a channel whose
            # reservation lapsed and was taken by another request; a refund with nothing
            # left to refund): not charged, not served.
            reason = exc.reason if isinstance(exc, PaymentAbortedError) else str(exc)
            await self.record(claim, "failed", reason=reason)
            raise SettlementFailed(str(exc), reason=reason) from exc
        finally:
            claim.timings.settle = time.perf_counter() - started
        return await self._outcome(claim, result)

    async def _outcome(self, claim: Claim, result: SettleResponse) -> SettleResponse:
        if result.success:
            claim.settled = result
            try:
                await self.record(claim, "settled", transaction=result.transaction)
            except StoreUnavailable as exc:
                # Charged: the payer gets what it paid for. The pending claim (where the
                # store kept it) and the used nonce on chain still stop a second charge;
                # this line is the books' copy of the outcome.
                record = claim.record.as_dict()
                log.error("payment_record_failed", **record, error=exc.detail)
            return result
        if result.error_reason == "settlement_pending":
            # Broadcast, not yet confirmed (the SDK already retried once): the payer must
            # not pay again, and the claim stays so this authorization cannot buy twice.
            claim.outcome_unknown = True
            await self.record(claim, "settlement_pending", transaction=result.transaction)
            raise SettlementPending(
                f"transaction {result.transaction} not yet confirmed",
                headers=receipt_headers(result, claim.matched.version),
            )
        await self.record(claim, "failed", reason=result.error_reason)
        raise SettlementFailed(
            result.error_message or result.error_reason or "settlement failed",
            reason=result.error_reason or "settlement_failed",
            headers=receipt_headers(result, claim.matched.version),
        )

    async def settle_nothing(self, claim: Claim) -> SettleResponse:
        """A metered response that used nothing: no transaction (the payer's Permit2 nonce
        stays unspent), recorded as settled for 0; the claim keeps the authorization from
        buying a second response."""
        result = SettleResponse(
            success=True,
            transaction="",
            network=claim.record.network,
            payer=claim.matched.payer,
            amount="0",
        )
        claim.settled = result
        await self.record(claim, "settled")
        return result

    async def refund_due(self, claim: Claim, why: str) -> None:
        """Settled before forwarding, then the origin failed: the operator owes a refund."""
        # Logged first: if the store is down, this line is the only record of the debt.
        log.error(
            "refund_due",
            payer=claim.matched.payer,
            amount=claim.record.amount,
            asset=claim.record.asset,
            network=claim.record.network,
            transaction=claim.settled.transaction if claim.settled else None,
            reason=why,
        )
        await self.record(claim, "refund_due", reason=why)

    async def enter_settling(self, claim: Claim) -> None:
        """`claimed` -> `settling` only if the store still holds this request's claim: a
        replica that took it over while this process was cut off from the store (its
        heartbeat lapsed) must not be overwritten, and this request must not settle."""
        settling = claim.record.with_status("settling")
        if not await self.store.replace(claim.key, claim.record, settling, claim.ttl):
            raise PaymentConflict(
                "another request took this payment over while this one was cut off from the store",
                reason="payment_in_flight",
            )
        claim.record = settling

    def still_ours(self, claim: Claim) -> None:
        """`enter_settling`'s check without its write, for a claim in this process's memory."""
        store = self.store
        if not (isinstance(store, MemoryStore) and store.holds(claim.key, claim.record)):
            raise PaymentConflict(
                "another request took this payment over before it settled",
                reason="payment_in_flight",
            )

    async def record(self, claim: Claim, status: Status, **changes: str | None) -> None:
        claim.record = claim.record.with_status(status, **changes)
        await self.store.update(claim.key, claim.record, claim.ttl)
