"""A batch-settlement deposit or voucher matched against the route's own requirement
(gateway/payment/channel_terms.py through match_requirement): vouchers signed by the SDK's
own client code, channel ids computed by the SDK."""

from __future__ import annotations

import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from x402.mechanisms.evm.batch_settlement.types import ChannelConfig
from x402.mechanisms.evm.batch_settlement.utils import compute_channel_id
from x402.schemas import PaymentPayload

from gateway.errors import MalformedPayment, PaymentError
from gateway.payment.channel_terms import (
    VOUCHER_CLAIM_SECONDS,
    ChannelIds,
    _voucher,
    _voucher_refused,
    voucher_nonce,
)
from gateway.payment.decode import DecodedPayment
from gateway.payment.match import match_requirement
from tests.unit.wire_helpers import (
    BATCH,
    CHANNEL_NETWORK,
    OTHER_ASSET,
    OTHER_PAY_TO,
    URL,
    accepted,
    channel_config,
    new_account,
    requirement,
    route,
    signed_voucher,
)

NETWORK = CHANNEL_NETWORK
PAYER = new_account()


def config(**changes: Any) -> dict[str, Any]:
    return channel_config(PAYER, **changes)


def voucher_payload(amount: int = 3000, cfg: dict[str, Any] | None = None) -> dict[str, Any]:
    cfg = cfg or config()
    return {"type": "voucher", "channelConfig": cfg, "voucher": signed_voucher(PAYER, cfg, amount)}


def paying(raw: dict[str, Any], req: Any = BATCH) -> DecodedPayment:
    data = {"x402Version": 2, "accepted": accepted(req), "payload": raw, "resource": {"url": URL}}
    return DecodedPayment(2, PaymentPayload.model_validate(data), "PAYMENT-SIGNATURE")


CHANNEL_ROUTE = route(requirement(), BATCH)


def test_a_voucher_is_matched_with_its_channel_and_cumulative_amount_as_identity() -> None:
    raw = voucher_payload(3000)
    matched = match_requirement(CHANNEL_ROUTE, paying(raw), URL)
    assert matched.requirement is BATCH
    assert matched.payer == PAYER.address
    channel_id = raw["voucher"]["channelId"].lower()
    assert matched.identity.nonce == voucher_nonce(channel_id, 3000)
    assert matched.identity.payer == PAYER.address.lower()
    assert matched.requirements.scheme == "batch-settlement"


def test_two_vouchers_of_one_channel_are_two_payments_and_copies_are_one() -> None:
    three = match_requirement(CHANNEL_ROUTE, paying(voucher_payload(3000)), URL)
    again = match_requirement(CHANNEL_ROUTE, paying(voucher_payload(3000)), URL)
    four = match_requirement(CHANNEL_ROUTE, paying(voucher_payload(4000)), URL)
    assert three.identity.key == again.identity.key
    assert three.identity.key != four.identity.key


def test_a_deposit_has_the_identity_of_its_first_voucher() -> None:
    raw = voucher_payload(1000)
    deposit = {**raw, "type": "deposit", "deposit": {"amount": "1000000", "authorization": {}}}
    as_deposit = match_requirement(CHANNEL_ROUTE, paying(deposit), URL)
    as_voucher = match_requirement(CHANNEL_ROUTE, paying(raw), URL)
    assert as_deposit.identity == as_voucher.identity
    # a voucher never expires: its claim is kept for VOUCHER_CLAIM_SECONDS
    assert abs(as_deposit.valid_before - time.time() - VOUCHER_CLAIM_SECONDS) < 5


@pytest.mark.parametrize(
    ("cfg", "reason"),
    [
        (config(receiver=OTHER_PAY_TO), "invalid_batch_settlement_evm_receiver_mismatch"),
        (config(token=OTHER_ASSET), "invalid_batch_settlement_evm_token_mismatch"),
        (config(withdrawDelay=901), "invalid_batch_settlement_evm_withdraw_delay_mismatch"),
        (
            config(receiverAuthorizer=OTHER_PAY_TO),
            "invalid_batch_settlement_evm_receiver_authorizer_mismatch",
        ),
    ],
)
def test_a_channel_for_other_terms_is_refused(cfg: dict[str, Any], reason: str) -> None:
    with pytest.raises(PaymentError) as caught:
        match_requirement(CHANNEL_ROUTE, paying(voucher_payload(cfg=cfg)), URL)
    assert caught.value.reason == reason


