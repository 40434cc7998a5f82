"""A request's hold on one payment (`Claim`) and the seconds it spent in each step.

Data only: `gateway.payment.engine` takes, settles and releases claims; the books
(`gateway.payment.settlement`) record what became of them; observe reads their timings.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from x402.schemas import SettleResponse, SkipHandlerDirective

from gateway.payment.channel_fast import Hold
from gateway.payment.channel_terms import is_refund
from gateway.payment.match import MatchedPayment
from gateway.store import PaymentRecord


def charged_amount(matched: MatchedPayment) -> int:
    """What a payment charges at most: a channel's cooperative refund, nothing."""
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
