"""A payment record's change of status (gateway/store/records.py)."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from gateway.store.records import PaymentRecord

RECORD = PaymentRecord(
    status="claimed",
    request_id="req-1",
    route="GET /paid",
    payer="0x" + "11" * 20,
    amount="1000",
    asset="0x" + "22" * 20,
    network="eip155:84532",
    nonce="0x" + "33" * 32,
    holder="h-1",
    created_at=1.0,
    updated_at=2.0,
    channel="0x" + "44" * 32,
    cumulative="5000",
)


@pytest.mark.parametrize(
    "changes",
    [{}, {"transaction": "0x01"}, {"reason": "origin answered 500", "amount": "7"}],
)
def test_with_status_changes_what_dataclasses_replace_would(changes: dict[str, Any]) -> None:
    changed = RECORD.with_status("settled", **changes)
    assert changed.updated_at > RECORD.updated_at
    expected = dataclasses.replace(
        RECORD, status="settled", updated_at=changed.updated_at, **changes
    )
    assert changed == expected
    assert RECORD.status == "claimed"  # the record itself is unchanged (frozen)


def test_with_status_refuses_a_field_the_record_does_not_have() -> None:
    with pytest.raises(TypeError):
        RECORD.with_status("settled", colour="red")
