"""The x402 step, on the SDK's `x402ResourceServer`: claim, verify, settle, release.

Decoding and matching a payment are pure (`gateway.payment.decode`, `.match`); this module
is where the money moves, so every step fails closed: a store or facilitator that cannot
answer means no paid content, and a claim is released only when nothing was charged.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from x402 import x402ResourceServer
from x402.mechanisms.evm.batch_settlement import SCHEME_BATCH_SETTLEMENT
from x402.mechanisms.evm.batch_settlement.errors import ERR_CUMULATIVE_AMOUNT_MISMATCH
from x402.mechanisms.evm.constants import ERR_PERMIT2_ALLOWANCE_REQUIRED, SCHEME_UPTO
from x402.mechanisms.evm.exact.register import register_exact_evm_server
from x402.mechanisms.evm.upto import UptoEvmServerScheme
from x402.schemas import (
    PaymentAbortedError,
    PaymentPayload,
    PaymentRequirements,
    SchemeNotFoundError,
    SettleResponse,
    SkipHandlerDirective,
    SupportedResponse,
    VerifyResponse,
)
from x402.schemas.v1 import PaymentPayloadV1, PaymentRequirementsV1

from gateway.config.settings import RouteSettings
from gateway.errors import (
    AllowanceRequired,
    FacilitatorUnavailable,
    GatewayError,
    PaymentConflict,
    PaymentError,
    SettlementFailed,
    SettlementPending,
    StoreUnavailable,
)
from gateway.observe.logs import get_logger
from gateway.payment.channel_fast import Hold
from gateway.payment.channel_terms import ChannelIds, is_refund
from gateway.payment.channels import (
    CORRECTIVE,
    Channels,
    RefusedBeforeSettle,
    corrective_headers,
)
from gateway.payment.claims import MAY_BE_CHARGED, Verdict, on_conflict
from gateway.payment.match import MatchedPayment, claim_ttl
from gateway.payment.receipts import receipt_headers
from gateway.payment.reconcile import SETTLE_MARGIN, ChainReader
from gateway.payment.recovery import Reconciler, reconcile_recent
from gateway.payment.requirements import completed, incomplete, requirement_v2
from gateway.store import PaymentRecord, PaymentStore
from gateway.store.records import Status

log = get_logger("gateway.payments")

# Seconds a copy of a payment in flight is told to wait: about one settlement on a fast chain.
IN_FLIGHT_RETRY_AFTER = 2
# A request that finds a dead holder's settling claim asks the chain for at most this long.
INLINE_RECONCILE_TIMEOUT = 3.0
# The background reconciler: every ~30 s (jittered: replicas out of step), the newest records.
RECONCILE_EVERY = 30.0
RECONCILE_RECENT = 1000
# Schemes whose requirements are completed from the facilitator's /supported `extra`.
_COMPLETED = (SCHEME_UPTO, SCHEME_BATCH_SETTLEMENT)


def charged_amount(matched: MatchedPayment) -> int:
    """What a payment charges at most: a channel's cooperative refund, nothing."""
    payload = matched.payload.payload
    return 0 if isinstance(payload, dict) and is_refund(payload) else matched.requirement.amount


class Facilitator(Protocol):
    """What the gateway needs of a facilitator (the SDK's `FacilitatorClient`, plus life)."""

    async def verify(
        self,
        payload: PaymentPayload | PaymentPayloadV1,
        requirements: PaymentRequirements | PaymentRequirementsV1,
    ) -> VerifyResponse: ...

    async def settle(
        self,
        payload: PaymentPayload | PaymentPayloadV1,
        requirements: PaymentRequirements | PaymentRequirementsV1,
    ) -> SettleResponse: ...

    def get_supported(self) -> SupportedResponse: ...

    async def refresh_supported(self) -> list[str]: ...

    async def ping(self) -> None: ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...


@dataclass(slots=True)
class StepTimings:
    """Seconds a paid request spent in each step (None: the step was not reached)."""

    verify: float | None = None
    settle: float | None = None
    origin: float | None = None  # to the origin's response head

    def spans(self) -> dict[str, float]:
        """The steps reached, by name, in the order a settle-after request meets them."""
        named = (("verify", self.verify), ("origin", self.origin), ("settle", self.settle))
        return {name: seconds for name, seconds in named if seconds is not None}


