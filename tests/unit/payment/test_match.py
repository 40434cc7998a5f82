from __future__ import annotations

import time
from types import MappingProxyType
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from x402.mechanisms.evm.constants import X402_UPTO_PERMIT2_PROXY_ADDRESS
from x402.schemas import PaymentPayload, PaymentRequirements
from x402.schemas.v1 import PaymentPayloadV1, PaymentRequirementsV1

from gateway.config.settings import RouteSettings
from gateway.errors import MalformedPayment, PaymentError
from gateway.payment.decode import DecodedPayment
from gateway.payment.match import (
    CLAIM_MAX,
    MatchedPayment,
    PaymentIdentity,
    _contains,
    claim_ttl,
    match_requirement,
)
from gateway.payment.requirements import requirements_v1, requirements_v2, thaw
from tests.unit.wire_helpers import (
    ASSET,
    NONCE,
    OTHER_ASSET,
    OTHER_PAY_TO,
    PAY_TO,
    PAYER,
    SIGNATURE,
    URL,
    accepted,
    eip3009,
    requirement,
    route,
    v1_dict,
    v2_dict,
)

PROXY = "0x402085c248EeA27D92E8b30b2C58ed07f9E20001"  # the SDK's x402ExactPermit2Proxy
PERMIT2_EXTRA = MappingProxyType({"name": "USDC", "version": "2", "assetTransferMethod": "permit2"})


def v2(data: dict[str, Any]) -> DecodedPayment:
    return DecodedPayment(2, PaymentPayload.model_validate(data), "PAYMENT-SIGNATURE")


def v1(data: dict[str, Any]) -> DecodedPayment:
    return DecodedPayment(1, PaymentPayloadV1.model_validate(data), "X-PAYMENT")


def refused(priced: RouteSettings, payment: DecodedPayment) -> PaymentError:
    with pytest.raises(PaymentError) as caught:
        match_requirement(priced, payment, URL)
    return caught.value


def permit2(**changes: Any) -> dict[str, Any]:
    auth: dict[str, Any] = {
        "from": PAYER,
        "permitted": {"token": ASSET, "amount": "1000"},
        "spender": PROXY,
        "nonce": "123456789",
        "deadline": str(int(time.time()) + 300),
        "witness": {"to": PAY_TO, "validAfter": "0"},
    }
    for key, value in changes.items():
        if key in ("token", "amount"):
            auth["permitted"][key] = value
        elif key == "to":
            auth["witness"]["to"] = value
        else:
            auth[key] = value
    return {"permit2Authorization": auth, "signature": SIGNATURE}


# --- v2 --------------------------------------------------------------------------------


def test_v2_match_hands_on_the_routes_own_requirements() -> None:
    priced = route()
    data = v2_dict()
    matched = match_requirement(priced, v2(data), URL)
    assert matched == MatchedPayment(
        version=2,
        payload=PaymentPayload.model_validate(data),
        requirements=requirements_v2(priced)[0],
        requirement=priced.accepts[0],
        identity=PaymentIdentity(84532, ASSET.lower(), PAYER.lower(), NONCE),
        payer=PAYER,
        valid_before=int(data["payload"]["authorization"]["validBefore"]),
    )


def test_v2_echo_may_differ_in_address_case_amount_spelling_and_extra_keys() -> None:
    data = v2_dict(
        asset=ASSET.lower(),
        payTo=PAY_TO.upper().replace("0X", "0x"),
        amount="0001000",
        extra={"name": "USDC", "version": "2", "clientNote": "hi"},
    )
    matched = match_requirement(route(), v2(data), URL)
    assert isinstance(matched.requirements, PaymentRequirements)
    assert matched.requirements.asset == ASSET  # ours, checksummed: not the echo
    assert matched.requirements.pay_to == PAY_TO
    assert matched.requirements.amount == "1000"
    assert matched.requirements.extra == {"name": "USDC", "version": "2"}


