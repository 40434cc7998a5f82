from __future__ import annotations

from typing import Any

import pytest

from gateway.errors import MalformedPayment
from gateway.payment.terms import Terms, eip3009_terms
from tests.unit.wire_helpers import NONCE, PAY_TO, PAYER, SIGNATURE, authorization, eip3009


def test_eip3009_terms_are_parsed_and_normalised() -> None:
    payload = eip3009(nonce=NONCE.upper().replace("0X", "0x"), validBefore="1700000000")
    assert eip3009_terms(payload) == Terms(
        payer=PAYER.lower(),
        to=PAY_TO.lower(),
        token=None,
        spender=None,
        value=1000,
        valid_before=1_700_000_000,
        nonce=NONCE,
    )


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"nonce": "0x" + "ab" * 31}, "nonce"),  # 31 bytes: not left-padded, refused
        ({"nonce": "0x" + "ab" * 33}, "nonce"),
        ({"nonce": "ab" * 32}, "nonce"),
        ({"nonce": "0x" + "zz" * 32}, "nonce"),
        ({"nonce": 5}, "nonce"),
        ({"value": "1e3"}, "value"),
        ({"value": "-1"}, "value"),
        ({"value": " 1000"}, "value"),
        ({"value": "1_000"}, "value"),
        ({"value": 1000}, "value"),
        ({"value": "9" * 79}, "value"),
        ({"value": str(2**256)}, "value"),
        ({"validBefore": "soon"}, "validBefore"),
        ({"validAfter": None}, "validAfter"),
        ({"from": "0x1234"}, "from"),
        ({"to": "vitalik.eth"}, "to"),
    ],
)
def test_malformed_authorization_fields(changes: dict[str, Any], field: str) -> None:
    with pytest.raises(MalformedPayment) as caught:
        eip3009_terms(eip3009(**changes))
    assert caught.value.reason == "invalid_payload"
    assert f"payload.authorization.{field}:" in caught.value.detail


@pytest.mark.parametrize(
    "payload",
    [
        {"signature": SIGNATURE},
        {"authorization": "0x00", "signature": SIGNATURE},
        {"authorization": authorization()},
        {"authorization": authorization(), "signature": "0x"},
        {"authorization": authorization(), "signature": "0x123"},
        {"authorization": authorization(), "signature": 7},
    ],
)
def test_malformed_eip3009_payloads(payload: dict[str, Any]) -> None:
    with pytest.raises(MalformedPayment):
        eip3009_terms(payload)
