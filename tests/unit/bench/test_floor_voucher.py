"""The voucher floor (bench/floor_voucher.py) is a floor only if it does a voucher's real
checks: it takes the channel's next signed voucher, and refuses a forged one, a copy, a
skipped amount and a voucher for other terms."""

from __future__ import annotations

import base64
import json
from typing import Any

from aiohttp import web
from multidict import CIMultiDict

from bench.floor_voucher import VoucherFloor
from tests.unit.payment.test_channel_terms import PAYER, voucher_payload
from tests.unit.payment.test_channels import BATCH, PRICE, accepted


def header(amount: int, **change: Any) -> CIMultiDict[str]:
    data = {"x402Version": 2, "accepted": accepted(BATCH), "payload": voucher_payload(amount)}
    data.update(change)
    return CIMultiDict({"PAYMENT-SIGNATURE": base64.b64encode(json.dumps(data).encode()).decode()})


def test_the_next_voucher_is_taken_with_the_payer_and_a_receipt() -> None:
    floor = VoucherFloor()
    first, second = header(3 * PRICE), header(4 * PRICE)
    assert not isinstance(floor.gate(first), web.Response)
    extra = floor.gate(second)
    assert not isinstance(extra, web.Response)
    assert second["X-Payer"] == PAYER.address.lower()
    receipt = json.loads(base64.b64decode(extra["PAYMENT-RESPONSE"]))
    assert receipt["extra"]["chargedCumulativeAmount"] == str(4 * PRICE)
    assert extra["Cache-Control"] == "private, no-store"


def test_a_copy_a_skipped_amount_and_other_terms_are_refused() -> None:
    floor = VoucherFloor()
    floor.gate(header(3 * PRICE))
    assert isinstance(floor.gate(header(3 * PRICE)), web.Response)  # a copy
    assert isinstance(floor.gate(header(5 * PRICE)), web.Response)  # skips 4
    dearer = {**accepted(BATCH), "amount": str(2 * PRICE)}
    assert isinstance(floor.gate(header(4 * PRICE, accepted=dearer)), web.Response)
    assert not isinstance(floor.gate(header(4 * PRICE)), web.Response)


def test_a_forged_signature_is_refused() -> None:
    floor = VoucherFloor()
    floor.gate(header(3 * PRICE))
    forged = voucher_payload(4 * PRICE)
    other = voucher_payload(5 * PRICE)["voucher"]["signature"]  # the payer's, for 5, not 4
    forged["voucher"]["signature"] = other
    data = {"x402Version": 2, "accepted": accepted(BATCH), "payload": forged}
    sent = CIMultiDict({"PAYMENT-SIGNATURE": base64.b64encode(json.dumps(data).encode()).decode()})
    assert isinstance(floor.gate(sent), web.Response)


def test_no_payment_header_is_free() -> None:
    assert VoucherFloor().gate(CIMultiDict()) == {}
