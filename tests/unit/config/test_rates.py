"""`limits: {per_payer, per_ip}` at the top level and on a route."""

from __future__ import annotations

import pytest

from gateway import config
from gateway.config.rates import parse_rate
from gateway.config.settings import Rate
from gateway.errors import ConfigError

BASE = """
upstream: http://127.0.0.1:8080
facilitator: {url: http://127.0.0.1:9}
pay_to: "0x000000000000000000000000000000000000dEaD"
"""


@pytest.mark.parametrize(
    ("text", "rate"),
    [
        ("10/s", Rate(10, 1.0)),
        ("100/m", Rate(100, 60.0)),
        ("5/h", Rate(5, 3600.0)),
        ("1000/d", Rate(1000, 86400.0)),
        (" 20 / 30s ", Rate(20, 30.0)),
    ],
)
def test_rates(text: str, rate: Rate) -> None:
    assert parse_rate(text) == rate


@pytest.mark.parametrize("text", ["10", "0/s", "ten/s", "10/fortnight", "-1/s", "10/0s"])
def test_bad_rates(text: str) -> None:
    with pytest.raises(ValueError, match=r"10/s|count|duration|more than"):
        parse_rate(text)


def test_global_and_route_limits_load() -> None:
    settings = config.loads(
        BASE
        + """
limits: {per_payer: 10/s, per_ip: 100/m, payment_header: 8KiB}
routes:
  - {path: /quote/*, price: "$0.01", limits: {per_payer: 2/s}}
  - {path: /free, price: free, limits: {per_ip: 5/s}}
"""
    )
    assert settings.limits.rates.per_payer == Rate(10, 1.0)
    assert settings.limits.rates.per_ip == Rate(100, 60.0)
    assert settings.limits.payment_header == 8192
    assert settings.routes[0].rate_limits.per_payer == Rate(2, 1.0)
    assert settings.routes[0].rate_limits.per_ip is None
    assert settings.routes[1].rate_limits.per_ip == Rate(5, 1.0)


def test_errors_have_lines_and_paths() -> None:
    with pytest.raises(ConfigError) as caught:
        config.loads(
            BASE
            + """limits: {per_payer: lots}
routes:
  - {path: /free, price: free, limits: {per_payer: 1/s}}
  - {path: /paid, price: "$0.01", limits: {per_minute: 1}}
""",
            filename="gw.yaml",
        )
    text = "\n".join(caught.value.errors)
    assert "gw.yaml:5 limits.per_payer" in text
    assert "routes[0].limits.per_payer: a free route has no payer" in text
    assert "routes[1].limits" in text and "per_minute" in text