def test_v2_picks_the_requirement_the_payment_is_for() -> None:
    usdc, other = requirement(), requirement(asset=OTHER_ASSET, amount=2000, pay_to=OTHER_PAY_TO)
    data = v2_dict(eip3009(to=OTHER_PAY_TO, value="2000"), **accepted(other))
    matched = match_requirement(route(usdc, other), v2(data), URL)
    assert matched.requirement is other
    assert matched.identity.asset == OTHER_ASSET.lower()


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"network": "eip155:8453"}, "network"),
        ({"asset": OTHER_ASSET}, "asset"),
        ({"asset": "USDC"}, "asset"),
        ({"payTo": OTHER_PAY_TO}, "pay_to"),
        ({"amount": "999"}, "amount"),
        ({"amount": "1e3"}, "amount"),
        ({"amount": "-1000"}, "amount"),
        ({"maxTimeoutSeconds": 3600}, "max_timeout_seconds"),
        ({"extra": {"name": "Fake Coin", "version": "2"}}, "extra"),
        ({"extra": {"name": "USDC", "version": 2}}, "extra"),
        ({"extra": {"name": "USDC"}}, "extra"),
        ({"extra": {}}, "extra"),
    ],
)
def test_v2_mismatch_names_what_differs(changes: dict[str, Any], field: str) -> None:
    error = refused(route(), v2(v2_dict(**changes)))
    assert error.status == 402
    assert error.reason == "payment_requirements_mismatch"
    assert f"({field} differ)" in error.detail


def test_v2_mismatch_reports_the_closest_requirement() -> None:
    priced = route(requirement(network="eip155:8453"), requirement())
    error = refused(priced, v2(v2_dict(amount="5")))
    assert "(amount differ)" in error.detail


def test_v2_unknown_scheme_is_unsupported() -> None:
    error = refused(route(), v2(v2_dict(scheme="upto")))
    assert error.reason == "unsupported_scheme"


def test_v2_a_scheme_the_gateway_cannot_check_is_unsupported() -> None:
    # batch-settlement is checked (tests/unit/payment/test_channel_terms.py): an exact-shaped
    # payload on it is not a channel payment at all
    priced = route(requirement(scheme="batch-settlement"))
    data = v2_dict(scheme="batch-settlement")
    assert refused(priced, v2(data)).reason == "invalid_batch_settlement_evm_payload_type"
    # upto is Permit2 only: an upto requirement without it is never matched
    assert refused(route(requirement(scheme="upto")), v2(v2_dict(scheme="upto"))).reason == (
        "unsupported_scheme"
    )


UPTO_EXTRA = MappingProxyType({"assetTransferMethod": "permit2"})


def _upto_payment(**changes: Any) -> DecodedPayment:
    data = permit2(**{"spender": X402_UPTO_PERMIT2_PROXY_ADDRESS, **changes})
    data["permit2Authorization"]["witness"]["facilitator"] = PAY_TO
    extra = {**UPTO_EXTRA, "facilitatorAddress": PAY_TO}
    return v2(v2_dict(data, scheme="upto", extra=extra))


def test_upto_matches_the_maximum_through_the_upto_proxy() -> None:
    priced = route(requirement(scheme="upto", extra=UPTO_EXTRA))
    matched = match_requirement(priced, _upto_payment(), URL)
    assert matched.requirement.scheme == "upto"
    assert matched.identity.nonce == "0x" + f"{123456789:064x}"
    assert refused(priced, _upto_payment(spender=PROXY)).reason == "invalid_permit2_spender"
    assert refused(priced, _upto_payment(amount="999")).reason == "permit2_amount_mismatch"


def test_a_free_route_takes_no_payment() -> None:
    assert refused(route(accepts=()), v2(v2_dict())).reason == "payment_requirements_mismatch"


def test_v2_authorization_must_pay_our_recipient() -> None:
    error = refused(route(), v2(v2_dict(eip3009(to=OTHER_PAY_TO))))
    assert error.reason == "invalid_exact_evm_payload_recipient_mismatch"


@pytest.mark.parametrize("value", ["999", "1001", "0", "01001"])
def test_v2_authorization_must_pay_exactly_the_price(value: str) -> None:
    error = refused(route(), v2(v2_dict(eip3009(value=value))))
    assert error.reason == "invalid_exact_evm_payload_authorization_value_mismatch"


def test_v2_malformed_authorization_is_a_bad_request() -> None:
    with pytest.raises(MalformedPayment) as caught:
        match_requirement(route(), v2(v2_dict(eip3009(nonce="0x1234"))), URL)
    assert caught.value.status == 400
    assert "payload.authorization.nonce" in caught.value.detail


