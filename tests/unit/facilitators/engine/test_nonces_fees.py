"""Nonce bookkeeping, refusal classification, fee policy and stuck-transaction decisions."""

from __future__ import annotations

import itertools

import pytest

from gateway.facilitators.engine.fees import (
    DEFAULT_TIP,
    Fees,
    Market,
    StuckAction,
    bumped,
    is_stuck,
    market_fees,
    stuck_action,
)
from gateway.facilitators.engine.nonces import NonceBook, SendRefusal, classify_refusal
from gateway.facilitators.engine.options import GWEI, EngineOptions
from gateway.facilitators.engine.signer import SettlerKey, choose

KEY = "0x" + "11" * 32


def opts(**changes: object) -> EngineOptions:
    return EngineOptions(rpc_url="http://127.0.0.1:1", keys=(KEY,), **changes)  # type: ignore[arg-type]


def test_nonce_book_pipelines_and_never_moves_back() -> None:
    book = NonceBook()
    assert not book.synced
    with pytest.raises(RuntimeError):
        _ = book.next
    book.sync(7)
    for n in (7, 8, 9):  # pipelined: taken one after the other, no receipt awaited
        assert book.next == n
        book.commit(n)
    book.sync(5)  # a lagging node (or dropped transactions) never pulls us back
    assert book.next == 10
    book.sync(12)  # "nonce too low": the key was used elsewhere, jump ahead
    assert book.next == 12
    with pytest.raises(RuntimeError, match="out of order"):
        book.commit(14)


def test_gaps_are_nonces_nobody_holds() -> None:
    book = NonceBook()
    assert book.gaps(0, []) == []
    book.sync(10)
    for n in range(10, 14):
        book.commit(n)
    assert book.gaps(10, [10, 11, 12, 13]) == []
    assert book.gaps(10, [10, 13]) == [11, 12]
    assert book.gaps(12, [12, 13]) == []  # mined below 12: not gaps
    assert book.gaps(14, []) == []


@pytest.mark.parametrize(
    ("message", "refusal"),
    [
        ("nonce too low", SendRefusal.NONCE_TOO_LOW),
        ("Nonce too low. Expected nonce to be 5 but got 4.", SendRefusal.NONCE_TOO_LOW),
        ("transaction already imported", SendRefusal.ALREADY_KNOWN),
        ("already known", SendRefusal.ALREADY_KNOWN),
        ("replacement transaction underpriced", SendRefusal.UNDERPRICED),
        ("max fee per gas less than block base fee", SendRefusal.FEE_TOO_LOW),
        ("insufficient funds for gas * price + value", SendRefusal.NO_FUNDS),
        ("something else", SendRefusal.OTHER),
    ],
)
def test_node_refusals_are_classified(message: str, refusal: SendRefusal) -> None:
    assert classify_refusal(message) is refusal


def test_market_fees_eip1559_and_legacy() -> None:
    o = opts()
    fees = market_fees(Market(base_fee=10 * GWEI, suggested_tip=GWEI, gas_price=None), o)
    assert fees == Fees(max_fee=21 * GWEI, tip=GWEI)
    assert fees.fields() == {"maxFeePerGas": 21 * GWEI, "maxPriorityFeePerGas": GWEI}
    no_tip = market_fees(Market(base_fee=10 * GWEI, suggested_tip=None, gas_price=None), o)
    assert no_tip.tip == DEFAULT_TIP
    fixed = market_fees(Market(10 * GWEI, GWEI, None), opts(priority_fee=3 * GWEI))
    assert fixed == Fees(23 * GWEI, 3 * GWEI)
    legacy = market_fees(Market(base_fee=None, suggested_tip=None, gas_price=5 * GWEI), o)
    assert legacy.legacy and legacy.fields() == {"gasPrice": 6 * GWEI}
    capped = market_fees(Market(10_000 * GWEI, GWEI, None), opts(max_fee_per_gas=100 * GWEI))
    assert capped.max_fee == 100 * GWEI


def test_bumps_are_at_least_the_percentage_and_follow_the_market() -> None:
    o = opts(fee_bump_percent=10)
    old = Fees(max_fee=1001, tip=101)
    calm = bumped(old, Fees(10, 1), o)
    assert calm == Fees(max_fee=1102, tip=112)  # ceilings: +10% is never rounded down
    surge = bumped(old, Fees(50_000, 2_000), o)
    assert surge == Fees(50_000, 2_000)
    assert (
        bumped(Fees(400 * GWEI, GWEI), Fees(GWEI, GWEI), opts(max_fee_per_gas=420 * GWEI)) is None
    )
    legacy = bumped(Fees(100, 100, legacy=True), Fees(1, 1, legacy=True), o)
    assert legacy == Fees(110, 110, legacy=True)


def test_stuck_decisions() -> None:
    o = opts(stuck_blocks=3, stuck_seconds=30, stuck_min_seconds=2)
    assert not is_stuck(2, 29.0, o)
    assert is_stuck(3, 2.0, o)
    assert not is_stuck(300, 1.9, o)  # blocks made on demand, faster than receipts are read
    assert is_stuck(0, 30.0, o)
    market = Fees(100, 10)
    # Lost by the node but still paying enough: the same bytes again.
    assert stuck_action(Fees(100, 10), market, node_has_it=False) is StuckAction.REBROADCAST
    # Lost because the market moved past it (anvil evicts those): outbid.
    assert stuck_action(Fees(50, 10), market, node_has_it=False) is StuckAction.REPLACE
    # Held by the node and not mined: outbid.
    assert stuck_action(Fees(500, 50), market, node_has_it=True) is StuckAction.REPLACE


def test_options_report_every_problem() -> None:
    with pytest.raises(ValueError) as caught:
        EngineOptions(rpc_url="ws://x", keys=(), max_batch=0, fee_bump_percent=5)
    text = str(caught.value)
    for word in ("keys", "rpc_url", "max_batch", "fee_bump_percent"):
        assert word in text
    with pytest.raises(ValueError, match="same key"):
        EngineOptions(rpc_url="http://x", keys=(KEY, KEY))
    assert KEY not in repr(opts())


def test_keys_are_chosen_by_load_and_gas() -> None:
    a, b, c = (SettlerKey("0x" + f"{i:02x}" * 32, 84532) for i in (1, 2, 3))
    turn = itertools.count()
    a.in_flight, b.in_flight, c.in_flight = 2, 0, 0
    picked = {choose([a, b, c], 0, turn).address for _ in range(4)}
    assert picked == {b.address, c.address}  # the least busy, in turns
    b.balance, c.balance = 10, 10**18
    assert choose([a, b, c], 10**17, turn) is c  # b is below the floor
    a.balance = b.balance = c.balance = 0
    assert choose([a, b, c], 10**17, turn) in (b, c)  # nobody funded: still the least busy
    assert "11" * 32 not in repr(a) and a.address in repr(a)
