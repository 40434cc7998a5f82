"""A channel voucher's match remembered per channel (gateway/payment/voucher_memo.py): every
case is run both ways on the same inputs, the full match (a fresh `ChannelIds`: nothing
remembered) and the match after the memo accepted the channel's first voucher, and the two
must give the same answer: the memo never lets through what the full match refuses, and
never refuses what it accepts. Vouchers are signed by the SDK's own client code."""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import pytest
from x402.schemas import PaymentPayload

from gateway.config.settings import RouteSettings
from gateway.errors import GatewayError
from gateway.payment.channel_terms import ChannelIds
from gateway.payment.decode import DecodedPayment
from gateway.payment.match import match_requirement
from gateway.payment.requirements import requirement_v2
from gateway.payment.voucher_check import parse_plain
from gateway.payment.voucher_memo import Accepted, VoucherMemo, memo_key
from tests.unit.wire_helpers import (
    BATCH,
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

ROUTE = route(requirement(), BATCH)
PAYER = new_account()
OTHER = new_account()
CONFIG = channel_config(PAYER)


def signed(amount: int, cfg: dict[str, Any] | None = None, signer: Any = PAYER) -> dict[str, Any]:
    return signed_voucher(signer, cfg or CONFIG, amount)


FIRST: dict[str, Any] = {"type": "voucher", "channelConfig": CONFIG, "voucher": signed(1000)}
NEXT: dict[str, Any] = {"type": "voucher", "channelConfig": CONFIG, "voucher": signed(2000)}


def wire(raw: dict[str, Any], **accepted_changes: Any) -> dict[str, Any]:
    return {
        "x402Version": 2,
        "accepted": accepted(BATCH, **accepted_changes),
        "payload": raw,
        "resource": {"url": URL},
    }


def decoded(data: dict[str, Any]) -> DecodedPayment:
    return DecodedPayment(2, PaymentPayload.model_validate(data), "PAYMENT-SIGNATURE")


def outcome(priced: RouteSettings, data: dict[str, Any], ids: ChannelIds) -> Any:
    """What the match answers, comparable: its refusal (type and reason) or its result."""
    try:
        matched = match_requirement(priced, decoded(copy.deepcopy(data)), URL, ids)
    except GatewayError as exc:
        return type(exc), exc.reason
    return (
        matched.requirement,
        matched.identity,
        matched.payer,
        matched.valid_before // 10,  # the claim's lifetime from now: same to the 10 s
        # the voucher parsed for the road: the memo's only (held to `parse_plain` below)
        matched.channel and dataclasses.replace(matched.channel, valid_before=0, voucher=None),
        matched.requirements.model_dump(),
    )


def warmed() -> ChannelIds:
    """A memo that accepted the channel's first voucher on `ROUTE`."""
    ids = ChannelIds()
    match_requirement(ROUTE, decoded(wire(FIRST)), URL, ids)
    assert len(ids.vouchers) == 1
    return ids


def voucher_field(name: str, value: Any) -> dict[str, Any]:
    return wire({**NEXT, "voucher": {**NEXT["voucher"], name: value}})


def config_field(name: str, value: Any) -> dict[str, Any]:
    return wire({**NEXT, "channelConfig": {**CONFIG, name: value}})


def extra(**changes: Any) -> dict[str, Any]:
    out = {**BATCH.extra, **changes}
    return {k: v for k, v in out.items() if v is not None}


def batch_route(**changes: Any) -> RouteSettings:
    return route(requirement(), dataclasses.replace(BATCH, **changes))


OTHERS_SIGNATURE = signed(2000, signer=OTHER)["signature"]
NEXT_SIGNATURE = str(NEXT["voucher"]["signature"])
UPPER_SIGNATURE = "0x" + NEXT_SIGNATURE[2:].upper()
UPPER_ID = "0x" + str(FIRST["voucher"]["channelId"])[2:].upper()
REORDERED = dict(reversed(CONFIG.items()))

# (name, route, wire payment, whether the memo may answer it)
CASES: list[tuple[str, RouteSettings, dict[str, Any], bool]] = [
    ("the next voucher", ROUTE, wire(NEXT), True),
    ("a copy of the first voucher", ROUTE, wire(FIRST), True),
    ("an amount that is not decimal", ROUTE, voucher_field("maxClaimableAmount", "12a"), True),
    ("an amount over uint128", ROUTE, voucher_field("maxClaimableAmount", str(2**128)), True),
    ("an amount as a number", ROUTE, voucher_field("maxClaimableAmount", 2000), True),
    ("a signature that is not hex", ROUTE, voucher_field("signature", "0xzz"), True),
    ("a 64-byte signature", ROUTE, voucher_field("signature", NEXT_SIGNATURE[:-2]), True),
    ("a 66-byte signature", ROUTE, voucher_field("signature", NEXT_SIGNATURE + "1b"), True),
    ("an empty signature", ROUTE, voucher_field("signature", "0x"), True),
    ("an upper-case signature", ROUTE, voucher_field("signature", UPPER_SIGNATURE), True),
    ("another payer's signature", ROUTE, voucher_field("signature", OTHERS_SIGNATURE), True),
    ("the id in upper case", ROUTE, voucher_field("channelId", UPPER_ID), False),
    ("another channel's id", ROUTE, voucher_field("channelId", "0x" + "ab" * 32), False),
    ("an id that is not text", ROUTE, voucher_field("channelId", 7), False),
    ("another price", ROUTE, wire(NEXT, amount="2000"), False),
    ("another recipient", ROUTE, wire(NEXT, payTo=OTHER_PAY_TO), False),
    ("another asset", ROUTE, wire(NEXT, asset=OTHER_ASSET), False),
    ("another network", ROUTE, wire(NEXT, network="eip155:8453"), False),
    ("another timeout", ROUTE, wire(NEXT, maxTimeoutSeconds=301), False),
    ("the exact scheme", ROUTE, wire(NEXT, scheme="exact"), False),
    ("a delay in extra as a float", ROUTE, wire(NEXT, extra=extra(withdrawDelay=900.0)), False),
    ("a delay in extra as true", ROUTE, wire(NEXT, extra=extra(withdrawDelay=True)), False),
    ("no name in extra", ROUTE, wire(NEXT, extra=extra(name=None)), False),
    ("extra with one key more", ROUTE, wire(NEXT, extra=extra(more=1)), False),
    ("a config's delay as a float", ROUTE, config_field("withdrawDelay", 900.0), False),
    ("a config's delay as text", ROUTE, config_field("withdrawDelay", "900"), False),
    ("a config's delay as true", ROUTE, config_field("withdrawDelay", True), False),
    ("another receiver", ROUTE, config_field("receiver", OTHER_PAY_TO), False),
    ("another token", ROUTE, config_field("token", OTHER_ASSET), False),
    ("another salt", ROUTE, config_field("salt", "0x" + "01" * 32), False),
    ("a config in another key order", ROUTE, wire({**NEXT, "channelConfig": REORDERED}), False),
    ("a deposit", ROUTE, wire({**NEXT, "type": "deposit"}), False),
    ("a refund", ROUTE, wire({**NEXT, "type": "refund"}), False),
    ("a route at another price", batch_route(amount=2000), wire(NEXT), False),
    ("another recipient's route", batch_route(pay_to=OTHER_PAY_TO), wire(NEXT), False),
    ("the same terms reloaded", route(requirement(), BATCH), wire(NEXT), False),
    ("a free route", dataclasses.replace(ROUTE, accepts=()), wire(NEXT), False),
]


@pytest.mark.parametrize(("name", "priced", "data", "remembered"), CASES, ids=[c[0] for c in CASES])
def test_the_memo_answers_as_the_full_match_does(
    name: str, priced: RouteSettings, data: dict[str, Any], remembered: bool
) -> None:
    full = outcome(priced, data, ChannelIds())
    ids = warmed()
    key = memo_key(decoded(data).payload)  # type: ignore[arg-type]
    hit = key is not None and ids.vouchers.get(key, priced.accepts) is not None
    assert hit is remembered, name  # the case tests the memo's road it names
    assert outcome(priced, data, ids) == full, name


def test_the_next_voucher_is_accepted_from_the_memo_with_its_own_identity() -> None:
    ids = warmed()
    first = match_requirement(ROUTE, decoded(wire(FIRST)), URL, ids)
    after = match_requirement(ROUTE, decoded(wire(NEXT)), URL, ids)
    assert after.requirement is BATCH
    assert after.payer == PAYER.address
    assert after.channel is not None and after.channel.cumulative == 2000
    assert after.channel.voucher == parse_plain(wire(NEXT)["payload"])  # carried, parsed
    assert after.channel.voucher is not None
    assert after.identity.key != first.identity.key  # two vouchers, two payments


def test_a_refused_payment_is_not_remembered() -> None:
    ids = ChannelIds()
    with pytest.raises(GatewayError):
        match_requirement(ROUTE, decoded(config_field("receiver", OTHER_PAY_TO)), URL, ids)
    assert len(ids.vouchers) == 0


@pytest.mark.parametrize(("name", "priced", "data", "remembered"), CASES, ids=[c[0] for c in CASES])
def test_a_voucher_carried_parsed_is_the_one_parse_plain_gives(
    name: str, priced: RouteSettings, data: dict[str, Any], remembered: bool
) -> None:
    """What the match carries to the voucher road (`ChannelPayment.voucher`, read once) is
    exactly the fast path's own parse of the payload, or nothing (it then parses itself)."""
    ids = warmed()
    try:
        matched = match_requirement(priced, decoded(copy.deepcopy(data)), URL, ids)
    except GatewayError:
        return  # refused by the match: nothing carried
    assert matched.channel is not None
    carried, own = matched.channel.voucher, parse_plain(copy.deepcopy(data["payload"]))
    if remembered:
        assert carried == own, name
    else:
        assert carried is None, name  # the full match carries nothing: the road parses


def test_the_memo_is_bounded_and_drops_the_least_recently_used() -> None:
    memo = VoucherMemo(size=2)
    accepts = ROUTE.accepts
    kept = Accepted(accepts, BATCH, 1, "0x01", "0x02", requirement_v2(BATCH))
    for name in ("a", "b"):
        memo.remember((name,), kept)
    assert memo.get(("a",), accepts) is kept  # used: now the most recent
    memo.remember(("c",), kept)
    assert len(memo) == 2
    assert memo.get(("b",), accepts) is None
    assert memo.get(("a",), accepts) is kept and memo.get(("c",), accepts) is kept
    assert memo.get(("a",), route(requirement(), BATCH).accepts) is None  # other terms
