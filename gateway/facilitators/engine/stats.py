"""What the engine tells the outside about itself, without importing any metrics library.

`EngineStats` holds counters and gauges a metrics exporter can read at scrape time;
`Observer` is told each distribution sample as it happens (batch sizes, receipt latency)
for a histogram. Both are plain: the gateway's metrics module adapts them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields

# Told of each sample: ("batch_size", n) per transaction sent, ("receipt_latency", seconds)
# from first broadcast to receipt, ("replaced", 1) and ("reorged", 1) per event.
Observer = Callable[[str, float], None]


@dataclass(frozen=True, slots=True)
class KeyState:
    address: str
    balance: int | None  # wei, as last read (None: not read yet)
    in_flight: int  # transactions sent and not yet final
    next_nonce: int | None


@dataclass(slots=True)
class EngineStats:
    settled: int = 0  # payments whose transfer happened
    failed: int = 0  # payments mined without their transfer (not charged)
    refused: int = 0  # payments the simulation refused (nothing sent)
    answered_pending: int = 0  # settle() calls answered settlement_pending
    transactions: int = 0  # new transactions broadcast (replacements not counted)
    batches: int = 0  # transactions carrying more than one payment
    batched_payments: int = 0
    replaced: int = 0  # replacements with higher fees (same nonce, same calldata)
    rebroadcast: int = 0  # the same signed bytes sent again (lost by the node, or reorged)
    reorged: int = 0  # receipts that left the canonical chain
    reorg_lost: int = 0  # payments settled, then failing once re-landed (an alert)
    gap_fills: int = 0  # nonce gaps filled with an empty transaction
    requeued: int = 0  # payments sent again after another sender took their nonce
    pending_transactions: int = 0  # sent, not yet mined
    receipt_latency_sum: float = 0.0
    receipt_latency_count: int = 0
    observer: Observer | None = field(default=None, repr=False)

    def observe(self, name: str, value: float) -> None:
        if name == "receipt_latency":
            self.receipt_latency_sum += value
            self.receipt_latency_count += 1
        if self.observer is not None:
            self.observer(name, value)

    def snapshot(self) -> dict[str, float]:
        # Not asdict(): it deep-copies every field, the observer too (a metrics exporter's
        # bound method, holding locks that cannot be copied).
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "observer"}
