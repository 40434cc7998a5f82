"""The walkthrough's own judgements: what counts as a settled payment and a refused replay."""

from __future__ import annotations

from gateway.demo.walkthrough import Balances, is_tx_hash, moved_exactly, same_address


def test_moved_exactly_the_price_in_one_settlement() -> None:
    before = Balances(payer=10_000_000, payee=0, settler_txs=3)
    assert moved_exactly(before, Balances(9_990_000, 10_000, 4), 10_000)


def test_any_other_movement_is_not_the_price() -> None:
    before = Balances(payer=10_000_000, payee=0, settler_txs=3)
    assert not moved_exactly(before, Balances(9_980_000, 20_000, 5), 10_000)  # twice
    assert not moved_exactly(before, Balances(9_990_000, 0, 4), 10_000)  # payee not paid
    assert not moved_exactly(before, Balances(10_000_000, 0, 3), 10_000)  # nothing
    assert not moved_exactly(before, Balances(9_990_000, 10_000, 5), 10_000)  # extra tx
    assert not moved_exactly(before, before, 0)  # no settlement at all


def test_tx_hash_shape() -> None:
    assert is_tx_hash("0x" + "ab" * 32)
    assert not is_tx_hash("ab" * 33)
    assert not is_tx_hash("0x" + "ab" * 31)
    assert not is_tx_hash("0x" + "zz" * 32)
    assert not is_tx_hash("")
    assert not is_tx_hash(None)


def test_same_address_ignores_case_only() -> None:
    a = "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC"
    assert same_address(a, a.lower())
    assert not same_address(a, "0x90F79bf6EB2c4f870365E785982E1f101E93b906")
    assert not same_address(None, None)
    assert not same_address(a, None)
