"""The claim verdicts and the reconcile decision: pure, every status and holder state."""

from __future__ import annotations

import pytest

from gateway.payment.claims import Verdict, on_conflict
from gateway.payment.reconcile import Action, ChainState, decide


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
