"""gateway.payment.siwx_proof: what `Wallets` keeps per address (EIP-55 answers, public keys)
and the verify path a known wallet's proofs take (the recovery path is held to the SDK's
check in test_sessions.py)."""

from __future__ import annotations

import os
import re

import pytest
from coincurve import PublicKey
from coincurve.ecdsa import cdata_to_der, deserialize_compact, signature_normalize
from eth_account import Account
from eth_account.messages import encode_defunct
from eth_utils.address import to_checksum_address
from hypothesis import example, given, settings
from hypothesis import strategies as st
from x402.extensions.sign_in_with_x import SIWxPayload, encode_siwx_header

from gateway.config import loads
from gateway.errors import SignInRefused
from gateway.payment.sessions import Sessions
from gateway.payment.siwx_proof import (
    PlainProof,
    Wallets,
    _der_signature,
    _plain,
    eip4361_message,
    fast_eoa_check,
    is_checksummed,
    signer_of,
)
from gateway.store.sessions import MemorySessions
from tests.unit.payment.test_sessions import CONFIG, REPORTS, signed

ORDER = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141


def test_kept_answers_are_the_checks_answers() -> None:
    wallets = Wallets(maxsize=8)
    good = to_checksum_address(os.urandom(20))
    bad = good[:2] + good[2:].swapcase() if good[2:].lower() != good[2:] else good
    for address in (good, good.lower(), bad, "0x1234", "not an address", good):
        assert wallets.checksummed(address) == is_checksummed(address)
        assert wallets.checksummed(address) == is_checksummed(address)  # the kept answer


def test_what_is_kept_is_bounded() -> None:
    wallets = Wallets(maxsize=16)
    for _ in range(100):
        wallets.checksummed(to_checksum_address(os.urandom(20)))
    assert len(wallets) == 16


@pytest.fixture
def sessions() -> Sessions:
    return Sessions(loads(CONFIG), MemorySessions())


def twin(payload: SIWxPayload) -> SIWxPayload:
    """The same signature with s as n - s and the other recovery id (ECDSA malleability):
    a recovery gives the same key for it."""
    raw = bytes.fromhex(payload.signature.removeprefix("0x"))
    s = ORDER - int.from_bytes(raw[32:64], "big")
    v = 27 + (1 - (raw[64] - 27))
    return payload.model_copy(
        update={"signature": "0x" + (raw[:32] + s.to_bytes(32, "big") + bytes([v])).hex()}
    )


async def test_a_known_wallet_is_verified_against_its_kept_key(sessions: Sessions) -> None:
    payer, other = Account.create(), Account.create()
    wallets = Wallets()
    first = await signed(sessions, payer)
    assert wallets.key(payer.address) is None
    assert signer_of(first, wallets) == payer.address
    kept = wallets.key(payer.address)
    assert kept is not None and kept.format() == PublicKey.from_secret(payer.key).format()
    # The next proofs take the verify path, and give the recovery's answers.
    second = await signed(sessions, payer)
    forged = (await signed(sessions, other)).model_copy(update={"address": payer.address})
    altered = second.model_copy(update={"nonce": "0" * 16})
    for proof in (second, twin(second), forged, altered):
        expected = fast_eoa_check(proof)
        if expected:
            assert signer_of(proof, wallets) == payer.address
        else:
            with pytest.raises(SignInRefused) as refused:
                signer_of(proof, wallets)
            assert refused.value.reason == "invalid_siwx_signature"
    assert [fast_eoa_check(p) for p in (second, twin(second), forged, altered)] == [
        True,
        True,
        False,
        False,
    ]
    assert wallets.key(payer.address) is kept


async def test_a_forged_proof_never_teaches_a_key(sessions: Sessions) -> None:
    payer, other = Account.create(), Account.create()
    wallets = Wallets()
    forged = (await signed(sessions, other)).model_copy(update={"address": payer.address})
    with pytest.raises(SignInRefused):
        signer_of(forged, wallets)
    assert wallets.key(payer.address) is None
    assert wallets.key(other.address) is None


async def test_out_of_range_signatures_are_refused_by_the_verify_path(sessions: Sessions) -> None:
    payer = Account.create()
    wallets = Wallets()
    signer_of(await signed(sessions, payer), wallets)
    proof = await signed(sessions, payer)
    raw = bytes.fromhex(proof.signature.removeprefix("0x"))
    for r, s in ((0, 1), (1, 0), (ORDER, 1), (1, ORDER)):
        bad = "0x" + (r.to_bytes(32, "big") + s.to_bytes(32, "big") + raw[64:]).hex()
        with pytest.raises(SignInRefused):
            signer_of(proof.model_copy(update={"signature": bad}), wallets)


