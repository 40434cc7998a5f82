"""What a request gets when the payment it carries is already claimed: the claim's states and
the decision alone, no I/O (`engine` reads the store and the chain, then asks here).

States of a claim's record: `claimed` (nothing charged yet) -> `settling` (written before the
facilitator's /settle: may be charged from here on) -> `settled` | `failed` |
`settlement_pending` | `refund_due`; `released` (nothing charged, free to take). `verified` is
not written (see gateway/store/records.py). `pending` is the previous version's record of a
claim about to settle: read as `settling`.

A claim's holder is a process (its heartbeat in the store). While it runs, its claims are in
flight. Once it is gone, a claim that can have charged nothing is taken over at once, and one
that may have been charged is reconciled against the chain (`gateway.payment.reconcile`).
"""

from __future__ import annotations

from enum import Enum

NOTHING_CHARGED = frozenset({"claimed", "released"})
MAY_BE_CHARGED = frozenset({"settling", "pending"})


class Verdict(Enum):
    IN_FLIGHT = "in_flight"  # 409 payment_in_flight, Retry-After
    ALREADY_USED = "already_used"  # 409 payment_already_used, with the original receipt
    TAKE_OVER = "take_over"  # the claim is free: take it (atomically) and proceed
    RECONCILE = "reconcile"  # ask the chain whether the holder's settlement landed


def on_conflict(status: str, *, holder_alive: bool) -> Verdict:
    """The verdict on a claim found held by another request, by its record's status and
    whether its holder still runs."""
    if status == "released":
        return Verdict.TAKE_OVER
    if status not in NOTHING_CHARGED and status not in MAY_BE_CHARGED:
        return Verdict.ALREADY_USED  # it has an outcome: settled, failed, pending, refund due
    if holder_alive:
        return Verdict.IN_FLIGHT
    return Verdict.TAKE_OVER if status in NOTHING_CHARGED else Verdict.RECONCILE
