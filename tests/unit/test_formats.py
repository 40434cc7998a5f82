"""gateway.formats: one validator per format, shared by the config loader and the request path
(so what config accepts, the request path can read)."""

from __future__ import annotations

from decimal import Decimal

import pytest

from gateway import formats
from gateway.config.settings import Requirement
from gateway.payment.networks import v1_name
from gateway.proxy.headers import forwarded_element


@pytest.mark.parametrize(
    ("text", "chain"),
    [
        ("eip155:84532", 84532),
        ("eip155:1", 1),
        (f"eip155:{'9' * 18}", int("9" * 18)),
        (f"eip155:{'9' * 19}", None),
        ("eip155:1234567890123456789012", None),
        ("eip155:0", None),
        ("eip155:012", None),
        ("solana:5eykt4UsFv8P8NJdTREpY1vzqKqZKvdp", None),
    ],
)
def test_one_chain_id_rule_for_config_and_requests(text: str, chain: int | None) -> None:
    assert formats.chain_id(text) == chain
    if chain is None:
        with pytest.raises(ValueError):
            formats.parse_network(text)
    else:
        assert formats.parse_network(text) == text


def test_v1_names_are_read_as_caip2_and_back() -> None:
    assert formats.parse_network("base-sepolia") == "eip155:84532"
    assert v1_name(formats.parse_network("base-sepolia")) == "base-sepolia"


def test_addresses() -> None:
    lower = "0x209693bc6afc0c5328ba36faf03c514ef312287c"
    assert formats.is_address(lower) and not formats.is_address(lower[:-1])
    assert formats.parse_evm_address(lower) == "0x209693Bc6afc0C5328bA36FaF03C514EF312287C"
    with pytest.raises(ValueError, match="bad checksum"):
        formats.parse_evm_address("0x209693Bc6afc0C5328bA36FaF03C514EF312287c")


def test_http_tokens_decide_forwarded_quoting_too() -> None:
    assert formats.parse_token("X-Payer", "header name") == "X-Payer"
    with pytest.raises(ValueError, match="not a valid header name"):
        formats.parse_token("X Payer", "header name")
    assert forwarded_element("10.0.0.1", "http", "a.example") == (
        "for=10.0.0.1;proto=http;host=a.example"
    )
    assert forwarded_element("10.0.0.1", "http", "a b") == 'for=10.0.0.1;proto=http;host="a b"'


def test_durations_and_prices() -> None:
    assert formats.parse_duration("1m30s") == 90.0
    assert formats.parse_duration("0", allow_zero=True) == 0.0
    assert formats.parse_usd("$0.001") == Decimal("0.001")
    with pytest.raises(ValueError, match="is zero"):
        formats.parse_usd("$0")
    req = Requirement("exact", "eip155:84532", "0x" + "1" * 40, 1000, "0x" + "2" * 40)
    assert formats.format_price(req) == "$0.001 (1000 atomic units of USDC)"
