"""The x402 step, on the SDK's `x402ResourceServer`: claim, verify, settle, release.

Decoding and matching a payment are pure (`gateway.payment.decode`, `.match`); this module
is where the money moves, so every step fails closed: a store or facilitator that cannot
answer means no paid content, and a claim is released only when nothing was charged.
Beside it: a claim's data (`paid_claim`), its books (`settlement`), the channel side
(`channel_payments`) and the work off the request path (`lifecycle`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator
from typing import Any

from x402 import x402ResourceServer
from x402.mechanisms.evm.batch_settlement import SCHEME_BATCH_SETTLEMENT
from x402.mechanisms.evm.batch_settlement.server.storage import ChannelStorage
from x402.mechanisms.evm.constants import ERR_PERMIT2_ALLOWANCE_REQUIRED
from x402.mechanisms.evm.exact.register import register_exact_evm_server
from x402.mechanisms.evm.upto import UptoEvmServerScheme
from x402.schemas import (
    PaymentAbortedError,
    PaymentRequirements,
    SchemeNotFoundError,
    SettleResponse,
)
from x402.schemas.v1 import PaymentRequirementsV1

from gateway.config.settings import RouteSettings
from gateway.errors import (
    AllowanceRequired,
    FacilitatorUnavailable,
    GatewayError,
    PaymentConflict,
    PaymentError,
)
from gateway.observe.logs import get_logger
from gateway.payment.channel_payments import ChannelPayments
from gateway.payment.channel_terms import ChannelIds
from gateway.payment.channels import Channels
from gateway.payment.claims import MAY_BE_CHARGED, Verdict, on_conflict
from gateway.payment.eip3009 import SignatureChecks
from gateway.payment.facilitator import Facilitator
from gateway.payment.lifecycle import RECONCILE_EVERY, RECONCILE_RECENT, Supported
from gateway.payment.lifecycle import keep_reconciling as reconcile_in_background
from gateway.payment.match import MatchedPayment
from gateway.payment.paid_claim import Claim, new_claim
from gateway.payment.receipts import receipt_headers
from gateway.payment.reconcile import SETTLE_MARGIN, ChainReader
from gateway.payment.recovery import Reconciler
from gateway.payment.requirements import for_facilitator
from gateway.payment.settlement import Books
from gateway.payment.voucher_road import VoucherRoad
from gateway.store import PaymentRecord, PaymentStore
from gateway.store.channels import ChannelCharges
from gateway.store.memory import MemoryStore

log = get_logger("gateway.payments")

# Seconds a copy of a payment in flight is told to wait: about one settlement on a fast chain.
IN_FLIGHT_RETRY_AFTER = 2
# A request that finds a dead holder's settling claim asks the chain for at most this long.
INLINE_RECONCILE_TIMEOUT = 3.0


class Payments:
    def __init__(
        self,
        facilitator: Facilitator,
        store: PaymentStore,
        chain: ChainReader | None = None,
        settle_timeout: float = 30.0,
    ) -> None:
        self.facilitator = facilitator
        self.store = store
        self.chain = chain  # None: no RPC, a dead holder's settling claim waits to expire
        # After the settle window a settlement whose holder died can no longer land.
        window = settle_timeout + SETTLE_MARGIN
        self.reconciler = Reconciler(store, chain, window, INLINE_RECONCILE_TIMEOUT)
        self.server = x402ResourceServer(facilitator)
        register_exact_evm_server(self.server)
        upto: Any = UptoEvmServerScheme()  # type: ignore[no-untyped-call]  # SDK untyped
        self.server.register("eip155:*", upto)
        self.supported = Supported(facilitator, self.server)
        self.books = Books(store)
        self.channel_payments = ChannelPayments(self.server, facilitator.get_supported)
        # `verify: local`: the signature verdicts the matcher shares with the facilitator
        # wrapper (set by the composition root; None: the facilitator checks on its own).
        self.signatures: SignatureChecks | None = None
        # The voucher road (gateway/payment/voucher_road.py): set with the channels, when
        # their state and the claims are both in memory; None: every voucher's full path.
        self.road: VoucherRoad | None = None

    @property
    def channels(self) -> Channels | None:
        """The batch-settlement channels, when a route takes them."""
        return self.channel_payments.channels

    @property
    def channel_ids(self) -> ChannelIds | None:
        """The channel ids this generation has computed (for `match_requirement`)."""
        return self.channel_payments.ids

    def use_channels(self, channels: Channels) -> None:
        """Take batch-settlement payments (gateway/payment/channels.py); before `start()`."""
        self.channel_payments.use(channels)
        self.read_channels(channels.storage)
        self.road = VoucherRoad.over(self.store, self.channel_payments, self.supported, self.books)

    def read_channels(self, storage: ChannelStorage) -> None:
        """Reconcile channel payments' records against `storage`, the channel state (also
        with no channel route: those served before are in it); before `background()`."""
        self.reconciler = dataclasses.replace(self.reconciler, channels=ChannelCharges(storage))

    # --- life (gateway/payment/lifecycle.py) -------------------------------------------

    async def start(self) -> list[str]:
        """Load what the facilitators support. Returns the problems; never raises, because
        a gateway whose facilitator is down must still answer challenges and free routes."""
        await self.facilitator.start()
        return await self.refresh()

    async def refresh(self) -> list[str]:
        return await self.supported.refresh()

    async def background(self) -> None:
        """The generation's background work: /supported until known, and reconciling."""
        await asyncio.gather(self.supported.keep_refreshing(), self.keep_reconciling())

    async def keep_reconciling(
        self, interval: float = RECONCILE_EVERY, limit: int = RECONCILE_RECENT
    ) -> None:
        """Resolve what dead holders left in flight among the newest records."""
        if self.chain is None and self.reconciler.channels is None:
            return  # nothing to reconcile with (`check` warns)
        await reconcile_in_background(self.reconciler, interval, limit)

    def unsupported(self, routes: tuple[RouteSettings, ...]) -> list[str]:
        """Routes no facilitator can take payment for: one line each."""
        return self.supported.unsupported(routes)

    async def close(self) -> None:
        await self.facilitator.close()
        await self.channel_payments.close()

    # --- the request path --------------------------------------------------------------

    async def claim(self, matched: MatchedPayment, route: RouteSettings, request_id: str) -> Claim:
        """Take the payment's identity in the store, or raise `PaymentConflict`."""
        claim = new_claim(matched, route, request_id, self.store.holder)
        key, record, ttl = claim.key, claim.record, claim.ttl
        held = await self.store.claim(key, record, ttl)
        if held is None:
            return claim
        held, verdict = await self._judge(key, held)
        if verdict is Verdict.TAKE_OVER:
            # Its holder is gone and nothing was charged: the claim is ours, if still so.
            gone = () if held.status == "released" else (held.with_status("released"),)
            if await self.store.replace(key, held, record, ttl, gone):
                log.info("claim_taken_over", request_id=request_id, previous=held.request_id)
                return Claim(key, matched, record, ttl)
            verdict = Verdict.IN_FLIGHT
        if verdict is not Verdict.ALREADY_USED:
            conflict = PaymentConflict(
                "this payment is being used by a request in flight", reason="payment_in_flight"
            )
            conflict.retry_after = IN_FLIGHT_RETRY_AFTER
            raise conflict
        if matched.requirement.scheme == SCHEME_BATCH_SETTLEMENT:
            raise await self.channel_payments.voucher_used(matched)
        raise self._already_used(held, matched)

    async def _judge(self, key: str, held: PaymentRecord) -> tuple[PaymentRecord, Verdict]:
        """The verdict on a held claim, reconciling it first if its holder died settling."""
        alive = await self.store.alive(held.holder) if held.in_flight else True
        verdict = on_conflict(held.status, holder_alive=alive)
        if verdict is not Verdict.RECONCILE:
            return held, verdict
        held = await self.reconciler.run(key, held)
        if held.status in MAY_BE_CHARGED:
            return held, Verdict.IN_FLIGHT  # not known yet: wait (Retry-After)
        return held, on_conflict(held.status, holder_alive=False)

    @staticmethod
    def _already_used(held: PaymentRecord, matched: MatchedPayment) -> PaymentConflict:
        headers: dict[str, str] = {}
        if held.transaction:
            # Answered from the record: the payer sees the settlement it already paid for.
            receipt = SettleResponse(
                success=held.status == "settled",
                transaction=held.transaction,
                network=held.network,
                payer=held.payer,
                error_reason=None if held.status == "settled" else held.status,
            )
            headers = receipt_headers(receipt, matched.version)
        return PaymentConflict(
            f"this payment was already used ({held.status}"
            + (f", transaction {held.transaction})" if held.transaction else ")"),
            reason="payment_already_used",
            headers=headers,
        )

    @contextlib.asynccontextmanager
    async def claimed(
        self, matched: MatchedPayment, route: RouteSettings, request_id: str
    ) -> AsyncIterator[Claim]:
        """Hold the payment for the block. Whatever ends it early (an error, the client
        hanging up and the handler being cancelled) first waits for a settlement that has
        started to end (it may be charging the payer), then releases the claim if nothing
        was charged, or records the refund owed if the origin failed after a settlement;
        shielded, so it runs to its end and the request's books see the real outcome."""
        claim = await self.claim(matched, route, request_id)
        try:
            yield claim
        except BaseException as exc:
            await asyncio.shield(self.end_early(claim, exc))
            raise

    async def end_early(self, claim: Claim, exc: BaseException) -> None:
        """What `claimed()` does for a claim whose request ended on `exc` (shield it)."""
        if claim.settlement is not None:
            await asyncio.wait([claim.settlement])  # its outcome is recorded by itself
        if isinstance(exc, asyncio.CancelledError) and claim.settled is not None:
            return  # settled, and the client left: nothing to undo, the record says settled
        why = exc.reason if isinstance(exc, GatewayError) else type(exc).__name__
        await self.abandon(claim, why)

    async def abandon(self, claim: Claim, why: str) -> None:
        """The request will not be served as paid for."""
        if claim.settled is not None and claim.settled.success:
            await self.refund_due(claim, why)
        else:
            await self.release(claim)

    async def verify(self, claim: Claim) -> None:
        if not self.supported.ready:
            raise FacilitatorUnavailable("no facilitator has answered /supported yet")
        started = time.perf_counter()
        if await self.channel_payments.fast_voucher(claim):
            claim.timings.verify = time.perf_counter() - started
            return
        try:
            result = await self.server.verify_payment(
                claim.matched.payload, self._requirements(claim)
            )
        except SchemeNotFoundError as exc:
            raise PaymentError(str(exc), reason="unsupported_scheme") from exc
        except PaymentAbortedError as exc:
            # A scheme's before-verify hook refused it (a channel voucher on a stale amount).
            headers = await self.channel_payments.corrective(claim.matched, exc.reason)
            raise PaymentError(str(exc), reason=exc.reason, headers=headers) from exc
        finally:
            claim.timings.verify = time.perf_counter() - started
        if not result.is_valid:
            reason = result.verify.invalid_reason or "invalid_payment"
            error = AllowanceRequired if reason == ERR_PERMIT2_ALLOWANCE_REQUIRED else PaymentError
            headers = await self.channel_payments.corrective(claim.matched, reason)
            raise error(result.verify.invalid_message or reason, reason=reason, headers=headers)
        claim.skip = result.skip_handler

    async def settle(self, claim: Claim, amount: int | None = None) -> SettleResponse:
        """Settle once and record the outcome, in a task of its own: a client that goes
        away cannot cut a settlement (or its record) short, and `claimed()` waits for it.
        `amount`: what a metered (`upto`) payment settles, at most its authorized maximum
        (None: the requirement's amount)."""
        if amount is not None:
            claim.record = dataclasses.replace(claim.record, amount=str(amount))
        in_place = self._settles_in_place(claim)
        if amount == 0:
            work = self.books.settle_nothing(claim)
        else:
            work = self.books.settle(claim, lambda: self._charge(claim, amount), in_place=in_place)
        if in_place:
            # Its every await is on this process's memory (the claim records, the channel
            # state): it runs to its end before a hang-up could be delivered, so the task
            # and shield below would protect nothing (and cost two loop turns a voucher).
            return await work
        claim.settlement = asyncio.ensure_future(work)
        return await asyncio.shield(claim.settlement)

    def _settles_in_place(self, claim: Claim) -> bool:
        """Nothing in this claim's settlement suspends (a fast voucher, memory stores)."""
        in_memory = isinstance(self.store, MemoryStore)
        return in_memory and self.channel_payments.commits_in_place(claim)

    async def _charge(self, claim: Claim, amount: int | None) -> SettleResponse:
        """The SDK's settlement, or the fast path's charge of a reserved voucher."""
        if claim.hold is not None:
            # The fast commit reads only the price and the network: the route's requirements
            # carry both as the facilitator's completed copy would (two model copies saved).
            matched = claim.matched.requirements
            priced = matched if amount is None else self._requirements(claim, amount)
            committed = await self.channel_payments.commit(claim, priced)
            if committed is not None:
                return committed
        reqs = self._requirements(claim, amount)
        return await self.server.settle_payment(claim.matched.payload, reqs)

    def _requirements(
        self, claim: Claim, amount: int | None = None
    ) -> PaymentRequirements | PaymentRequirementsV1:
        """The route's requirements for the facilitator (`requirements.for_facilitator`)."""
        supported = self.facilitator.get_supported()
        return for_facilitator(claim.matched.requirements, supported, amount)

    async def release(self, claim: Claim) -> None:
        """Nothing was charged: the payer may use the same authorization again."""
        if claim.settled is None and not claim.outcome_unknown:
            await self.channel_payments.cancel(claim)
            await self.store.release(claim.key, claim.record.request_id)

    async def refund_due(self, claim: Claim, why: str) -> None:
        """Settled before forwarding, then the origin failed: the operator owes a refund."""
        await self.books.refund_due(claim, why)
