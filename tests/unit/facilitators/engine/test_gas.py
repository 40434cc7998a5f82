"""Gas limits from a kept estimate instead of an eth_estimateGas per transaction."""

from __future__ import annotations

from gateway.facilitators.engine.calls import ContractCall
from gateway.facilitators.engine.gas import (
    HINT_TTL,
    INTRINSIC,
    MULTICALL_OVERHEAD,
    STATE_SLACK,
    GasHints,
)

TOKEN = "0x" + "aa" * 20
TRANSFER = ContractCall(TOKEN, b"\xe3\xee\x16\x0e" + b"\x00" * 300)
OTHER = ContractCall(TOKEN, b"\xcf\x09\x29\x95" + b"\x00" * 400)


def test_unknown_until_estimated_then_padded_per_call() -> None:
    now = [0.0]
    hints = GasHints(25, clock=lambda: now[0])
    assert hints.limit([TRANSFER]) is None
    hints.learn(TRANSFER, 69_000)  # an estimate for the call sent on its own
    single = hints.limit([TRANSFER])
    assert single == INTRINSIC + 48_000 * 125 // 100 + STATE_SLACK
    assert single is not None and single > 69_000 * 125 // 100  # never under a padded estimate
    batch = hints.limit([TRANSFER] * 50)
    assert batch == INTRINSIC + MULTICALL_OVERHEAD + 50 * (60_000 + STATE_SLACK)
    assert hints.limit([TRANSFER, OTHER]) is None  # another overload: its own estimate
    now[0] = HINT_TTL + 1
    assert hints.limit([TRANSFER]) is None  # estimated again now and then
    assert hints.padded(100_000) == 125_000
