"""The claim verdicts and the reconcile decision: pure, every status and holder state."""

from __future__ import annotations

import pytest

from gateway.payment.claims import Verdict, on_conflict
from gateway.payment.reconcile import Action, ChainState, decide, decide_channel


@pytest.mark.parametrize(
    ("status", "alive", "verdict"),
    [
        ("claimed", True, Verdict.IN_FLIGHT),
        ("claimed", False, Verdict.TAKE_OVER),  # nothing charged, its holder is gone
        ("settling", True, Verdict.IN_FLIGHT),
        ("settling", False, Verdict.RECONCILE),  # may be charged: the chain decides
        ("pending", True, Verdict.IN_FLIGHT),  # the previous version's pre-settle record
        ("pending", False, Verdict.RECONCILE),
        ("released", True, Verdict.TAKE_OVER),
        ("released", False, Verdict.TAKE_OVER),
        ("settled", True, Verdict.ALREADY_USED),
        ("settled", False, Verdict.ALREADY_USED),
        ("settlement_pending", False, Verdict.ALREADY_USED),
        ("refund_due", False, Verdict.ALREADY_USED),
        ("failed", True, Verdict.ALREADY_USED),
    ],
)
def test_on_conflict(status: str, alive: bool, verdict: Verdict) -> None:
    assert on_conflict(status, holder_alive=alive) is verdict


@pytest.mark.parametrize(
    ("state", "now", "action"),
    [
        (None, 10_000.0, Action.WAIT),  # no RPC, or it failed: nothing is decided
        (ChainState(used=True, transaction="0xab"), 100.0, Action.SETTLED),
        (ChainState(used=True), 100.0, Action.SETTLED),  # used, transaction not found
        (ChainState(used=False), 100.0 + 89.9, Action.WAIT),  # it may still land
        (ChainState(used=False), 100.0 + 90.0, Action.RELEASE),
    ],
)
def test_decide(state: ChainState | None, now: float, action: Action) -> None:
    assert decide(state, settling_since=100.0, now=now, window=90.0) is action


@pytest.mark.parametrize(
    ("charged", "now", "action"),
    [
        (2000, 101.0, Action.SETTLED),  # the channel charged it: at once, whatever the window
        (3000, 10_000.0, Action.SETTLED),  # and later vouchers since
        (1000, 150.0, Action.WAIT),  # not charged yet: a cut-off holder may still charge it
        (1000, 190.0, Action.RELEASE),  # the window is over: never charged
        (None, 10_000.0, Action.WAIT),  # no channel state (or unreadable): nothing decided
    ],
)
def test_decide_channel(charged: int | None, now: float, action: Action) -> None:
    assert decide_channel(charged, 2000, settling_since=100.0, now=now, window=90.0) is action