def test_the_der_signature_is_libsecp256k1s_own_low_s_der() -> None:
    """The verify path's DER, made on bytes, against libsecp256k1's parse, low-s
    normalization and DER serialization of the same r || s."""
    edges = [1, 2, 0x7F, 0x80, 0xFF, 2**255 - 1, 2**255, ORDER // 2, ORDER // 2 + 1, ORDER - 1]
    values = edges + [int.from_bytes(os.urandom(32), "big") % (ORDER - 1) + 1 for _ in range(200)]
    values += [int.from_bytes(os.urandom(n), "big") or 1 for n in (1, 2, 15, 31) for _ in range(5)]
    for r, s in [*zip(values, reversed(values), strict=True), *((v, v) for v in edges)]:
        raw = r.to_bytes(32, "big") + s.to_bytes(32, "big")
        _changed, low = signature_normalize(deserialize_compact(raw))
        assert _der_signature(raw + b"\x1b") == cdata_to_der(low), (hex(r), hex(s))
    for r, s in ((0, 1), (1, 0), (ORDER, 1), (1, ORDER), (2**256 - 1, 1), (1, 2**256 - 1)):
        assert _der_signature(r.to_bytes(32, "big") + s.to_bytes(32, "big") + b"\x1b") is None


async def test_a_sessions_object_keeps_the_wallets_it_checked() -> None:
    wallets = Wallets()
    sessions = Sessions(loads(CONFIG), MemorySessions(), wallets)
    account = Account.create()
    await sessions.paid(REPORTS, account.address)
    for _ in range(3):
        header = encode_siwx_header(await signed(sessions, account))
        assert await sessions.sign_in(REPORTS, "/reports/a", header) == account.address
    assert len(wallets) == 1 and wallets.key(account.address) is not None


async def test_a_known_wallet_in_another_spelling_is_still_refused(sessions: Sessions) -> None:
    # A kept key spares its address the EIP-55 check; any other spelling is checked.
    payer = Account.create()
    wallets = Wallets()
    assert signer_of(await signed(sessions, payer), wallets) == payer.address
    assert wallets.key(payer.address) is not None
    for spelling in (payer.address.lower(), "0x" + payer.address[2:].swapcase()):
        proof = (await signed(sessions, payer)).model_copy(update={"address": spelling})
        text = eip4361_message(proof, "84532")
        resigned = Account.sign_message(encode_defunct(text=text), payer.key).signature
        proof = proof.model_copy(update={"signature": "0x" + bytes(resigned).hex()})
        with pytest.raises(SignInRefused) as refused:
            signer_of(proof, wallets)
        assert refused.value.reason == "invalid_siwx_message"


# --- the plain shape: a nonce and a chain as EIP-4361 and the SDK's clients write them ----

_SPEC_NONCE = re.compile(r"[A-Za-z0-9]{8,}")  # EIP-4361's nonce, as the regex it was
_SPEC_CHAIN = re.compile(r"eip155:([0-9]{1,20})")
_ODD_TEXT = st.text(alphabet=st.sampled_from("aZ09٣²ⅷé:\n -x") | st.characters(), max_size=24)


@settings(max_examples=300, deadline=None)
@example(nonce="abcd1234", chain="eip155:٣")  # digits of another script: not the spec's
@example(nonce="abcd1234", chain="eip155:²")
@example(nonce="abcd\u0661\u0662\u0663\u0664", chain="eip155:1")  # Arabic-Indic digits
@example(nonce="abcd1234", chain="eip155:" + "1" * 21)
@example(nonce="abcd123", chain="eip155:1")
@example(nonce="abcd1234\n", chain="eip155:1")
@example(nonce="abcd1234", chain="eip155:1\n")
@given(
    nonce=_ODD_TEXT | st.from_regex(_SPEC_NONCE, fullmatch=True),
    chain=st.sampled_from(["eip155:", "eip:", "", "eip155:eip155:"]).flatmap(
        lambda prefix: st.builds(
            lambda rest: prefix + rest, _ODD_TEXT | st.from_regex(r"[0-9]{1,22}", fullmatch=True)
        )
    ),
)
def test_the_plain_shape_takes_the_nonces_and_chains_the_spec_does(nonce: str, chain: str) -> None:
    proof = PlainProof(
        domain="api.example.com",
        address="0x" + "ab" * 20,
        uri="https://api.example.com/a",
        version="1",
        chain_id=chain,
        nonce=nonce,
        issued_at="2026-11-26T13:45:33Z",
        signature="0x" + "11" * 65,
        statement=None,
        expiration_time=None,
        not_before=None,
        request_id=None,
        resources=None,
    )
    spec = _SPEC_CHAIN.fullmatch(chain)
    expected = str(int(spec.group(1))) if spec and _SPEC_NONCE.fullmatch(nonce) else None
    assert _plain(proof) == expected
