"""Payments, x402 side: everything between a payment header and a settled receipt.

Pure modules (no sockets, no store, no facilitator; tested without I/O):
- `networks`: CAIP-2 and v1 network names; `requirements`: configured terms as SDK wire types;
- `decode`: a payment header to an SDK payload, bounded; `terms`: the signed EVM authorization;
- `match`: which of the route's own requirements a payment pays, and its identity;
- `challenge`: the 402 built from config; `receipts`: the PAYMENT-RESPONSE header;
- `outcome`: what became of a request that carried a payment (for metrics and logs).

Then `engine`, where money moves: claim, verify, settle, release (`Payments`), on the SDK's
`x402ResourceServer` and a `Facilitator` (`facilitator`); beside it a request's `Claim`
(`paid_claim`), its books (`settlement`), the channel side (`channel_payments`) and the
work off the request path (`lifecycle`).
"""

from __future__ import annotations

from gateway.payment.challenge import ERROR_PAYMENT_REQUIRED, PreparedChallenges
from gateway.payment.decode import MAX_JSON_DEPTH, DecodedPayment, decode_payment
from gateway.payment.engine import Payments
from gateway.payment.facilitator import Facilitator
from gateway.payment.match import (
    MISMATCH,
    MatchedPayment,
    PaymentIdentity,
    claim_ttl,
    match_requirement,
)
from gateway.payment.paid_claim import Claim
from gateway.payment.receipts import receipt_headers
from gateway.payment.terms import UNSUPPORTED_PAYLOAD

__all__ = [
    "ERROR_PAYMENT_REQUIRED",
    "MAX_JSON_DEPTH",
    "MISMATCH",
    "UNSUPPORTED_PAYLOAD",
    "Claim",
    "DecodedPayment",
    "Facilitator",
    "MatchedPayment",
    "PaymentIdentity",
    "Payments",
    "PreparedChallenges",
    "claim_ttl",
    "decode_payment",
    "match_requirement",
    "receipt_headers",
]
