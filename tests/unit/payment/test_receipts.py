"""The receipt header (gateway/payment/receipts.py) held to the SDK's encoder: the same JSON
value, read back by the SDK's decoder as the same `SettleResponse`."""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from x402.http.constants import PAYMENT_RESPONSE_HEADER, X_PAYMENT_RESPONSE_HEADER
from x402.http.utils import decode_payment_response_header, encode_payment_response_header
from x402.schemas import SettleResponse

from gateway.payment.receipts import encode_receipt, receipt_headers

CHANNEL = "0x" + "ab" * 32

RECEIPTS = [
    SettleResponse(success=True, transaction="0x" + "12" * 32, network="eip155:84532", payer="0xP"),
    SettleResponse(  # a channel voucher's, as the fast path answers it
        success=True,
        payer="0x" + "cd" * 20,
        transaction="",
        network="eip155:84532",
        amount="",
        extra={
            "channelState": {
                "channelId": CHANNEL,
                "balance": "1000000",
                "totalClaimed": "0",
                "withdrawRequestedAt": 0,
                "refundNonce": "0",
                "chargedCumulativeAmount": str(2**200),
            },
            "chargedAmount": "1000",
        },
    ),
    SettleResponse(  # a refusal, with text outside ASCII and None fields left out
        success=False,
        transaction="",
        network="eip155:8453",
        error_reason="settlement_pending",
        error_message="pas encore confirmée — «attente»",
    ),
]


@pytest.mark.parametrize("settle", RECEIPTS)
def test_the_receipt_is_the_sdks_json_value(settle: SettleResponse) -> None:
    ours, sdks = encode_receipt(settle), encode_payment_response_header(settle)
    assert json.loads(base64.b64decode(ours)) == json.loads(base64.b64decode(sdks))
    assert decode_payment_response_header(ours) == settle


def test_the_header_is_named_by_version() -> None:
    settle = RECEIPTS[0]
    assert receipt_headers(settle, 2) == {PAYMENT_RESPONSE_HEADER: encode_receipt(settle)}
    assert receipt_headers(settle, 1) == {X_PAYMENT_RESPONSE_HEADER: encode_receipt(settle)}


_TEXT = st.text(max_size=12)  # any text: outside ASCII, quotes, escapes, surrogate-free
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70) | _TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_TEXT, inner, max_size=3),
    max_leaves=8,
)
_RECEIPTS = st.builds(
    SettleResponse,
    success=st.booleans(),
    error_reason=st.none() | _TEXT,
    error_message=st.none() | _TEXT,
    payer=st.none() | _TEXT,
    transaction=_TEXT,
    network=_TEXT,
    amount=st.none() | _TEXT,
    extensions=st.none() | st.dictionaries(_TEXT, _JSON, max_size=2),
    extension_responses=st.none() | st.dictionaries(_TEXT, _JSON, max_size=2),
    extra=st.none() | st.dictionaries(_TEXT, _JSON, max_size=3),
)


@settings(max_examples=300, deadline=None)
@given(_RECEIPTS)
def test_the_receipt_is_model_dump_jsons_bytes(settle: SettleResponse) -> None:
    """Byte for byte what the header carried when it was `model_dump_json` + base64."""
    text = settle.model_dump_json(by_alias=True, exclude_none=True)
    assert encode_receipt(settle) == base64.b64encode(text.encode()).decode("ascii")
