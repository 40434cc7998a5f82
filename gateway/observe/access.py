"""The access line: one structured log line per request, written from its `RequestRecord`.

A paid request's line says what became of the payment, who paid what in which asset, where
the time went and the transaction; never the payment itself (its signature or payload).
"""

from __future__ import annotations

import logging

from gateway.observe.logs import get_logger
from gateway.observe.record import RequestRecord

access = get_logger("gateway.access")


def payment_fields(record: RequestRecord) -> dict[str, object]:
    """The access-line fields of a request that carried a payment."""
    outcome = record.outcome()
    fields: dict[str, object] = {"payment": outcome.name}
    if outcome.reason:
        fields["payment_reason"] = outcome.reason
    claim = record.claim
    if claim is None:
        return fields
    req = claim.matched.requirement
    fields.update(
        payer=claim.matched.payer, amount=claim.record.amount, asset=req.asset, network=req.network
    )
    for step, seconds in claim.timings.spans().items():
        fields[f"{step}_ms"] = round(seconds * 1000, 3)
    if claim.settled is not None and claim.settled.success:
        fields["transaction"] = claim.settled.transaction
    if claim.hold is not None:
        fields["voucher"] = "fast"  # served by gateway/payment/channel_fast.py, not the SDK hooks
    return fields


def sign_in_fields(record: RequestRecord) -> dict[str, object]:
    """The access-line fields of a SIWX sign-in: who signed in, or why it was refused."""
    sign_in = record.sign_in
    if sign_in is None:
        return {}
    if record.signed_in is not None:
        return {"sign_in": sign_in.name, "payer": record.signed_in}
    return {"sign_in": sign_in.name, "sign_in_reason": sign_in.reason}


def write(record: RequestRecord) -> None:
    if not access.is_enabled_for(logging.INFO):
        return  # `log_level` above info: no line, so nothing to gather for it
    paid = payment_fields(record) if record.carried_payment else sign_in_fields(record)
    access.info(
        "request",
        request_id=record.request_id,
        method=record.method,
        path=record.path,
        route=record.label,
        status=record.status_code,
        bytes=record.sent,
        duration_ms=round(record.seconds * 1000, 3),
        generation=record.generation,
        **paid,
    )