def test_a_channel_id_that_is_not_its_config_is_refused() -> None:
    raw = voucher_payload()
    raw["channelConfig"] = config(salt="0x" + "01" * 32)  # the id is still the old config's
    with pytest.raises(PaymentError) as caught:
        match_requirement(CHANNEL_ROUTE, paying(raw), URL)
    assert caught.value.reason == "invalid_batch_settlement_evm_channel_id_mismatch"


def test_cached_channel_ids_are_the_sdks_and_a_changed_config_is_hashed_anew() -> None:
    ids = ChannelIds()
    good = voucher_payload()
    first = match_requirement(CHANNEL_ROUTE, paying(good), URL, ids)
    again = match_requirement(CHANNEL_ROUTE, paying(voucher_payload(4000)), URL, ids)
    assert first.identity.nonce != again.identity.nonce
    cfg = ChannelConfig.from_dict(good["channelConfig"])
    assert ids.of(cfg, NETWORK) == compute_channel_id(cfg, NETWORK).lower()
    forged = voucher_payload()
    forged["channelConfig"] = config(salt="0x" + "01" * 32)  # the id is still the old config's
    with pytest.raises(PaymentError) as caught:
        match_requirement(CHANNEL_ROUTE, paying(forged), URL, ids)
    assert caught.value.reason == "invalid_batch_settlement_evm_channel_id_mismatch"


def test_a_refund_is_its_own_payment_charging_nothing_claimed_while_in_flight() -> None:
    voucher = match_requirement(CHANNEL_ROUTE, paying(voucher_payload(3000)), URL)
    whole = match_requirement(
        CHANNEL_ROUTE, paying({**voucher_payload(3000), "type": "refund"}), URL
    )
    part = {**voucher_payload(3000), "type": "refund", "amount": "500"}
    partial = match_requirement(CHANNEL_ROUTE, paying(part), URL)
    # its voucher is for what was charged already: never the same payment as that voucher
    assert len({voucher.identity.key, whole.identity.key, partial.identity.key}) == 3
    assert abs(whole.valid_before - time.time()) < 5  # kept only while in flight
    for amount in ("-1", "x", str(2**128)):
        with pytest.raises(MalformedPayment):
            match_requirement(CHANNEL_ROUTE, paying({**part, "amount": amount}), URL)


def test_an_unknown_type_is_not_taken() -> None:
    for kind in ("claim", "settle", None):
        with pytest.raises(PaymentError) as caught:
            match_requirement(CHANNEL_ROUTE, paying({**voucher_payload(), "type": kind}), URL)
        assert caught.value.reason == "invalid_batch_settlement_evm_payload_type"


@pytest.mark.parametrize(
    "broken",
    [
        lambda raw: raw["voucher"].update(maxClaimableAmount="-1"),
        lambda raw: raw["voucher"].update(maxClaimableAmount=str(2**128)),
        lambda raw: raw["voucher"].update(channelId="0x12"),
        lambda raw: raw["voucher"].pop("signature"),
        lambda raw: raw["channelConfig"].update(payer="nope"),
        lambda raw: raw["channelConfig"].update(withdrawDelay=True),
        lambda raw: raw["channelConfig"].update(salt="0x00"),
        lambda raw: raw.pop("channelConfig"),
        lambda raw: raw.update(type="deposit"),  # without its deposit
    ],
)
def test_a_payload_not_shaped_as_a_channel_payment_is_malformed(broken: Any) -> None:
    raw = voucher_payload()
    broken(raw)
    with pytest.raises(MalformedPayment):
        match_requirement(CHANNEL_ROUTE, paying(raw), URL)


def test_the_exact_requirement_of_a_channel_route_still_takes_exact_payments() -> None:
    priced = route(requirement(), BATCH)
    # a voucher sent as an exact payment is read as an exact one: no authorization in it
    with pytest.raises(MalformedPayment, match=r"payload\.authorization"):
        match_requirement(priced, paying(voucher_payload(), req=requirement()), URL)


def test_a_voucher_nonce_is_the_keccak_of_its_tag_channel_and_amount() -> None:
    # Pinned to eth-utils' keccak: the nonce keys the claim store across replicas and
    # versions, so a change of hashing library must not change it.
    from eth_utils.crypto import keccak as eth_utils_keccak

    channel_id = "0x" + "ab" * 32
    body = bytes.fromhex(channel_id[2:]) + (3000).to_bytes(16, "big")
    tag = b"x402-gateway:batch-settlement:voucher"
    assert voucher_nonce(channel_id, 3000) == "0x" + eth_utils_keccak(tag + body).hex()
    refund = eth_utils_keccak(
        b"x402-gateway:batch-settlement:refund" + body + (7).to_bytes(16, "big")
    )
    assert voucher_nonce(channel_id, 3000, 7) == "0x" + refund.hex()


