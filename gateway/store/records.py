"""What the gateway remembers about a payment: enough for the operator's books and to answer
a retried payment from the record instead of charging it twice.

A record's life: `claimed` (written before anything is verified), `settling` (written
BEFORE the facilitator's /settle is called: from here on the payment may have been charged,
so the claim is never released on a hang-up), then `settled` (with the transaction),
`failed` (the facilitator refused: nothing charged, the claim is released and the record
stays `failed` in the books), `settlement_pending` (sent, outcome unknown), `refund_due`
(settled up front, then the origin failed) or `released` (nothing was charged: the claim is
gone and the payer may use the authorization again).

`verified` is not written to the store: it would cost a round trip per paid request and
tells recovery nothing that `claimed` does not (both mean "nothing charged"). `pending` is
what the previous version wrote before it settled: read as `settling` (it may be charged).
A record left `claimed` or `settling` belongs to a request in flight, or to a process that
died mid-request.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from operator import attrgetter
from typing import Any, Literal

Status = Literal[
    "claimed",
    "settling",
    "pending",  # written by the previous version before settling: read as `settling`
    "settled",
    "failed",
    "settlement_pending",
    "refund_due",
    "released",
]
# Held by a request that has not finished: a copy of the payment must wait (409 in flight).
IN_FLIGHT: frozenset[str] = frozenset({"claimed", "settling", "pending"})
# The facilitator may have been asked to settle and its answer is not recorded: never release.
MAY_BE_CHARGED: frozenset[str] = frozenset({"settling", "pending"})
# What a claim's holder may delete: nothing was charged (the stores refuse anything else).
RELEASABLE: frozenset[str] = frozenset({"claimed", "failed"})


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
    holder: str | None = None  # the process holding the claim (its store's heartbeat id)
    created_at: float = field(default_factory=time.time)
    updated_at: float = field(default_factory=time.time)
    # A channel deposit's or voucher's channel id and cumulative amount (atomic units): its
    # charge is in the channel state, not on chain, and is reconciled there. None: not a
    # channel payment (or written before these fields: such records read as before).
    channel: str | None = None
    cumulative: str | None = None

    def with_status(self, status: Status, **changes: Any) -> PaymentRecord:
        # What dataclasses.replace() does, without its per-field lookups and checks (~19
        # Python calls; a paid request changes its record's status twice or three times),
        # and by position: matching 15 keywords costs more than the rest of it.
        values = list(_field_values(self))
        for name, value in changes.items():
            if name not in _FIELD_AT:
                raise TypeError(f"PaymentRecord has no field {name!r}")
            values[_FIELD_AT[name]] = value
        values[_STATUS_AT] = status
        values[_UPDATED_AT] = time.time()
        return PaymentRecord(*values)

    def as_dict(self) -> dict[str, Any]:
        """`dataclasses.asdict(self)`: the fields are str, float or None (nothing to recurse
        into or copy), so a dict of their values is the same, without asdict's deep copy
        and per-value checks (a few dozen Python calls a record, four records a voucher)."""
        return dict(zip(_FIELD_NAMES, _field_values(self), strict=True))

    def dumps(self) -> str:
        # `json.dumps(asdict(self), separators=(",", ":"))`, byte for byte, with one encoder
        # built once (json.dumps builds one per call for non-default separators).
        return _encode(self.as_dict())

    @classmethod
    def loads(cls, text: str | bytes) -> PaymentRecord:
        data = json.loads(text)
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})

    @property
    def in_flight(self) -> bool:
        return self.status in IN_FLIGHT


_FIELD_NAMES = tuple(f.name for f in fields(PaymentRecord))
_field_values = attrgetter(*_FIELD_NAMES)
_FIELD_AT = {name: at for at, name in enumerate(_FIELD_NAMES)}  # positional __init__
_STATUS_AT, _UPDATED_AT = _FIELD_AT["status"], _FIELD_AT["updated_at"]
_encode = json.JSONEncoder(separators=(",", ":")).encode  # configuration only: no state


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
