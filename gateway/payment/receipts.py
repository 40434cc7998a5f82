"""The settlement receipt a paid response carries: `PAYMENT-RESPONSE` (v2) or
`X-PAYMENT-RESPONSE` (v1), the SDK's `SettleResponse` base64-encoded."""

from __future__ import annotations

from x402.http.constants import PAYMENT_RESPONSE_HEADER, X_PAYMENT_RESPONSE_HEADER
from x402.http.utils import encode_payment_response_header
from x402.schemas import SettleResponse


def settlement_header(settle: SettleResponse, version: int) -> tuple[str, str]:
    """(`PAYMENT-RESPONSE`, value) for v2, (`X-PAYMENT-RESPONSE`, value) for v1."""
    name = X_PAYMENT_RESPONSE_HEADER if version == 1 else PAYMENT_RESPONSE_HEADER
    return name, encode_payment_response_header(settle)


def receipt_headers(settle: SettleResponse, version: int) -> dict[str, str]:
    """`settlement_header()` as the one-entry header mapping a response or an error carries."""
    return dict([settlement_header(settle, version)])
