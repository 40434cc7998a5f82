"""The fast voucher signature check held to the SDK's own verdict, on vouchers signed by the
SDK's client, forged, re-targeted and malleated."""

from __future__ import annotations

from typing import Any

from eth_account import Account
from hypothesis import given, settings
from hypothesis import strategies as st
from x402.mechanisms.evm.batch_settlement.client.voucher import sign_voucher
from x402.mechanisms.evm.batch_settlement.facilitator.utils import (
    verify_batch_settlement_voucher_typed_data,
)
from x402.mechanisms.evm.batch_settlement.types import ChannelConfig
from x402.mechanisms.evm.batch_settlement.utils import compute_channel_id
from x402.mechanisms.evm.signers import EthAccountSigner

from gateway.payment.voucher_check import digest, domain, parse_plain, signed_by_authorizer

CHAIN_ID = 84532
NETWORK = f"eip155:{CHAIN_ID}"
N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
RECEIVER = "0x" + "11" * 20
TOKEN = "0x036CbD53842c5426634e7929541eC2318f3dCF7e"

keys = st.binary(min_size=32, max_size=32).filter(lambda k: 0 < int.from_bytes(k, "big") < N)
amounts = st.integers(min_value=0, max_value=2**128 - 1)
salts = st.binary(min_size=32, max_size=32)


def config_for(payer: str, authorizer: str, salt: bytes) -> dict[str, Any]:
    return {
        "payer": payer,
        "payerAuthorizer": authorizer,
        "receiver": RECEIVER,
        "receiverAuthorizer": RECEIVER,
        "token": TOKEN,
        "withdrawDelay": 900,
        "salt": "0x" + salt.hex(),
    }


def payload_for(key: bytes, amount: int, salt: bytes) -> dict[str, Any]:
    account = Account.from_key(key)
    cfg = config_for(account.address, account.address, salt)
    channel_id = compute_channel_id(ChannelConfig.from_dict(cfg), NETWORK)
    fields = sign_voucher(EthAccountSigner(account), channel_id, amount, NETWORK)
    return {"type": "voucher", "channelConfig": cfg, "voucher": fields.to_dict()}


def sdk_verdict(raw: dict[str, Any]) -> bool:
    voucher, cfg = raw["voucher"], raw["channelConfig"]
    return verify_batch_settlement_voucher_typed_data(
        signer=None,  # type: ignore[arg-type]  # the ECDSA path (non-zero authorizer)
        channel_id=voucher["channelId"],
        max_claimable_amount=voucher["maxClaimableAmount"],
        payer_authorizer=cfg["payerAuthorizer"],
        payer=cfg["payer"],
        signature=voucher["signature"],
        chain_id=CHAIN_ID,
    )


def fast_verdict(raw: dict[str, Any]) -> bool:
    voucher = parse_plain(raw)
    if voucher is None:
        return False
    verdict = signed_by_authorizer(voucher, domain(CHAIN_ID))
    assert signed_by_authorizer(voucher, domain(CHAIN_ID)) is verdict  # its address memoized
    return verdict


def test_a_known_signer_never_vouches_for_another_key() -> None:
    genuine = parse_plain(payload_for(b"\x05" * 32, 1000, b"\x03" * 32))
    assert genuine is not None and signed_by_authorizer(genuine, domain(CHAIN_ID))
    raw = payload_for(b"\x05" * 32, 2000, b"\x03" * 32)
    raw["voucher"]["signature"] = payload_for(b"\x06" * 32, 2000, b"\x03" * 32)["voucher"][
        "signature"
    ]
    forged = parse_plain(raw)
    assert forged is not None and not signed_by_authorizer(forged, domain(CHAIN_ID))
    nxt = parse_plain(payload_for(b"\x05" * 32, 2000, b"\x03" * 32))
    assert nxt is not None and signed_by_authorizer(nxt, domain(CHAIN_ID))


@settings(max_examples=40, deadline=None)
@given(keys, amounts, salts)
def test_a_voucher_the_sdk_client_signed_is_accepted_by_both(
    key: bytes, amount: int, salt: bytes
) -> None:
    raw = payload_for(key, amount, salt)
    assert sdk_verdict(raw) is True
    assert fast_verdict(raw) is True


@settings(max_examples=40, deadline=None)
@given(keys, keys, amounts, salts)
def test_a_voucher_signed_by_another_key_is_refused_by_both(
    key: bytes, other: bytes, amount: int, salt: bytes
) -> None:
    raw = payload_for(key, amount, salt)
    forged = payload_for(other, amount, salt)["voucher"]["signature"]
    raw["voucher"]["signature"] = forged
    assert fast_verdict(raw) is sdk_verdict(raw) is (key == other)