@dataclass(slots=True)
class Claim:
    """This request's hold on one payment. Released on every failure before a settlement;
    once `settlement` has started, only its own outcome decides (never a hang-up)."""

    key: str
    matched: MatchedPayment
    record: PaymentRecord
    ttl: float
    settled: SettleResponse | None = None
    outcome_unknown: bool = False  # settle may have reached the chain: never release
    timings: StepTimings = field(default_factory=StepTimings)
    # The settlement, as a task of its own: it outlives a request that is cancelled.
    settlement: asyncio.Task[SettleResponse] | None = None
    # The scheme answers the request itself (a channel's cooperative refund): not forwarded.
    skip: SkipHandlerDirective | None = None
    # A plain channel voucher reserved by the fast path (gateway/payment/channel_fast.py).
    hold: Hold | None = None


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
        self._ready = False
        self.channels: Channels | None = None  # batch-settlement, when a route takes it

    @property
    def channel_ids(self) -> ChannelIds | None:
        """The channel ids this generation has computed (for `match_requirement`)."""
        return self.channels.ids if self.channels is not None else None

    def use_channels(self, channels: Channels) -> None:
        """Take batch-settlement payments (gateway/payment/channels.py); before `start()`."""
        channels.register(self.server)
        self.channels = channels

    # --- life --------------------------------------------------------------------------

    async def start(self) -> list[str]:
        """Load what the facilitators support. Returns the problems; never raises, because
        a gateway whose facilitator is down must still answer challenges and free routes."""
        await self.facilitator.start()
        return await self.refresh()

    async def refresh(self) -> list[str]:
        errors = await self.facilitator.refresh_supported()
        if self.facilitator.get_supported().kinds:
            # Non-blocking here: our facilitator clients answer get_supported() from a cache.
            self.server.initialize()
            self._ready = True
        return errors

    async def background(self) -> None:
        """The generation's background work: /supported until known, and reconciling."""
        await asyncio.gather(self.keep_refreshing(), self.keep_reconciling())

    async def keep_reconciling(
        self, interval: float = RECONCILE_EVERY, limit: int = RECONCILE_RECENT
    ) -> None:
        """Resolve what dead holders left in flight among the newest records, without
        waiting for a retry. Bounded reads of the history stream, never a SCAN; an older
        stale claim is still resolved by the first request that meets it."""
        if self.chain is None:
            return  # nothing to reconcile with (`check` warns)
        while True:
            await asyncio.sleep(interval * (0.5 + random.random()))  # noqa: S311  jitter
            try:
                await reconcile_recent(self.reconciler, limit)
            except StoreUnavailable as exc:
                log.warning("reconcile_store_unavailable", error=exc.detail)

    async def keep_refreshing(self, interval: float = 5.0) -> None:
        """Until /supported has been read once, retry in the background."""
        while not self._ready:
            await asyncio.sleep(interval)
            errors = await self.refresh()
            if errors:
                log.warning("facilitator_supported_failed", errors=errors)

    def unsupported(self, routes: tuple[RouteSettings, ...]) -> list[str]:
        """Routes no facilitator can take payment for: one line each."""
        supported = self.facilitator.get_supported()
        kinds = {(k.scheme, k.network) for k in supported.kinds}
        return [
            f"routes[{r.index}] {r.path}: no facilitator supports {req.scheme} on {req.network}"
            for r in routes
            for req in r.accepts
            if (req.scheme, req.network) not in kinds
        ] + [
            f"routes[{r.index}] {r.path}: {req.scheme} on {req.network} is not offered: no "
            "receiver authorizer (set channels.authorizer_key, or use a facilitator that "
            "advertises one)"
            for r in routes
            for req in r.accepts
            if (req.scheme, req.network) in kinds
            and incomplete(completed(requirement_v2(req), supported))
        ]

    async def close(self) -> None:
        await self.facilitator.close()
        if self.channels is not None:
            await self.channels.close()

    # --- the request path --------------------------------------------------------------

    async def claim(self, matched: MatchedPayment, route: RouteSettings, request_id: str) -> Claim:
        """Take the payment's identity in the store, or raise `PaymentConflict`."""
        ttl = claim_ttl(matched, time.time())
        record = PaymentRecord(
            status="claimed",
            request_id=request_id,
            route=route.name,
            payer=matched.payer,
            amount=str(charged_amount(matched)),
            asset=matched.requirement.asset,
            network=matched.requirement.network,
            nonce=matched.identity.nonce,
            holder=self.store.holder,
        )
        key = matched.identity.key
        held = await self.store.claim(key, record, ttl)
        if held is None:
            return Claim(key, matched, record, ttl)
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
            raise await self._voucher_used(matched)
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

    async def _voucher_used(self, matched: MatchedPayment) -> PaymentError:
        """A channel voucher (or deposit) whose amount was already charged: the SDK's own
        answer, a corrective 402 with the channel's state, from which a client that lost its
        state signs the next voucher (a 409 would leave it stuck on the old amount)."""
        reason = ERR_CUMULATIVE_AMOUNT_MISMATCH
        headers = await self._corrective_for(matched, reason)
        return PaymentError(
            "this voucher's amount was already charged", reason=reason, headers=headers
        )

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
            await asyncio.shield(self._end_early(claim, exc))
            raise

    async def _end_early(self, claim: Claim, exc: BaseException) -> None:
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
        if not self._ready:
            raise FacilitatorUnavailable("no facilitator has answered /supported yet")
        started = time.perf_counter()
        if await self._fast_voucher(claim):
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
            headers = await self._corrective(claim, exc.reason)
            raise PaymentError(str(exc), reason=exc.reason, headers=headers) from exc
        finally:
            claim.timings.verify = time.perf_counter() - started
        if not result.is_valid:
            reason = result.verify.invalid_reason or "invalid_payment"
            error = AllowanceRequired if reason == ERR_PERMIT2_ALLOWANCE_REQUIRED else PaymentError
            headers = await self._corrective(claim, reason)
            raise error(result.verify.invalid_message or reason, reason=reason, headers=headers)
        claim.skip = result.skip_handler

    async def _fast_voucher(self, claim: Claim) -> bool:
        """A plain voucher on a channel with fresh state: checked and its channel reserved
        on the loop (one store round trip); False when the SDK's path must decide."""
        fast = self.channels.fast if self.channels is not None else None
        if fast is None or claim.matched.requirement.scheme != SCHEME_BATCH_SETTLEMENT:
            return False
        reqs = self._requirements(claim)
        voucher = fast.plain(claim.matched.payload.payload, reqs)  # type: ignore[arg-type]
        if voucher is None or not isinstance(reqs, PaymentRequirements):
            return False
        claim.hold = fast.hold(voucher)  # set first: a hang-up meanwhile releases it
        if await fast.reserve(claim.hold, reqs):
            return True
        claim.hold = None
        return False

    async def _settle_payment(self, claim: Claim, amount: int | None) -> SettleResponse:
        """The SDK's settlement, or the fast path's charge of a reserved voucher."""
        reqs = self._requirements(claim, amount)
        fast = self.channels.fast if self.channels is not None else None
        if claim.hold is not None and fast is not None and isinstance(reqs, PaymentRequirements):
            return await fast.commit(claim.hold, reqs)
        return await self.server.settle_payment(claim.matched.payload, reqs)

    async def _corrective(self, claim: Claim, reason: str) -> dict[str, str]:
        """A channel voucher on a stale cumulative amount: the 402 carries the channel's
        state for the payer's client to resynchronise (the SDK's corrective 402)."""
        return await self._corrective_for(claim.matched, reason)

    async def _corrective_for(self, matched: MatchedPayment, reason: str) -> dict[str, str]:
        payload = matched.payload
        if reason not in CORRECTIVE or not isinstance(payload, PaymentPayload):
            return {}
        reqs = self._completed(matched)
        assert isinstance(reqs, PaymentRequirements)
        return await corrective_headers(self.server, payload, reqs, reason)

    async def settle(self, claim: Claim, amount: int | None = None) -> SettleResponse:
        """Settle once and record the outcome, in a task of its own: a client that goes
        away cannot cut a settlement (or its record) short, and `claimed()` waits for it.
        `amount`: what a metered (`upto`) payment settles, at most its authorized maximum
        (None: the requirement's amount)."""
        if amount is not None:
            claim.record = dataclasses.replace(claim.record, amount=str(amount))
        work = self._settle_nothing(claim) if amount == 0 else self._settle(claim, amount)
        claim.settlement = asyncio.ensure_future(work)
        return await asyncio.shield(claim.settlement)

    def _requirements(
        self, claim: Claim, amount: int | None = None
    ) -> PaymentRequirements | PaymentRequirementsV1:
        """The route's requirements for the facilitator: an `upto` one completed with the
        facilitator's address, and settled for `amount`; a `batch-settlement` one completed
        with the facilitator's receiver authorizer when the gateway has none of its own."""
        return self._completed(claim.matched, amount)

    def _completed(
        self, matched: MatchedPayment, amount: int | None = None
    ) -> PaymentRequirements | PaymentRequirementsV1:
        reqs = matched.requirements
        if not isinstance(reqs, PaymentRequirements) or reqs.scheme not in _COMPLETED:
            return reqs
        reqs = completed(reqs, self.facilitator.get_supported())
        return reqs if amount is None else reqs.model_copy(update={"amount": str(amount)})

    async def _settle_nothing(self, claim: Claim) -> SettleResponse:
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
        await self._record(claim, "settled")
        return result

    async def _settle(self, claim: Claim, amount: int | None = None) -> SettleResponse:
        # Written before the facilitator is asked: from here on the payment may be charged,
        # and the record says so to every copy of it, to a crash, and to the release script.
        await self._enter_settling(claim)
        started = time.perf_counter()
        try:
            result = await self._settle_payment(claim, amount)
        except SettlementPending as exc:
            claim.outcome_unknown = True
            await self._record(claim, "settlement_pending", reason=exc.detail)
            raise
        except FacilitatorUnavailable as exc:
            # No facilitator was reached (remote and local raise it only then): not charged.
            await self._record(claim, "failed", reason=exc.reason)
            raise
        except (PaymentAbortedError, RefusedBeforeSettle) as exc:
            # A scheme's before-settle hook refused it before anything moved (a channel whose
            # reservation lapsed and was taken by another request; a refund with nothing
            # left to refund): not charged, not served.
            reason = exc.reason if isinstance(exc, PaymentAbortedError) else str(exc)
            await self._record(claim, "failed", reason=reason)
            raise SettlementFailed(str(exc), reason=reason) from exc
        finally:
            claim.timings.settle = time.perf_counter() - started
        if result.success:
            claim.settled = result
            try:
                await self._record(claim, "settled", transaction=result.transaction)
            except StoreUnavailable as exc:
                # Charged: the payer gets what it paid for. The pending claim (where the
                # store kept it) and the used nonce on chain still stop a second charge;
                # this line is the books' copy of the outcome.
                record = dataclasses.asdict(claim.record)
                log.error("payment_record_failed", **record, error=exc.detail)
            return result
        if result.error_reason == "settlement_pending":
            # Broadcast, not yet confirmed (the SDK already retried once): the payer must
            # not pay again, and the claim stays so this authorization cannot buy twice.
            claim.outcome_unknown = True
            await self._record(claim, "settlement_pending", transaction=result.transaction)
            raise SettlementPending(
                f"transaction {result.transaction} not yet confirmed",
                headers=receipt_headers(result, claim.matched.version),
            )
        await self._record(claim, "failed", reason=result.error_reason)
        raise SettlementFailed(
            result.error_message or result.error_reason or "settlement failed",
            reason=result.error_reason or "settlement_failed",
            headers=receipt_headers(result, claim.matched.version),
        )

    async def release(self, claim: Claim) -> None:
        """Nothing was charged: the payer may use the same authorization again."""
        if claim.settled is None and not claim.outcome_unknown:
            await self._cancel_channel(claim)
            await self.store.release(claim.key, claim.record.request_id)

    async def _cancel_channel(self, claim: Claim) -> None:
        """A channel payment's reservation is cleared (its channel free for the next call)."""
        payload, reqs = claim.matched.payload, self._requirements(claim)
        if self.channels is None or reqs.scheme != SCHEME_BATCH_SETTLEMENT:
            return
        if claim.hold is not None and self.channels.fast is not None:
            await self.channels.fast.cancel(claim.hold)
            return
        assert isinstance(payload, PaymentPayload) and isinstance(reqs, PaymentRequirements)
        await self.channels.cancel(self.server, payload, reqs)

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
        await self._record(claim, "refund_due", reason=why)

    async def _enter_settling(self, claim: Claim) -> None:
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

    async def _record(self, claim: Claim, status: Status, **changes: str | None) -> None:
        claim.record = claim.record.with_status(status, **changes)
        await self.store.update(claim.key, claim.record, claim.ttl)
