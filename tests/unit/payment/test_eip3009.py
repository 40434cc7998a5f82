"""The pure EIP-3009 checks against signatures made by the SDK's client and by eth-account."""

from __future__ import annotations

import json
import os
import time
from typing import Any

import pytest
from eth_abi.abi import encode
from eth_account.messages import encode_typed_data
from eth_keys.datatypes import PrivateKey
from eth_utils.address import to_checksum_address
from hypothesis import given, settings
from hypothesis import strategies as st
from x402.mechanisms.evm.constants import (
    ERC6492_MAGIC_VALUE,
    ERR_AUTHORIZATION_VALUE_MISMATCH,
    ERR_FACTORY_NOT_ALLOWED,
    ERR_INVALID_SIGNATURE,
    ERR_RECIPIENT_MISMATCH,
    ERR_UNDEPLOYED_SMART_WALLET,
    ERR_VALID_AFTER_FUTURE,
    ERR_VALID_BEFORE_EXPIRED,
)
from x402.mechanisms.evm.eip712 import hash_eip3009_authorization
from x402.mechanisms.evm.types import ExactEIP3009Authorization

from gateway.payment import eip3009
from gateway.payment.eip3009 import Domain, Malformed, Sig
from tests.unit.facilitators.engine.helpers import (
    DOMAIN,
    PAY_TO,
    TOKEN,
    TYPES,
    account,
    eth_account_signed,
    requirements,
    sdk_signed,
    sdk_signed_v1,
)

_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
addresses = st.binary(min_size=20, max_size=20).map(lambda b: "0x" + b.hex())
uints = st.integers(min_value=0, max_value=2**256 - 1)


@settings(max_examples=60, deadline=None)
@given(
    addresses,
    addresses,
    uints,
    uints,
    uints,
    st.binary(min_size=32, max_size=32),
    st.text(max_size=20),
    st.text(max_size=5),
    st.integers(1, 2**64),
    addresses,
)
def test_digest_is_eth_accounts_and_the_sdks(
    payer: str,
    to: str,
    value: int,
    after: int,
    before: int,
    nonce: bytes,
    name: str,
    version: str,
    chain_id: int,
    token: str,
) -> None:
    domain = Domain(name, version, chain_id, token)
    auth = eip3009.Authorization(payer, to, value, after, before, nonce, b"")
    message = {
        "from": payer,
        "to": to,
        "value": value,
        "validAfter": after,
        "validBefore": before,
        "nonce": nonce,
    }
    full = {
        "types": {
            "EIP712Domain": [
                {"name": "name", "type": "string"},
                {"name": "version", "type": "string"},
                {"name": "chainId", "type": "uint256"},
                {"name": "verifyingContract", "type": "address"},
            ],
            **TYPES,
        },
        "primaryType": "TransferWithAuthorization",
        "domain": {
            "name": name,
            "version": version,
            "chainId": chain_id,
            "verifyingContract": token,
        },
        "message": message,
    }
    signable = encode_typed_data(full_message=full)
    from eth_utils.crypto import keccak

    by_eth_account = keccak(b"\x19" + signable.version + signable.header + signable.body)
    sdk_auth = ExactEIP3009Authorization(
        payer, to, str(value), str(after), str(before), "0x" + nonce.hex()
    )
    by_sdk = hash_eip3009_authorization(sdk_auth, chain_id, token, name, version)
    assert eip3009.digest(auth, domain) == by_eth_account == by_sdk


def test_struct_hash_is_the_abi_encoding_of_the_fields() -> None:
    auth = eip3009.Authorization("0x" + "11" * 20, "0x" + "22" * 20, 5, 6, 7, b"\x09" * 32, b"")
    from eth_utils.crypto import keccak

    expected = keccak(
        eip3009.TRANSFER_TYPEHASH
        + encode(
            ["address", "address", "uint256", "uint256", "uint256", "bytes32"],
            ["0x" + "11" * 20, "0x" + "22" * 20, 5, 6, 7, b"\x09" * 32],
        )
    )
    assert eip3009.struct_hash(auth) == expected


