"""gateway.proxy.cors: the headers of the gateway's own answers and preflights (issue 12)."""

from __future__ import annotations

from gateway.config.settings import Cors
from gateway.proxy.cors import CorsPolicy, is_preflight

ANY = CorsPolicy(Cors())
SHOP = CorsPolicy(Cors(origins=("https://shop.example",), credentials=True, max_age=30))


def test_any_origin_answers_star_and_exposes_the_x402_headers() -> None:
    headers = ANY.answer("https://whoever.example")
    assert headers["Access-Control-Allow-Origin"] == "*"
    assert headers["Access-Control-Expose-Headers"] == (
        "PAYMENT-REQUIRED, PAYMENT-RESPONSE, X-PAYMENT-RESPONSE"
    )
    assert headers["Vary"] == "Origin"
    assert "Access-Control-Allow-Credentials" not in headers
    assert ANY.answer(None)["Access-Control-Allow-Origin"] == "*"


def test_explicit_origins_echo_an_allowed_origin_only() -> None:
    assert SHOP.answer("https://shop.example")["Access-Control-Allow-Origin"] == (
        "https://shop.example"
    )
    assert SHOP.answer("https://SHOP.example")["Access-Control-Allow-Credentials"] == "true"
    for other in ("https://evil.example", "null", None):
        headers = SHOP.answer(other)
        assert "Access-Control-Allow-Origin" not in headers
        assert headers["Vary"] == "Origin"


def test_preflight_allows_the_x402_headers_and_echoes_valid_requested_names() -> None:
    request = {
        "Origin": "https://shop.example",
        "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "x-custom, payment-signature, bad name, a:b, ,",
    }
    assert is_preflight(request)
    headers = SHOP.preflight(request, "GET, HEAD, OPTIONS")
    allowed = [h.strip() for h in headers["Access-Control-Allow-Headers"].split(",")]
    assert allowed[:4] == [
        "PAYMENT-SIGNATURE",
        "X-PAYMENT",
        "Content-Type",
        "Access-Control-Expose-Headers",
    ]
    assert "x-custom" in allowed and "bad name" not in allowed and "a:b" not in allowed
    assert headers["Access-Control-Allow-Methods"] == "GET, HEAD, OPTIONS"
    assert headers["Access-Control-Max-Age"] == "30"
    assert headers["Access-Control-Allow-Origin"] == "https://shop.example"
    assert "Origin" in headers["Vary"]


def test_a_plain_options_is_not_a_preflight() -> None:
    assert not is_preflight({"Origin": "https://shop.example"})
    assert not is_preflight({"Access-Control-Request-Method": "GET"})
