from __future__ import annotations

import pytest

from gateway.formats import chain_id
from gateway.payment.networks import caip_from_v1, is_testnet, v1_name


@pytest.mark.parametrize(
    ("network", "cid"),
    [
        ("eip155:84532", 84532),
        ("eip155:1", 1),
        ("eip155:0", None),
        ("eip155:08453", None),
        ("eip155:", None),
        ("eip155:8453:x", None),
        ("solana:devnet", None),
        ("eip155:" + "9" * 40, None),
    ],
)
def test_chain_id(network: str, cid: int | None) -> None:
    assert chain_id(network) == cid


def test_v1_names_round_trip_through_the_sdk_table() -> None:
    assert v1_name("eip155:84532") == "base-sepolia"
    assert v1_name("eip155:8453") == "base"
    assert v1_name("eip155:31337") is None
    assert v1_name("solana:devnet") is None
    assert caip_from_v1("base-sepolia") == "eip155:84532"
    assert caip_from_v1("polygon-amoy") == "eip155:80002"
    assert caip_from_v1("eip155:84532") is None
    assert caip_from_v1("nowhere") is None


@pytest.mark.parametrize(
    ("network", "testnet"),
    [
        ("eip155:84532", True),
        ("eip155:43113", True),  # avalanche-fuji
        ("eip155:31337", True),  # unknown: a local chain
        ("eip155:8453", False),
        ("eip155:137", False),
    ],
)
def test_is_testnet(network: str, testnet: bool) -> None:
    assert is_testnet(network) is testnet