def test_sdk_client_payments_v2_and_v1_recover_to_their_payer() -> None:
    payer = account()
    for payment in (sdk_signed(payer), sdk_signed_v1(payer)):
        auth = eip3009.parse(payment.payload)
        assert auth.payer == payer.address.lower()
        assert eip3009.check_signature(auth, DOMAIN) is Sig.MATCH
        verdict = eip3009.inspect(
            payment.payload, DOMAIN, pay_to=PAY_TO, amount=1000, now=int(time.time())
        )
        assert (verdict.reason, verdict.sig) == (None, Sig.MATCH)


def test_eth_account_signatures_match_with_v_27_28_or_0_1() -> None:
    payer = account()
    payload = eth_account_signed(payer)
    auth = eip3009.parse(payload)
    assert eip3009.check_signature(auth, DOMAIN) is Sig.MATCH
    raw = bytearray(auth.signature)
    raw[64] -= 27  # yParity form, as some wallets send it
    zero_one = eip3009.Authorization(**{**_fields(auth), "signature": bytes(raw)})
    assert eip3009.check_signature(zero_one, DOMAIN) is Sig.MATCH


def _fields(auth: eip3009.Authorization) -> dict[str, Any]:
    return {k: getattr(auth, k) for k in auth.__slots__}  # type: ignore[attr-defined]


def test_forgeries_do_not_match() -> None:
    payer, thief = account(), account()
    # Signed by someone else, claiming to be from the payer.
    forged = eip3009.parse(eth_account_signed(thief, claimed_from=payer.address))
    assert eip3009.check_signature(forged, DOMAIN) is Sig.MISMATCH
    assert eip3009.signature_reason(Sig.MISMATCH, None) == ERR_INVALID_SIGNATURE
    genuine = eip3009.parse(eth_account_signed(payer))
    # Any signed field changed after signing.
    for change in (
        {"value": genuine.value + 1},
        {"to": "0x" + "33" * 20},
        {"valid_before": genuine.valid_before + 1},
        {"nonce": os.urandom(32)},
    ):
        tampered = eip3009.Authorization(**{**_fields(genuine), **change})
        assert eip3009.check_signature(tampered, DOMAIN) is Sig.MISMATCH
    # The same authorization under another token, chain, name or version.
    for other in (
        Domain("USD Coin", "2", 84532, "0x" + "44" * 20),
        Domain("USD Coin", "2", 8453, DOMAIN.token),
        Domain("USDC", "2", 84532, DOMAIN.token),
        Domain("USD Coin", "1", 84532, DOMAIN.token),
    ):
        assert eip3009.check_signature(genuine, other) is Sig.MISMATCH


def test_malleated_high_s_twin_is_refused_as_the_chain_would() -> None:
    genuine = eip3009.parse(eth_account_signed(account()))
    sig = genuine.signature
    s = int.from_bytes(sig[32:64], "big")
    v = 28 if sig[64] == 27 else 27
    twin = sig[:32] + (_N - s).to_bytes(32, "big") + bytes([v])
    # Mathematically the same signer, but FiatToken/OpenZeppelin refuse a high s.
    assert eip3009.recover(eip3009.digest(genuine, DOMAIN), twin) is None
    malleated = eip3009.Authorization(**{**_fields(genuine), "signature": twin})
    assert eip3009.check_signature(malleated, DOMAIN) is Sig.MISMATCH


@pytest.mark.parametrize("sig", [b"\x00" * 65, b"\x01" * 64 + b"\x1d", b"\xff" * 65])
def test_garbage_65_bytes_never_match(sig: bytes) -> None:
    auth = eip3009.parse(eth_account_signed(account()))
    assert (
        eip3009.check_signature(
            eip3009.Authorization(**{**_fields(auth), "signature": sig}), DOMAIN
        )
        is Sig.MISMATCH
    )


