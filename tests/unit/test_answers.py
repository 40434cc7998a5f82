"""The one mapping from the exception tree to HTTP answers."""

from __future__ import annotations

import json

from aiohttp.test_utils import make_mocked_request

from gateway import answers
from gateway.errors import (
    FacilitatorUnavailable,
    MalformedPayment,
    MethodNotAllowed,
    PaymentConflict,
    PaymentError,
    UpstreamTimeout,
)
from gateway.payment.challenge import PreparedChallenges
from tests.unit.wire_helpers import URL, route, settings

PRICED = route()
CHALLENGES = PreparedChallenges(settings(PRICED))
RESOURCE = answers.PricedResource(CHALLENGES, PRICED, URL)


def request(accept: str = "application/json", ua: str = "curl/8") -> object:
    return make_mocked_request("GET", "/paid/report", headers={"Accept": accept, "User-Agent": ua})


def test_payment_error_is_402_with_a_fresh_challenge_naming_the_reason() -> None:
    exc = PaymentError("amount differs", reason="payment_requirements_mismatch")
    r = answers.error_response(request(), exc, RESOURCE, "rid")  # type: ignore[arg-type]
    assert r.status == 402
    assert "PAYMENT-REQUIRED" in r.headers
    assert json.loads(r.body)["error"] == "payment_requirements_mismatch"  # type: ignore[arg-type]
    assert r.headers["Cache-Control"] == "no-store"


def test_malformed_payment_keeps_400_and_still_carries_a_challenge() -> None:
    exc = MalformedPayment("not base64", reason="invalid_base64")
    r = answers.error_response(request(), exc, RESOURCE, "rid")  # type: ignore[arg-type]
    assert r.status == 400 and "PAYMENT-REQUIRED" in r.headers
    assert json.loads(r.body)["error"] == "invalid_base64"  # type: ignore[arg-type]


def test_other_errors_are_problem_json() -> None:
    for exc, status in [
        (FacilitatorUnavailable("down"), 503),
        (UpstreamTimeout("slow"), 504),
        (PaymentConflict("used", reason="payment_already_used"), 409),
        (MethodNotAllowed("no", headers={"Allow": "GET"}), 405),
    ]:
        r = answers.error_response(request(), exc, RESOURCE, "rid")  # type: ignore[arg-type]
        body = json.loads(r.body)  # type: ignore[arg-type]
        assert r.status == status
        assert r.headers["Content-Type"] == "application/problem+json"
        assert body["status"] == status and body["reason"] == exc.reason
        assert body["instance"] == "rid"
        assert "PAYMENT-REQUIRED" in r.headers["Access-Control-Expose-Headers"]
        if exc.retry_after:
            assert r.headers["Retry-After"] == str(exc.retry_after)
        for name, value in exc.headers.items():
            assert r.headers[name] == value


def test_browser_gets_the_paywall_page() -> None:
    r = answers.challenge_response(
        request("text/html,application/xhtml+xml", "Mozilla/5.0"),  # type: ignore[arg-type]
        RESOURCE,
        "Payment required",
    )
    assert r.status == 402
    assert r.headers["Content-Type"].startswith("text/html")
    assert "PAYMENT-REQUIRED" in r.headers
    assert "<html" in r.text.lower()
