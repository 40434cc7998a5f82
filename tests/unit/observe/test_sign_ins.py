"""A SIWX sign-in's record: counted in `x402_gateway_sign_ins_total` and named on its access
line (who signed in, or why not), never as a payment."""

from __future__ import annotations

from typing import Any

from gateway.errors import SignInRefused, TooManyRequests
from gateway.observe.access import sign_in_fields
from gateway.observe.metrics import Metrics
from gateway.observe.record import RequestRecord
from tests.unit.observe.test_metrics import samples
from tests.unit.wire_helpers import route

PAYER = "0x" + "ab" * 20


def record(**filled: Any) -> RequestRecord:
    return RequestRecord(
        request_id="r1", method="GET", path="/paid/x", generation=1, route=route(), **filled
    )


def sign_ins(m: Metrics) -> dict[frozenset[tuple[str, str]], float]:
    return {k[1]: v for k, v in samples(m).items() if k[0] == "x402_gateway_sign_ins_total"}


def payments(m: Metrics) -> float:
    return sum(v for k, v in samples(m).items() if k[0] == "x402_gateway_payments_total")


def test_a_sign_in_is_counted_and_names_its_payer() -> None:
    m = Metrics()
    done = record(signed_in=PAYER, status=200)
    m.observe(done)
    assert not done.carried_payment
    assert sign_in_fields(done) == {"sign_in": "signed_in", "payer": PAYER}
    labels = {"route": "/paid/*", "outcome": "signed_in", "reason": ""}
    assert sign_ins(m) == {frozenset(labels.items()): 1}
    assert payments(m) == 0


def test_a_refused_sign_in_is_counted_with_its_reason_not_as_a_payment() -> None:
    m = Metrics()
    refused = record(error=SignInRefused("no", reason="siwx_nonce_used"), status=402)
    m.observe(refused)
    assert not refused.carried_payment
    assert sign_in_fields(refused) == {"sign_in": "refused", "sign_in_reason": "siwx_nonce_used"}
    labels = {"route": "/paid/*", "outcome": "refused", "reason": "siwx_nonce_used"}
    assert sign_ins(m) == {frozenset(labels.items()): 1}
    assert payments(m) == 0


def test_other_requests_are_not_sign_ins() -> None:
    m = Metrics()
    for other in (record(status=200), record(error=TooManyRequests("slow", 1), status=429)):
        m.observe(other)
        assert other.sign_in is None and sign_in_fields(other) == {}
    assert sign_ins(m) == {}
