"""What the engine knows of each payment and each transaction, and the pure decisions made
on it when the chain moves (receipts found, a reorg, a nonce taken). No I/O here.

Safety rests on two facts: every transaction the engine signs for a nonce carries the same
calldata (replacements change fees only), and a token consumes an EIP-3009 authorization
once. So a payment can never be paid twice; what these decisions guard is the answer: a
payer is told "failed" only when its transfer provably did not happen, and "pending" when
that cannot be known.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from x402.mechanisms.evm.constants import ERR_TRANSACTION_FAILED, ERR_TRANSFER_EVENT_MISMATCH

from gateway.payment.eip3009 import Authorization

from .calls import ContractCall, authorization_used
from .signer import SettlerKey, SignedTx


class Kind(Enum):
    SETTLED = "settled"  # on chain, this payment's transfer happened
    FAILED = "failed"  # mined, and this payment's transfer provably did not happen
    REFUSED = "refused"  # never broadcast: the simulation said it would fail
    UNAVAILABLE = "unavailable"  # never broadcast: the node could not be used
    PENDING = "pending"  # broadcast (or maybe): the outcome is not known


@dataclass(frozen=True, slots=True)
class Outcome:
    kind: Kind
    transaction: str = ""
    reason: str | None = None
    message: str | None = None


@dataclass(slots=True, eq=False)
class Payment:
    """One payment on its way to the chain."""

    auth: Authorization
    token: str
    call: ContractCall
    future: asyncio.Future[Outcome]
    transaction: str = ""  # the latest transaction carrying it, once broadcast
    broadcast: bool = False  # once true, a later refusal can no longer be believed
    waiters: int = 0  # settle() calls waiting on it right now

    @property
    def identity(self) -> tuple[str, str, bytes]:
        return (self.token.lower(), self.auth.payer, self.auth.nonce)

    def resolve(self, outcome: Outcome) -> None:
        if not self.future.done():
            self.future.set_result(outcome)


@dataclass(frozen=True, slots=True)
class Inclusion:
    tx_hash: str
    block_number: int
    block_hash: str


@dataclass(slots=True, eq=False)
class Tracked:
    """One nonce of one settler: every transaction signed for it (same data, rising fees)."""

    key: SettlerKey
    nonce: int
    to: str
    data: bytes
    payments: list[Payment]
    attempts: list[SignedTx] = field(default_factory=list)
    first_sent: float = 0.0
    last_sent: float = 0.0
    last_sent_block: int = 0
    included: Inclusion | None = None
    outcomes_known: bool = False
    # Polls that saw the nonce used but none of ours mined, and since when: a node can count
    # a nonce a moment before it serves the receipt, so only a lasting absence counts.
    missing_polls: int = 0
    missing_since: float | None = None
    filler: bool = False  # a 0-value transaction filling a nonce gap, no payments

    @property
    def latest(self) -> SignedTx:
        return self.attempts[-1]

    def attempt(self, tx_hash: str) -> SignedTx | None:
        return next((a for a in self.attempts if a.hash == tx_hash), None)


def outcomes(tracked: Tracked, receipt: dict[str, Any]) -> list[Outcome]:
    """Each payment's outcome in the order of `tracked.payments`, from its mined receipt."""
    tx_hash = str(receipt.get("transactionHash", "")).lower()
    if receipt.get("status") != "0x1":
        reverted = Outcome(Kind.FAILED, tx_hash, ERR_TRANSACTION_FAILED, "transaction reverted")
        return [reverted] * len(tracked.payments)
    logs = receipt.get("logs") or []
    batched = len(tracked.payments) > 1 or tracked.to.lower() != tracked.payments[0].token.lower()
    missing = ERR_TRANSACTION_FAILED if batched else ERR_TRANSFER_EVENT_MISMATCH
    out: list[Outcome] = []
    for p in tracked.payments:
        if authorization_used(logs, p.token, p.auth):
            out.append(Outcome(Kind.SETTLED, tx_hash))
        else:
            out.append(Outcome(Kind.FAILED, tx_hash, missing, "its call failed in the batch"))
    return out


class Recheck(Enum):
    KEEP = "keep"  # still where it was
    MOVED = "moved"  # mined in another block of the new chain
    DROPPED = "dropped"  # not on the canonical chain any more: broadcast it again


def recheck(inclusion: Inclusion, receipt: dict[str, Any] | None) -> Recheck:
    """After a reorg, what became of an included transaction, from a fresh receipt."""
    if receipt is None:
        return Recheck.DROPPED
    if str(receipt.get("blockHash", "")).lower() == inclusion.block_hash:
        return Recheck.KEEP
    return Recheck.MOVED


def inclusion_of(receipt: dict[str, Any]) -> Inclusion:
    return Inclusion(
        tx_hash=str(receipt["transactionHash"]).lower(),
        block_number=int(str(receipt["blockNumber"]), 16),
        block_hash=str(receipt["blockHash"]).lower(),
    )


def reorged(anchor: tuple[int, str] | None, block_at_anchor: dict[str, Any] | None) -> bool:
    """Whether the block we last saw as head is no longer on the canonical chain: any reorg
    touching a block at or below it replaces it too. (One extra header per poll.)"""
    if anchor is None:
        return False
    if block_at_anchor is None:
        return True  # the chain is now shorter than what we saw
    return str(block_at_anchor.get("hash", "")).lower() != anchor[1]


def is_final(inclusion: Inclusion, head: int, depth: int) -> bool:
    return head - inclusion.block_number >= depth


NONCE_TAKEN_POLLS = 3


def missing(tracked: Tracked, now: float) -> None:
    """Its nonce is used and none of its transactions has a receipt, in this poll."""
    tracked.missing_polls += 1
    if tracked.missing_since is None:
        tracked.missing_since = now


def nonce_taken(tracked: Tracked, now: float, after: float) -> bool:
    """The node has counted this nonce as used for a while, yet none of our transactions
    for it is mined: another sender used our key. Its payments must go out again under a
    new nonce. (Never decided on one poll: nodes count a nonce a moment before they serve
    its receipt, and a load balancer can ask a node that lags.)"""
    since = tracked.missing_since
    return tracked.missing_polls >= NONCE_TAKEN_POLLS and since is not None and now - since >= after
