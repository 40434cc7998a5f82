"""PaymentRecord.with_status: dataclasses.replace()'s result, a fresh `updated_at`."""

from __future__ import annotations

import dataclasses
import time

import pytest

from gateway.store.records import PaymentRecord

RECORD = PaymentRecord(
    status="claimed",
    request_id="r1",
    route="/paid/*",
    payer="0x" + "ab" * 20,
    amount="1000",
    asset="0x" + "cd" * 20,
    network="eip155:84532",
    nonce="0x" + "01" * 32,
    holder="h1",
    created_at=1.0,
    updated_at=2.0,
    channel="0x" + "02" * 32,
    cumulative="7",
)


@pytest.mark.parametrize(
    "changes",
    [{}, {"transaction": "0x01"}, {"reason": "why", "amount": "5"}, {"holder": None}],
)
def test_with_status_is_replace_with_a_fresh_update_time(changes: dict[str, object]) -> None:
    before = time.time()
    new = RECORD.with_status("settled", **changes)  # type: ignore[arg-type]
    assert before <= new.updated_at <= time.time()
    expected = dataclasses.replace(RECORD, status="settled", updated_at=new.updated_at, **changes)
    assert new == expected
    assert RECORD.status == "claimed" and RECORD.updated_at == 2.0  # the old one unchanged


def test_with_status_refuses_an_unknown_field() -> None:
    with pytest.raises(TypeError):
        RECORD.with_status("settled", colour="red")  # type: ignore[arg-type]
