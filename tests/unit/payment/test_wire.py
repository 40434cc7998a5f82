"""Round trips with the SDK's own paying client: our challenge in, its signed payment back,
through decode and match, as the gateway's request path runs them."""

from __future__ import annotations

import base64
import json
import time
from types import MappingProxyType

import pytest
from eth_account import Account
from eth_account.messages import encode_typed_data
from x402.mechanisms.evm.eip712 import build_typed_data_for_signing
from x402.mechanisms.evm.types import ExactEIP3009Authorization
from x402.schemas import PaymentRequirements

from gateway.errors import PaymentError
from gateway.payment import (
    DecodedPayment,
    claim_ttl,
    decode_payment,
    match_requirement,
)
from tests.unit.wire_helpers import (
    ASSET,
    URL,
    headers,
    new_account,
    requirement,
    route,
    sdk_v1_payment,
    sdk_v2_payment,
)

LIMIT = 16384


def _decoded(name: str, value: str) -> DecodedPayment:
    decoded = decode_payment(headers((name, value)), LIMIT)
    assert decoded is not None
    return decoded


def test_sdk_v2_payment_round_trip() -> None:
    priced = route()
    account = new_account()
    payload, value = sdk_v2_payment(priced, account)
    decoded = _decoded("PAYMENT-SIGNATURE", value)
    assert decoded.payload == payload
    matched = match_requirement(priced, decoded, URL)
    auth = payload.payload["authorization"]
    assert matched.payer == account.address
    assert matched.identity.payer == account.address.lower()
    assert matched.identity.nonce == auth["nonce"].lower()
    assert matched.identity.asset == ASSET.lower()
    assert matched.valid_before == int(auth["validBefore"])
    assert 300 <= claim_ttl(matched, time.time()) <= 361


def test_the_payment_is_signed_over_the_terms_we_matched() -> None:
    """What we checked (recipient, value, nonce, token domain) is what the payer signed."""
    priced = route()
    account = new_account()
    payload, value = sdk_v2_payment(priced, account)
    matched = match_requirement(priced, _decoded("PAYMENT-SIGNATURE", value), URL)
    assert isinstance(matched.requirements, PaymentRequirements)
    auth = payload.payload["authorization"]
    _, types, primary, message = build_typed_data_for_signing(
        ExactEIP3009Authorization(
            from_address=auth["from"],
            to=matched.requirements.pay_to,
            value=matched.requirements.amount,
            valid_after=auth["validAfter"],
            valid_before=str(matched.valid_before),
            nonce=matched.identity.nonce,
        ),
        84532,
        matched.requirements.asset,
        matched.requirements.extra["name"],
        matched.requirements.extra["version"],
    )
    signable = encode_typed_data(
        full_message={
            "types": types,
            "primaryType": primary,
            "domain": {
                "name": matched.requirements.extra["name"],
                "version": matched.requirements.extra["version"],
                "chainId": matched.identity.chain_id,
                "verifyingContract": matched.requirements.asset,
            },
            "message": message,
        }
    )
    signer = Account.recover_message(signable, signature=payload.payload["signature"])
    assert signer == account.address


def test_sdk_v1_payment_round_trip() -> None:
    priced = route()
    account = new_account()
    payload, value = sdk_v1_payment(priced, account)
    decoded = _decoded("X-PAYMENT", value)
    assert decoded.version == 1
    matched = match_requirement(priced, decoded, URL)
    assert matched.version == 1
    assert matched.payer == account.address
    assert matched.identity.nonce == payload.payload["authorization"]["nonce"].lower()


def test_sdk_permit2_payment_round_trip() -> None:
    extra = MappingProxyType({"name": "USDC", "version": "2", "assetTransferMethod": "permit2"})
    priced = route(requirement(extra=extra))
    account = new_account()
    payload, value = sdk_v2_payment(priced, account)
    matched = match_requirement(priced, _decoded("PAYMENT-SIGNATURE", value), URL)
    nonce = int(payload.payload["permit2Authorization"]["nonce"])
    assert matched.identity.nonce == f"0x{nonce:064x}"
    assert matched.payer == account.address


def test_a_payment_for_a_cheaper_route_does_not_buy_a_dearer_one() -> None:
    cheap, dear = route(), route(requirement(amount=1_000_000))
    _, value = sdk_v2_payment(cheap, new_account())
    with pytest.raises(PaymentError) as caught:
        match_requirement(dear, _decoded("PAYMENT-SIGNATURE", value), URL)
    assert caught.value.reason == "payment_requirements_mismatch"
    assert "amount" in caught.value.detail


def test_a_tampered_echo_cannot_lower_the_price() -> None:
    """The client rewrites `accepted` to the route's price but signed a smaller value."""
    cheap, dear = route(), route(requirement(amount=1_000_000))
    payload, _ = sdk_v2_payment(cheap, new_account())
    data = payload.model_dump(by_alias=True, exclude_none=True)
    data["accepted"]["amount"] = "1000000"
    value = base64.b64encode(json.dumps(data).encode()).decode()
    with pytest.raises(PaymentError) as caught:
        match_requirement(dear, _decoded("PAYMENT-SIGNATURE", value), URL)
    assert caught.value.reason == "invalid_exact_evm_payload_authorization_value_mismatch"


def test_re_encoding_a_payment_does_not_change_its_identity() -> None:
    priced = route()
    payload, value = sdk_v2_payment(priced, new_account())
    data = payload.model_dump(by_alias=True, exclude_none=True)
    data["payload"]["authorization"]["nonce"] = data["payload"]["authorization"]["nonce"].upper()
    data["payload"]["authorization"]["nonce"] = "0x" + data["payload"]["authorization"]["nonce"][2:]
    other = base64.urlsafe_b64encode(json.dumps(data, indent=2, sort_keys=True).encode()).decode()
    assert other != value
    a = match_requirement(priced, _decoded("PAYMENT-SIGNATURE", value), URL).identity
    b = match_requirement(priced, _decoded("PAYMENT-SIGNATURE", other), URL).identity
    assert a.key == b.key


def test_two_payments_from_one_payer_have_distinct_identities() -> None:
    priced = route()
    account = new_account()
    _, one = sdk_v2_payment(priced, account)
    _, two = sdk_v2_payment(priced, account)
    a = match_requirement(priced, _decoded("PAYMENT-SIGNATURE", one), URL).identity
    b = match_requirement(priced, _decoded("PAYMENT-SIGNATURE", two), URL).identity
    assert a.key != b.key
