"""Reconciling a claim whose holder died while it may have been settling: the decision alone.

The chain is the judge. EIP-3009 `authorizationState(authorizer, nonce)` says whether the
authorization was used, and the token's `AuthorizationUsed(authorizer, nonce)` log names the
transaction. Used: the payment is settled (a retry gets 409 with the transaction). Not used:
the facilitator may still be broadcasting the settlement it was asked for, so the claim is
released only once that could no longer land (the settle window: the facilitator's timeout
and a margin, counted from when `settling` was written). Unknown (no RPC for the network, or
the RPC failed): nothing changes, the claim stays in flight until it expires.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Protocol

SETTLE_MARGIN = 60.0  # seconds past the facilitator's timeout before "not used" is believed


@dataclass(frozen=True, slots=True)
class ChainState:
    used: bool
    transaction: str | None = None  # the transaction that used it, when found


class ChainReader(Protocol):
    """Reads the chain for reconciliation (gateway.facilitators.chain)."""

    def covers(self, network: str) -> bool: ...

    async def authorization(
        self, network: str, token: str, authorizer: str, nonce: str
    ) -> ChainState: ...

    async def close(self) -> None: ...


class Action(Enum):
    SETTLED = "settled"  # record it settled, with the transaction
    RELEASE = "release"  # nothing was charged and nothing can be any more
    WAIT = "wait"  # not yet known: leave it in flight


def decide(state: ChainState | None, *, settling_since: float, now: float, window: float) -> Action:
    if state is None:
        return Action.WAIT
    if state.used:
        return Action.SETTLED
    if now >= settling_since + window:
        return Action.RELEASE
    return Action.WAIT
