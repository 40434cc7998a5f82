"""The pure x402 wire logic of a payment: decode the header, match it to the route's own
requirements, and name its identity for replay protection. No sockets, no facilitator.

The two halves live in `payment_decode` and `payment_match`; this is the one import the rest
of the gateway uses.
"""

from __future__ import annotations

from gateway.payment.decode import MAX_JSON_DEPTH, DecodedPayment, decode_payment
from gateway.payment.match import (
    MISMATCH,
    MatchedPayment,
    PaymentIdentity,
    claim_ttl,
    match_requirement,
)
from gateway.payment.terms import UNSUPPORTED_PAYLOAD

__all__ = [
    "MAX_JSON_DEPTH",
    "MISMATCH",
    "UNSUPPORTED_PAYLOAD",
    "DecodedPayment",
    "MatchedPayment",
    "PaymentIdentity",
    "claim_ttl",
    "decode_payment",
    "match_requirement",
]