def test_contract_wallet_signatures_are_left_to_the_chain() -> None:
    auth = eip3009.parse(eth_account_signed(account()))
    long_sig = eip3009.Authorization(**{**_fields(auth), "signature": b"\x01" * 130})
    assert eip3009.check_signature(long_sig, DOMAIN) is Sig.CONTRACT
    # Counterfactual (ERC-6492 with a factory to call): the engine deploys no wallets.
    wrapper = encode(["address", "bytes", "bytes"], ["0x" + "55" * 20, b"\x01\x02", auth.signature])
    wrapped = eip3009.Authorization(**{**_fields(auth), "signature": wrapper + ERC6492_MAGIC_VALUE})
    assert eip3009.check_signature(wrapped, DOMAIN) is Sig.COUNTERFACTUAL
    assert eip3009.signature_reason(Sig.COUNTERFACTUAL, False) == ERR_FACTORY_NOT_ALLOWED
    assert eip3009.signature_reason(Sig.CONTRACT, False) == ERR_UNDEPLOYED_SMART_WALLET
    # A payer with code is judged by EIP-1271 on chain, whatever the signature looks like.
    for sig in Sig:
        assert eip3009.signature_reason(sig, True) is None
    # A broken ERC-6492 wrapper is a bad signature, not an exception.
    broken = eip3009.Authorization(**{**_fields(auth), "signature": b"\x07" + ERC6492_MAGIC_VALUE})
    assert eip3009.check_signature(broken, DOMAIN) is Sig.MISMATCH


def test_terms() -> None:
    now = 1_800_000_000
    auth = eip3009.parse(eth_account_signed(account(), valid_after=now - 10, valid_before=now + 60))
    ok: dict[str, Any] = {"pay_to": PAY_TO.lower(), "amount": 1000, "now": now}
    assert eip3009.terms_reason(auth, **ok) is None
    assert (
        eip3009.terms_reason(auth, **{**ok, "pay_to": PAY_TO.upper().replace("0X", "0x")}) is None
    )
    assert eip3009.terms_reason(auth, **{**ok, "pay_to": TOKEN}) == ERR_RECIPIENT_MISMATCH
    assert eip3009.terms_reason(auth, **{**ok, "amount": 999}) == ERR_AUTHORIZATION_VALUE_MISMATCH
    assert eip3009.terms_reason(auth, **{**ok, "amount": 1001}) == ERR_AUTHORIZATION_VALUE_MISMATCH
    # The SDK's margins: validBefore at least 6 s ahead, validAfter not in the future.
    assert eip3009.terms_reason(auth, **{**ok, "now": now + 54}) is None
    assert eip3009.terms_reason(auth, **{**ok, "now": now + 55}) == ERR_VALID_BEFORE_EXPIRED
    assert eip3009.terms_reason(auth, **{**ok, "now": now - 11}) == ERR_VALID_AFTER_FUTURE


GOOD = {
    "from": "0x" + "11" * 20,
    "to": "0x" + "22" * 20,
    "value": "1000",
    "validAfter": "0",
    "validBefore": "1900000000",
    "nonce": "0x" + "ab" * 32,
}


