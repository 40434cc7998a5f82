"""Reconciling a claim whose holder died while it may have been settling: the decision alone.

The chain is the judge. EIP-3009 `authorizationState(authorizer, nonce)` says whether the
authorization was used, and the token's `AuthorizationUsed(authorizer, nonce)` log names the
transaction. Used: the payment is settled (a retry gets 409 with the transaction). Not used:
the facilitator may still be broadcasting the settlement it was asked for, so the claim is
released only once that could no longer land (the settle window: the facilitator's timeout
and a margin, counted from when `settling` was written). Unknown (no RPC for the network, or
the RPC failed): nothing changes, the claim stays in flight until it expires.

A channel deposit's or voucher's record is judged by the channel state instead (its voucher
moves nothing on chain: the claim schedule claims it later, from the channel state, which
is the truth for the receiver's money): charged when the channel's charged cumulative
amount reached the voucher's; else released once the settle window is over (a holder cut
off from the store could still be charging until then); unknown (no channel state, or the
store failed) waits.
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


def decide_channel(
    charged: int | None, cumulative: int, *, settling_since: float, now: float, window: float
) -> Action:
    """A channel payment's record, by the channel's `charged` cumulative amount (None: not
    known) against the voucher's `cumulative` amount."""
    if charged is None:
        return Action.WAIT
    if charged >= cumulative:
        return Action.SETTLED
    if now >= settling_since + window:
        return Action.RELEASE
    return Action.WAIT


def decide(state: ChainState | None, *, settling_since: float, now: float, window: float) -> Action:
    if state is None:
        return Action.WAIT
    if state.used:
        return Action.SETTLED
    if now >= settling_since + window:
        return Action.RELEASE
    return Action.WAIT
