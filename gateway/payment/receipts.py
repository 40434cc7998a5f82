"""The settlement receipt a paid response carries: `PAYMENT-RESPONSE` (v2) or
`X-PAYMENT-RESPONSE` (v1), the SDK's `SettleResponse` base64-encoded."""

from __future__ import annotations

from binascii import b2a_base64

from x402.http.constants import PAYMENT_RESPONSE_HEADER, X_PAYMENT_RESPONSE_HEADER
from x402.schemas import SettleResponse


def encode_receipt(settle: SettleResponse) -> str:
    """The SDK's `encode_payment_response_header` (the model by alias, without None fields,
    as base64 JSON), with pydantic's own JSON writer instead of `model_dump` + `json.dumps`
    (~3x faster, on every paid response): compact and UTF-8 where the SDK's is spaced and
    ASCII-escaped, the same JSON value (the SDK's decoder reads both; a test holds them).
    The bytes are `model_dump_json`'s: its serializer called as it calls it, without its
    str round trip, and base64 in one C call (`base64.b64encode` is a Python wrapper)."""
    text = settle.__pydantic_serializer__.to_json(settle, by_alias=True, exclude_none=True)
    return b2a_base64(text, newline=False).decode("ascii")


def settlement_header(settle: SettleResponse, version: int) -> tuple[str, str]:
    """(`PAYMENT-RESPONSE`, value) for v2, (`X-PAYMENT-RESPONSE`, value) for v1."""
    name = X_PAYMENT_RESPONSE_HEADER if version == 1 else PAYMENT_RESPONSE_HEADER
    return name, encode_receipt(settle)


def receipt_headers(settle: SettleResponse, version: int) -> dict[str, str]:
    """`settlement_header()` as the one-entry header mapping a response or an error carries."""
    return dict([settlement_header(settle, version)])