def test_v2_permit2_payload_for_an_eip3009_requirement_is_unsupported() -> None:
    assert refused(route(), v2(v2_dict(permit2()))).reason == "unsupported_payload"


# --- Permit2 -----------------------------------------------------------------------------


def _permit2_route() -> RouteSettings:
    return route(requirement(extra=PERMIT2_EXTRA))


def _permit2_payment(**changes: Any) -> DecodedPayment:
    return v2(v2_dict(permit2(**changes), extra=dict(PERMIT2_EXTRA)))


def test_permit2_match_names_the_permit_nonce() -> None:
    matched = match_requirement(_permit2_route(), _permit2_payment(), URL)
    assert matched.identity.nonce == "0x" + f"{123456789:064x}"
    assert matched.payer == PAYER
    assert isinstance(matched.requirements, PaymentRequirements)
    assert matched.requirements.extra["assetTransferMethod"] == "permit2"


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"to": OTHER_PAY_TO}, "invalid_permit2_recipient_mismatch"),
        ({"amount": "1001"}, "permit2_amount_mismatch"),
        ({"token": OTHER_ASSET}, "permit2_token_mismatch"),
        ({"spender": OTHER_PAY_TO}, "invalid_permit2_spender"),
    ],
)
def test_permit2_terms_must_pay_the_route(changes: dict[str, Any], reason: str) -> None:
    assert refused(_permit2_route(), _permit2_payment(**changes)).reason == reason


def test_permit2_requirement_refuses_an_eip3009_payload() -> None:
    data = v2_dict(eip3009(), extra=dict(PERMIT2_EXTRA))
    assert refused(_permit2_route(), v2(data)).reason == "unsupported_payload"


def test_permit2_requirement_requires_the_echoed_transfer_method() -> None:
    error = refused(_permit2_route(), v2(v2_dict(permit2())))
    assert error.reason == "payment_requirements_mismatch"
    assert "(extra differ)" in error.detail


# --- v1 ----------------------------------------------------------------------------------


def test_v1_match_builds_v1_requirements_from_the_route() -> None:
    priced = route(requirement(network="eip155:31337"), requirement())
    matched = match_requirement(priced, v1(v1_dict()), URL)
    assert matched.version == 1
    assert matched.requirement is priced.accepts[1]
    assert matched.requirements == requirements_v1(priced, URL)[0]
    assert isinstance(matched.requirements, PaymentRequirementsV1)
    assert matched.requirements.resource == URL
    assert matched.identity.key == f"x402:claim:84532:{ASSET.lower()}:{PAYER.lower()}:{NONCE}"


def test_v1_picks_the_requirement_by_recipient_and_amount() -> None:
    cheap, dear = requirement(), requirement(asset=OTHER_ASSET, amount=5000)
    matched = match_requirement(route(cheap, dear), v1(v1_dict(eip3009(value="5000"))), URL)
    assert matched.requirement is dear


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (v1_dict(network="base"), "payment_requirements_mismatch"),
        (v1_dict(network="eip155:84532"), "payment_requirements_mismatch"),
        ({**v1_dict(), "scheme": "upto"}, "unsupported_scheme"),
        (v1_dict(eip3009(to=OTHER_PAY_TO)), "invalid_exact_evm_payload_recipient_mismatch"),
        (v1_dict(eip3009(value="10")), "invalid_exact_evm_payload_authorization_value_mismatch"),
        (v1_dict(permit2()), "unsupported_payload"),
    ],
)
def test_v1_refusals(data: dict[str, Any], reason: str) -> None:
    assert refused(route(), v1(data)).reason == reason


def test_v1_cannot_pay_a_permit2_requirement() -> None:
    error = refused(_permit2_route(), v1(v1_dict()))
    assert error.reason == "payment_requirements_mismatch"


# --- identity and claim time --------------------------------------------------------------


def test_identity_is_case_insensitive() -> None:
    upper = eip3009(nonce="0x" + "AB" * 32, **{"from": "0x" + PAYER[2:].upper()})
    lower = eip3009(nonce=NONCE, **{"from": PAYER.lower()})
    a = match_requirement(route(), v2(v2_dict(upper)), URL).identity
    b = match_requirement(route(), v2(v2_dict(lower)), URL).identity
    assert a == b
    assert a.key == f"x402:claim:84532:{ASSET.lower()}:{PAYER.lower()}:{NONCE}"