def test_cached_channel_ids_differ_for_a_config_differing_in_any_field() -> None:
    ids = ChannelIds()
    base = voucher_payload()["channelConfig"]
    seen = {ids.of(ChannelConfig.from_dict(base), NETWORK)}
    changes = {"salt": "0x" + "02" * 32, "withdrawDelay": 7200, "payer": "0x" + "11" * 20}
    for field, value in changes.items():
        cfg = ChannelConfig.from_dict({**base, field: value})
        found = ids.of(cfg, NETWORK)
        assert found == compute_channel_id(cfg, NETWORK).lower()
        seen.add(found)
    assert len(seen) == 1 + len(changes)


_FIELD_VALUES = {
    "channelId": st.sampled_from(
        ["0x" + "ab" * 32, "0x" + "AB" * 32, "0x" + "ab" * 31, "ab" * 32, 7, None, ["0x"]]
    ),
    "maxClaimableAmount": st.sampled_from(
        ["2000", "0", str(2**128 - 1), str(2**128), "12a", "-1", "", 2000, "1" * 40, None]
    ),
    "signature": st.sampled_from(["0x" + "cd" * 65, "0x", "0xabc", "0xzz", "cd" * 65, 1, None]),
}


@settings(max_examples=300, deadline=None)
@given(
    st.fixed_dictionaries({}, optional=_FIELD_VALUES),
    st.sampled_from(["dict", "list", "missing"]),
)
def test_a_vouchers_fields_are_read_as_the_one_by_one_checks_read_them(
    fields: dict[str, Any], shape: str
) -> None:
    """`_voucher`'s all-at-once reading of a well-formed voucher gives what the field-by-field
    checks give, and refuses what they refuse with their message."""
    voucher: Any = {"dict": fields, "list": list(fields), "missing": None}[shape]
    raw = {"type": "voucher"} if voucher is None else {"type": "voucher", "voucher": voucher}

    def outcome(read: Any, arg: Any) -> Any:
        try:
            return read(arg)
        except MalformedPayment as exc:
            return ("refused", exc.reason, str(exc))

    assert outcome(_voucher, raw) == outcome(_voucher_refused, voucher)


_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141


def recoded(signature: str, how: str) -> str:
    """The same ECDSA signature of the same voucher, spelled as the chain will not take it:
    `v` as 0/1 (`ecrecover` wants 27/28), or its high-s twin (OpenZeppelin's `ECDSA`
    refuses it: InvalidSignatureS). Both recover to the payer off chain."""
    raw = bytes.fromhex(signature[2:])
    r, s, v = raw[:32], int.from_bytes(raw[32:64], "big"), raw[64]
    if how == "v as 0/1":
        return "0x" + (r + raw[32:64] + bytes([v - 27])).hex()
    return "0x" + (r + (_N - s).to_bytes(32, "big") + bytes([55 - v])).hex()


@pytest.mark.parametrize("how", ["v as 0/1", "high s"])
@pytest.mark.parametrize("kind", ["voucher", "deposit"])
def test_a_voucher_signature_the_chain_would_refuse_is_refused(how: str, kind: str) -> None:
    """Red team (session 8): a voucher is claimed on chain later, with the signature the
    gateway accepted; one spelled so that the contract's ECDSA refuses it (but that recovers
    to the payer's authorizer off chain, as the SDK's check and the fast path take it)
    would be served now and never be claimable: refused here, for the remembered channel
    too."""
    ids = ChannelIds()
    match_requirement(CHANNEL_ROUTE, paying(voucher_payload(3000)), URL, ids)  # remembered
    raw = voucher_payload(4000)
    raw["voucher"]["signature"] = recoded(raw["voucher"]["signature"], how)
    if kind == "deposit":
        raw = {**raw, "type": "deposit", "deposit": {"amount": "1000000", "authorization": {}}}
    for channel_ids in (ids, ChannelIds(), None):
        with pytest.raises(PaymentError) as refused:
            match_requirement(CHANNEL_ROUTE, paying(raw), URL, channel_ids)
        assert refused.value.reason == "invalid_batch_settlement_evm_voucher_signature"
