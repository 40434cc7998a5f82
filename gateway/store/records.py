"""What the gateway remembers about a payment: enough for the operator's books and to answer
a retried payment from the record instead of charging it twice.

A record's life: `pending` (claimed, written before anything is verified or settled), then
`settled` (with the transaction), `failed` (with the reason), `settlement_pending` (sent,
outcome unknown), `refund_due` (settled up front, then the origin failed) or `released`
(nothing was charged and nothing settled: the claim is gone and the payer may use the
authorization again; a `failed` claim is released too, and stays `failed` in the books).
A `pending` record that stays pending belongs to a request that is in flight, or to a
process that died mid-request: the operator reconciles it against the chain.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

Status = Literal["pending", "settled", "failed", "settlement_pending", "refund_due", "released"]


@dataclass(frozen=True, slots=True)
class PaymentRecord:
    status: Status
    request_id: str
    route: str
    payer: str
    amount: str  # atomic units
    asset: str
    network: str
    nonce: str
    transaction: str | None = None
    reason: str | None = None
    created_at: float = field(default_factory=time.time)
    updated_at: float = field(default_factory=time.time)

    def with_status(self, status: Status, **changes: Any) -> PaymentRecord:
        return replace(self, status=status, updated_at=time.time(), **changes)

    def dumps(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def loads(cls, text: str | bytes) -> PaymentRecord:
        data = json.loads(text)
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})

    @property
    def in_flight(self) -> bool:
        return self.status == "pending"


def latest_per_request(history: Iterable[PaymentRecord], limit: int) -> list[PaymentRecord]:
    """A newest-first history of record changes -> each request's newest record, newest
    first, at most `limit`: one row per payment attempt, in its current state."""
    seen: set[str] = set()
    rows: list[PaymentRecord] = []
    for record in history:
        if len(rows) >= limit:
            break
        if record.request_id not in seen:
            seen.add(record.request_id)
            rows.append(record)
    return rows
