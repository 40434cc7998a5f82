"""A request's hold on one payment (`Claim`) and the seconds it spent in each step.

Data only: `gateway.payment.engine` takes, settles and releases claims; the books
(`gateway.payment.settlement`) record what became of them; observe reads their timings.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from x402.mechanisms.evm.batch_settlement import SCHEME_BATCH_SETTLEMENT
from x402.schemas import SettleResponse, SkipHandlerDirective

from gateway.config.settings import RouteSettings
from gateway.payment.channel_fast import Hold
from gateway.payment.channel_terms import charged_voucher, is_refund
from gateway.payment.match import MatchedPayment, claim_ttl
from gateway.store import PaymentRecord


def charged_amount(matched: MatchedPayment) -> int:
    """What a payment charges at most: a channel's cooperative refund, nothing."""
    if matched.channel is not None:  # matched: its kind read already
        return 0 if matched.channel.kind == "refund" else matched.requirement.amount
    payload = matched.payload.payload
    return 0 if isinstance(payload, dict) and is_refund(payload) else matched.requirement.amount


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


def new_claim(matched: MatchedPayment, route: RouteSettings, request_id: str, holder: str) -> Claim:
    """This request's claim on `matched`, not yet taken in the store (`Payments.claim`, the
    voucher road): its record says who holds it and what it may charge."""
    now = time.time()
    ttl = claim_ttl(matched, now)
    # A channel payment's charge is in the channel state: its record is reconciled there.
    channel, cumulative = _channel_of(matched)
    record = PaymentRecord(
        status="claimed",
        request_id=request_id,
        route=route.name,
        payer=matched.payer,
        amount=str(charged_amount(matched)),
        asset=matched.requirement.asset,
        network=matched.requirement.network,
        nonce=matched.identity.nonce,
        holder=holder,
        channel=channel,
        cumulative=cumulative,
        created_at=now,  # one clock read (the defaults read it once each)
        updated_at=now,
    )
    return Claim(matched.identity.key, matched, record, ttl)


def _channel_of(matched: MatchedPayment) -> tuple[str | None, str | None]:
    """A channel deposit's or voucher's channel id and cumulative amount, for its record."""
    if matched.requirement.scheme != SCHEME_BATCH_SETTLEMENT:
        return None, None
    paid = matched.channel  # as matched: its payload is not parsed again
    if paid is not None:
        return (None, None) if paid.kind == "refund" else (paid.channel_id, str(paid.cumulative))
    voucher = charged_voucher(matched.payload.payload)
    return voucher if voucher is not None else (None, None)
