"""What became of a request that carried a payment: exactly one final outcome each, from the
error it ended with (if any) and the status of its payment record. The one mapping from the
exception tree to payment outcomes; metrics count them and the access line names them.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.errors import (
    FacilitatorUnavailable,
    GatewayError,
    PaymentConflict,
    PaymentError,
    SettlementFailed,
    SettlementPending,
    StoreUnavailable,
)

# Final outcomes of a request that carried a payment.
SETTLED = "settled"
REFUND_DUE = "refund_due"  # settled before forwarding, then the origin failed
SETTLE_FAILED = "settle_failed"
SETTLE_PENDING = "settle_pending"
REPLAYED = "replayed"
INVALID = "invalid"
NOT_CHARGED = "not_charged"  # the origin failed or the client left before settling: not charged
ERROR = "error"  # the facilitator or the store could not answer: fail closed
VERIFIED = "verified"  # not final: counted when verification passed

_BY_ERROR: tuple[tuple[type[GatewayError] | tuple[type[GatewayError], ...], str], ...] = (
    (PaymentConflict, REPLAYED),
    (SettlementFailed, SETTLE_FAILED),
    (SettlementPending, SETTLE_PENDING),
    (PaymentError, INVALID),  # MalformedPayment included (after its SettlementFailed sibling)
    ((FacilitatorUnavailable, StoreUnavailable), ERROR),
)


@dataclass(frozen=True, slots=True)
class Outcome:
    name: str  # one of the final outcomes above
    reason: str  # a slug, or "" when there is none


def payment_outcome(error: GatewayError | None, record_status: str | None) -> tuple[str, str]:
    """(outcome, reason) for a request that carried a payment, from the error it ended with
    (if any) and the status of its payment record (None: it never held a claim)."""
    if record_status == "refund_due":
        return REFUND_DUE, error.reason if error is not None else "origin_error"
    if record_status == "settled":
        return SETTLED, ""
    if error is None and record_status in ("settlement_pending", "settling", "pending"):
        # The client left while the settlement ran and its outcome is not known yet.
        return SETTLE_PENDING, "client_gone"
    if error is None:
        return NOT_CHARGED, "origin_error"
    for kinds, outcome in _BY_ERROR:
        if isinstance(error, kinds):
            return outcome, error.reason
    return NOT_CHARGED, error.reason


def classify(
    error: GatewayError | None, record_status: str | None, *, client_gone: bool
) -> Outcome:
    """`payment_outcome()`, with an unexplained not-charged put down to a client that left."""
    name, reason = payment_outcome(error, record_status)
    if client_gone and name == NOT_CHARGED and error is None:
        reason = "client_gone"
    return Outcome(name, reason)