@settings(max_examples=40, deadline=None)
@given(keys, amounts, amounts, salts)
def test_a_signature_moved_to_another_amount_is_refused_by_both(
    key: bytes, amount: int, other: int, salt: bytes
) -> None:
    raw = payload_for(key, amount, salt)
    raw["voucher"]["maxClaimableAmount"] = str(other)
    assert fast_verdict(raw) is sdk_verdict(raw) is (amount == other)


@settings(max_examples=20, deadline=None)
@given(keys, amounts, salts)
def test_a_malleated_high_s_signature_is_never_accepted_by_the_fast_check(
    key: bytes, amount: int, salt: bytes
) -> None:
    raw = payload_for(key, amount, salt)
    sig = bytes.fromhex(raw["voucher"]["signature"][2:])
    s = N - int.from_bytes(sig[32:64], "big")
    v = 28 if sig[64] in (27, 0) else 27
    raw["voucher"]["signature"] = "0x" + (sig[:32] + s.to_bytes(32, "big") + bytes([v])).hex()
    assert fast_verdict(raw) is False  # the SDK's path decides it (it may accept)


def test_the_digest_is_the_one_eth_account_signs() -> None:
    from eth_account.messages import encode_typed_data
    from eth_utils import keccak
    from x402.mechanisms.evm.batch_settlement.constants import VOUCHER_TYPES
    from x402.mechanisms.evm.batch_settlement.utils import get_batch_settlement_eip712_domain

    raw = payload_for(b"\x07" * 32, 123456789, b"\x01" * 32)
    voucher = parse_plain(raw)
    assert voucher is not None
    signable = encode_typed_data(
        domain_data=get_batch_settlement_eip712_domain(CHAIN_ID),
        message_types=VOUCHER_TYPES,
        message_data={
            "channelId": bytes.fromhex(voucher.channel_id[2:]),
            "maxClaimableAmount": voucher.max_claimable,
        },
    )
    expected = keccak(b"\x19" + signable.version + signable.header + signable.body)
    assert digest(voucher, domain(CHAIN_ID)) == expected


def test_what_is_not_a_plain_ecdsa_voucher_is_left_to_the_sdk() -> None:
    good = payload_for(b"\x09" * 32, 5000, b"\x02" * 32)
    assert fast_verdict(good)
    deposit = {**good, "type": "deposit", "deposit": {"amount": "1"}}
    refund = {**good, "type": "refund"}
    zero = {**good, "channelConfig": {**good["channelConfig"], "payerAuthorizer": "0x" + "0" * 40}}
    short = {**good, "voucher": {**good["voucher"], "signature": "0x1234"}}
    big = {**good, "voucher": {**good["voucher"], "maxClaimableAmount": str(2**128)}}
    number = {**good, "voucher": {**good["voucher"], "maxClaimableAmount": 5000}}
    broken = {**good, "channelConfig": {"payer": good["channelConfig"]["payer"]}}
    for raw in (deposit, refund, zero, short, big, number, broken, "voucher", None):
        assert not fast_verdict(raw)  # type: ignore[arg-type]


def test_a_config_parsed_once_reads_as_parsed_anew() -> None:
    """A channel's config parsed from the cache (by its `repr`) is the one a fresh parse
    gives, for every shape of it, whatever was cached before (1, 1.0, True and "1" are
    four configs)."""
    base = payload_for(b"\x05" * 32, 1000, b"\x03" * 32)
    shapes = [900, "900", 900.0, True, 1, "abc", None, [900]]
    configs: dict[str, Any] = {}
    parsed = 0
    for delay in shapes * 2:  # cold, then warm
        raw = {**base, "channelConfig": {**base["channelConfig"], "withdrawDelay": delay}}
        fresh = parse_plain(raw)
        assert repr(parse_plain(raw, configs)) == repr(fresh), delay  # 1 == True: by repr
        parsed += fresh is not None
    assert 0 < len(configs) == parsed // 2  # each config that parses is kept once


def test_the_authorizer_is_read_as_an_address_in_any_case_and_nothing_else() -> None:
    """The channel's `payerAuthorizer` (memoized per address text): the signer's address in
    any letter case is the signer; anything else, or the zero address, never is."""
    good = payload_for(b"\x09" * 32, 5000, b"\x02" * 32)
    signer = str(good["channelConfig"]["payerAuthorizer"])
    for text, accepted in [
        (signer, True),
        (signer.lower(), True),
        ("0x" + signer[2:].upper(), True),
        (signer + "0", False),
        (signer[:-1], False),
        ("0X" + signer[2:], False),
        ("0x" + "0" * 40, False),
        ("0x" + "zz" * 20, False),
        ("0x" + "11" * 20, False),  # another address
    ]:
        voucher = parse_plain(good)
        assert voucher is not None
        voucher.config.payer_authorizer = text  # the field the check reads (not the id's)
        for _ in range(2):  # cold, then memoized
            assert signed_by_authorizer(voucher, domain(CHAIN_ID)) is accepted, text