@pytest.mark.parametrize(
    "payload",
    [
        None,
        [],
        "x",
        {},
        {"signature": "0x00"},
        {"authorization": "x", "signature": "0x00"},
        {"authorization": GOOD},
        {"authorization": GOOD, "signature": "0x"},
        {"authorization": GOOD, "signature": "0x123"},
        {"authorization": GOOD, "signature": "00" * 65},
        {"authorization": GOOD, "signature": "0x" + "00" * (eip3009.MAX_SIGNATURE + 1)},
        {"authorization": {**GOOD, "nonce": "0x" + "ab" * 31}, "signature": "0x00"},
        {"authorization": {**GOOD, "nonce": 5}, "signature": "0x00"},
        {"authorization": {**GOOD, "value": "-1"}, "signature": "0x00"},
        {"authorization": {**GOOD, "value": "1e3"}, "signature": "0x00"},
        {"authorization": {**GOOD, "value": True}, "signature": "0x00"},
        {"authorization": {**GOOD, "value": 1.5}, "signature": "0x00"},
        {"authorization": {**GOOD, "value": str(2**256)}, "signature": "0x00"},
        {"authorization": {**GOOD, "value": -1}, "signature": "0x00"},
        {"authorization": {**GOOD, "from": "0x1234"}, "signature": "0x00"},
        {"authorization": {**GOOD, "to": None}, "signature": "0x00"},
        {
            "authorization": {k: v for k, v in GOOD.items() if k != "validAfter"},
            "signature": "0x00",
        },
    ],
)
def test_malformed_payloads_raise_malformed_only(payload: Any) -> None:
    with pytest.raises(Malformed):
        eip3009.parse(payload)
    verdict = eip3009.inspect(payload, DOMAIN, pay_to=PAY_TO, amount=1000, now=0)
    assert (verdict.auth, verdict.reason) == (None, eip3009.ERR_INVALID_PAYLOAD)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=70),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=6)
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(st.sampled_from(["authorization", "signature", "x"]), json_values)
    | st.builds(
        lambda auth, sig: {"authorization": auth, "signature": sig},
        st.fixed_dictionaries({}, optional={k: json_values | st.just(v) for k, v in GOOD.items()}),
        json_values | st.just("0x" + "11" * 65),
    )
)
def test_any_json_is_a_clean_verdict(payload: Any) -> None:
    json.dumps(payload)  # only what a wire could carry
    verdict = eip3009.inspect(payload, DOMAIN, pay_to=PAY_TO, amount=1000, now=int(time.time()))
    assert verdict.reason is not None or verdict.sig is Sig.MATCH


def test_local_verdict_on_an_sdk_payment_with_other_terms() -> None:
    payer = account()
    payment = sdk_signed(payer, requirements(amount=999))
    verdict = eip3009.inspect(
        payment.payload, DOMAIN, pay_to=PAY_TO, amount=1000, now=int(time.time())
    )
    assert verdict.reason == ERR_AUTHORIZATION_VALUE_MISMATCH


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=20, max_size=20))
def test_checksummed_is_eth_utils_eip55(raw: bytes) -> None:
    """The payer's EIP-55 form (the `X-Payer` header, receipts, logs) is eth-utils' exactly."""
    lower = "0x" + raw.hex()
    assert eip3009.checksummed(lower) == to_checksum_address(lower)


def test_checksummed_known_vectors() -> None:
    # EIP-55's own examples
    for address in (
        "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed",
        "0xfB6916095ca1df60bB79Ce92cE3Ea74c37c5d359",
        "0xdbF03B407c01E7cD3CBea99509d93f8DDDC8C6FB",
        "0xD1220A0cf47c7B9Be7A2E6BA89F429762e7b9aDb",
    ):
        assert eip3009.checksummed(address.lower()) == address


@settings(max_examples=100, deadline=None)
@given(st.integers(min_value=1, max_value=2**255))
def test_address_of_is_eth_keys_cold_and_warm(secret: int) -> None:
    """`address_of` is memoized: a key's address is eth-keys' own, asked once or twice,
    and a kept address never answers for another key."""
    key = PrivateKey(secret.to_bytes(32, "big"))
    public = key.public_key.to_bytes()
    other = PrivateKey((secret + 1).to_bytes(32, "big")).public_key
    for _ in range(2):
        assert eip3009.address_of(public) == key.public_key.to_address().lower()
        assert eip3009.address_of(other.to_bytes()) == other.to_address().lower()