def test_identity_ignores_the_signature() -> None:
    one = v2_dict({**eip3009(), "signature": "0x" + "22" * 66})
    two = v2_dict({**eip3009(), "signature": "0x" + "33" * 97})
    assert (
        match_requirement(route(), v2(one), URL).identity
        == match_requirement(route(), v2(two), URL).identity
    )


def test_identity_is_the_same_for_v1_and_v2_of_one_authorization() -> None:
    a = match_requirement(route(), v2(v2_dict()), URL).identity
    b = match_requirement(route(), v1(v1_dict()), URL).identity
    assert a.key == b.key


def _matched(valid_before: int) -> MatchedPayment:
    data = v2_dict(eip3009(validBefore=str(valid_before)))
    return match_requirement(route(), v2(data), URL)


@pytest.mark.parametrize(
    ("valid_before", "ttl"),
    [(1_000_300, 360.0), (1_000_000, 60.0), (10, 60.0), (2**255, CLAIM_MAX), (1_000_010, 70.0)],
)
def test_claim_ttl(valid_before: int, ttl: float) -> None:
    assert claim_ttl(_matched(valid_before), 1_000_000.0) == ttl


# --- fuzzing: a schema-valid payment with any scheme payload is matched or refused -------

_leaf = st.none() | st.booleans() | st.integers() | st.text(max_size=70)
_json = st.recursive(
    _leaf,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=20,
)
_field = st.sampled_from(
    ["from", "to", "value", "validAfter", "validBefore", "nonce", "permitted", "witness"]
)


@settings(max_examples=300, deadline=None)
@given(
    auth=st.dictionaries(_field, _json | st.sampled_from([PAYER, PAY_TO, "1000", NONCE])),
    signature=_json,
    shape=st.sampled_from(["authorization", "permit2Authorization"]),
    extra=st.sampled_from([dict(PERMIT2_EXTRA), {"name": "USDC", "version": "2"}]),
    version=st.sampled_from([1, 2]),
)
def test_fuzz_scheme_payloads(
    auth: dict[str, Any], signature: Any, shape: str, extra: dict[str, Any], version: int
) -> None:
    payload = {shape: auth, "signature": signature}
    payment = v2(v2_dict(payload, extra=extra)) if version == 2 else v1(v1_dict(payload))
    for priced in (route(), _permit2_route()):
        try:
            match_requirement(priced, payment, URL)
        except PaymentError as exc:
            assert exc.status in (400, 402)


FROZEN_EXTRA = MappingProxyType(
    {
        "name": "USDC",
        "version": "2",
        "withdrawDelay": 3600,
        "nested": MappingProxyType({"a": (1, 2), "b": MappingProxyType({"c": "d"})}),
        "list": ("x", MappingProxyType({"y": 1})),
    }
)
_THAWED = thaw(FROZEN_EXTRA)


@pytest.mark.parametrize(
    "theirs",
    [
        _THAWED,
        {**_THAWED, "clientNote": "hi"},  # theirs may add keys, at any depth
        {**_THAWED, "nested": {**_THAWED["nested"], "more": 1}},
        {**_THAWED, "withdrawDelay": "3600"},  # same value, other type
        {**_THAWED, "withdrawDelay": 3600.0},
        {**_THAWED, "list": ["x", {"y": 1, "z": 2}]},  # a list compares whole
        {**_THAWED, "list": ("x", {"y": 1})},  # a tuple is not the wire's list
        {**_THAWED, "nested": {"a": [1, 2]}},
        {k: v for k, v in _THAWED.items() if k != "name"},
        {**_THAWED, "nested": "flat"},
        [],
        None,
    ],
)
def test_extra_compared_frozen_as_its_wire_form(theirs: Any) -> None:
    # `_contains` reads the settings' frozen `extra` as `thaw` would write it: held to the
    # comparison of the thawed form it replaces (per payment, without building that form).
    def reference(ours: Any, theirs: Any) -> bool:
        if isinstance(ours, dict):
            return isinstance(theirs, dict) and all(
                k in theirs and reference(v, theirs[k]) for k, v in ours.items()
            )
        return bool(ours == theirs and type(ours) is type(theirs))

    assert _contains(FROZEN_EXTRA, theirs) == reference(_THAWED, theirs)
