"""The gateway's local signature check (`match.local_signature_reason`, on the shared
`gateway.payment.eip3009`), against signatures the SDK's own client makes."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from x402.http.utils import encode_payment_signature_header
from x402.mechanisms.evm.constants import ERR_INVALID_SIGNATURE

from gateway.errors import PaymentError
from gateway.facilitators.local_verify import LocalVerify
from gateway.payment import decode_payment, eip3009, match_requirement
from gateway.payment.eip3009 import Domain, Sig, SignatureChecks, recover
from gateway.payment.match import domain_of, local_signature_reason
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

PRICED = route()
CHAIN = 84532
DOMAIN = domain_of(requirement(), CHAIN)
N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141


def signature_reason(payload: dict[str, Any], domain: Domain | None) -> str | None:
    """The gateway's verdict for a route whose requirement names `domain` (None: none)."""
    if domain is None:
        return local_signature_reason(requirement(extra={}), CHAIN, payload)
    extra = {"name": domain.name, "version": domain.version}
    req = requirement(asset=domain.token, extra=extra)
    return local_signature_reason(req, domain.chain_id, payload)


def signed() -> dict[str, Any]:
    payload, _ = sdk_v2_payment(PRICED, new_account())
    return copy.deepcopy(payload.payload)


def with_signature(payload: dict[str, Any], signature: bytes) -> dict[str, Any]:
    return {**payload, "signature": "0x" + signature.hex()}


def test_the_sdks_signature_is_the_payers() -> None:
    assert signature_reason(signed(), DOMAIN) is None


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("from", "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"),
        ("to", "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"),
        ("value", "999"),
        ("validAfter", "1"),
        ("validBefore", "1"),
        ("nonce", "0x" + "77" * 32),
    ],
)
def test_any_signed_field_changed_is_refused(field: str, value: str) -> None:
    payload = signed()
    payload["authorization"][field] = value
    assert signature_reason(payload, DOMAIN) == ERR_INVALID_SIGNATURE


@pytest.mark.parametrize(
    "domain",
    [
        Domain("USD Coin", "2", CHAIN, ASSET.lower()),
        Domain("USDC", "1", CHAIN, ASSET.lower()),
        Domain("USDC", "2", 8453, ASSET.lower()),
        Domain("USDC", "2", CHAIN, "0x5fbdb2315678afecb367f032d93f642f64180aa3"),
    ],
)
def test_a_signature_under_another_domain_is_refused(domain: Domain) -> None:
    assert signature_reason(signed(), domain) == ERR_INVALID_SIGNATURE


def test_v_as_0_or_1_is_accepted_and_high_s_is_refused() -> None:
    payload = signed()
    sig = bytes.fromhex(payload["signature"][2:])
    low_v = sig[:64] + bytes([sig[64] - 27])
    assert signature_reason(with_signature(payload, low_v), DOMAIN) is None
    s = int.from_bytes(sig[32:64], "big")
    flipped = sig[:32] + (N - s).to_bytes(32, "big") + bytes([55 - sig[64]])
    # The same point: ecrecover would accept it, the token (low-s rule) would not.
    assert signature_reason(with_signature(payload, flipped), DOMAIN) == ERR_INVALID_SIGNATURE
    assert recover(b"\x00" * 32, bytes(65)) is None


def test_what_only_the_chain_can_judge_is_passed_on() -> None:
    payload = signed()
    smart_wallet = with_signature(payload, b"\x11" * 66)  # ERC-1271 / ERC-6492 shapes
    assert signature_reason(smart_wallet, DOMAIN) is None
    assert signature_reason(payload, None) is None
    assert domain_of(requirement(extra={}), CHAIN) is None


@pytest.mark.parametrize("sdk", [sdk_v2_payment, sdk_v1_payment])
def test_match_refuses_a_forged_signature_before_any_claim(sdk: Any) -> None:
    payload, _ = sdk(PRICED, new_account())
    good = payload.model_dump(by_alias=True)
    forged = copy.deepcopy(good)
    forged["payload"]["signature"] = signed()["signature"]  # another payer's signature
    for data, ok in ((good, True), (forged, False)):
        model = type(payload).model_validate(data)
        name = "PAYMENT-SIGNATURE" if sdk is sdk_v2_payment else "X-PAYMENT"
        decoded = decode_payment(headers((name, encode_payment_signature_header(model))), 16384)
        assert decoded is not None
        if ok:
            assert match_requirement(PRICED, decoded, URL).payer
        else:
            with pytest.raises(PaymentError) as err:
                match_requirement(PRICED, decoded, URL)
            assert err.value.reason == ERR_INVALID_SIGNATURE


# --- `verify: local`: the matcher and LocalVerify share one recovery ---------------------


class _Unreachable:
    """A facilitator `verify: local` must not need for a payment it can judge."""

    async def verify(self, payload: Any, requirements: Any) -> Any:
        raise AssertionError("the facilitator was asked")


def _counting_recoveries(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    seen: list[bytes] = []

    def counted(message_hash: bytes, signature: bytes) -> str | None:
        seen.append(signature)
        return recover(message_hash, signature)

    monkeypatch.setattr(eip3009, "recover", counted)
    return seen


async def test_matcher_and_local_verify_recover_a_signature_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    recoveries = _counting_recoveries(monkeypatch)
    checks = SignatureChecks()
    verifier = LocalVerify(_Unreachable(), signatures=checks)  # type: ignore[arg-type]
    for _ in range(2):  # two payments: each recovered once, not twice, and never mixed up
        _, value = sdk_v2_payment(PRICED, new_account())
        decoded = decode_payment(headers(("PAYMENT-SIGNATURE", value)), 16384)
        assert decoded is not None
        matched = match_requirement(PRICED, decoded, URL, None, checks)
        verdict = await verifier.verify(matched.payload, matched.requirements)
        assert verdict.is_valid and verdict.payer == matched.payer
    assert len(recoveries) == 2 and recoveries[0] != recoveries[1]


def test_shared_verdicts_are_the_checks_own(monkeypatch: pytest.MonkeyPatch) -> None:
    """Kept by the whole (authorization, domain): a tampered twin is judged afresh, and a
    kept verdict is the one a fresh check gives; the keeping is bounded."""
    recoveries = _counting_recoveries(monkeypatch)
    checks = SignatureChecks(size=2)
    good = eip3009.parse(signed())
    forged = eip3009.parse({**signed(), "signature": "0x" + good.signature.hex()})
    assert DOMAIN is not None
    assert checks.check(good, DOMAIN) is Sig.MATCH
    assert checks.check(good, DOMAIN) is Sig.MATCH and len(recoveries) == 1
    assert checks.check(forged, DOMAIN) is Sig.MISMATCH and len(recoveries) == 2
    other = Domain("Other Coin", "2", CHAIN, ASSET.lower())
    assert checks.check(good, other) is Sig.MISMATCH and len(recoveries) == 3
    assert checks.check(good, DOMAIN) is Sig.MATCH and len(recoveries) == 4  # evicted (size 2)
