"""What the gateway remembers about a payment: enough for the operator's books and to answer
a retried payment from the record instead of charging it twice."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

Status = Literal["pending", "settled", "failed", "settlement_pending", "refund_due"]


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
