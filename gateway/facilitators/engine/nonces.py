"""The settlers' nonces, kept in process so transactions are pipelined (sent without waiting
for the previous receipt), and what a node's refusal of a broadcast means for them.

A nonce is taken under its key's send lock and counts as used only once the node accepted
the transaction (or may have: a broadcast whose answer was lost is tracked as sent). So a
refused broadcast leaves no gap; a gap can only come from outside (a transaction the node
lost, or the key used elsewhere) and is filled by the watcher.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import Enum


class NonceBook:
    """One settler key's next nonce."""

    def __init__(self) -> None:
        self._next: int | None = None

    @property
    def synced(self) -> bool:
        return self._next is not None

    @property
    def next(self) -> int:
        if self._next is None:
            raise RuntimeError("nonce book used before it was synced with the node")
        return self._next

    def sync(self, node_pending: int) -> None:
        """Align with the node's `pending` count. Never moves back: a nonce we handed out
        may be in flight to the node, and reusing it would make two transactions of one."""
        self._next = node_pending if self._next is None else max(self._next, node_pending)

    def commit(self, nonce: int) -> None:
        """The transaction with `nonce` was accepted (or may have been)."""
        if nonce != self.next:
            raise RuntimeError(f"nonce {nonce} committed out of order (next is {self.next})")
        self._next = nonce + 1

    def gaps(self, node_mined: int, tracked: Iterable[int]) -> list[int]:
        """Nonces at or above the node's mined count and below ours that no transaction we
        track holds: nothing will ever mine them, and everything above them waits."""
        if self._next is None:
            return []
        held = set(tracked)
        return [n for n in range(node_mined, self._next) if n not in held]


class SendRefusal(Enum):
    """Why a node refused `eth_sendRawTransaction` (it answered: nothing was broadcast)."""

    ALREADY_KNOWN = "already_known"  # it has exactly this transaction: as good as accepted
    NONCE_TOO_LOW = "nonce_too_low"  # the nonce is used: resync, sign again
    UNDERPRICED = "underpriced"  # another transaction holds the nonce in the pool
    FEE_TOO_LOW = "fee_too_low"  # below the next block's base fee: read the market again
    NO_FUNDS = "no_funds"  # the settler cannot pay for gas
    OTHER = "other"


_MARKERS: tuple[tuple[SendRefusal, tuple[str, ...]], ...] = (
    (
        SendRefusal.ALREADY_KNOWN,
        (
            "already known",
            "known transaction",
            "alreadyknown",
            "already imported",
            "already exists",
        ),
    ),
    (
        SendRefusal.NONCE_TOO_LOW,
        (
            "nonce too low",
            "noncetoolow",
            "oldnonce",
            "nonce has already been used",
            "invalid nonce",
        ),
    ),
    (
        SendRefusal.FEE_TOO_LOW,
        (
            "less than block base fee",
            "fee cap less than",
            "max fee per gas less than",
            "fee too low",
        ),
    ),
    (SendRefusal.UNDERPRICED, ("underpriced",)),
    (SendRefusal.NO_FUNDS, ("insufficient funds", "insufficientfunds")),
)


def classify_refusal(message: str) -> SendRefusal:
    text = message.lower()
    for refusal, markers in _MARKERS:
        if any(marker in text for marker in markers):
            return refusal
    return SendRefusal.OTHER
