"""PaymentRecord.with_status: dataclasses.replace()'s result, a fresh `updated_at`;
PaymentRecord.dumps: the JSON of dataclasses.asdict(), byte for byte."""

from __future__ import annotations

import dataclasses
import json
import time
from typing import get_args

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.store.records import PaymentRecord, Status

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


_VALUES = st.none() | st.text(max_size=8) | st.floats(allow_nan=False)
_STATUSES = st.sampled_from(["claimed", "settling", "settled", "failed", "refund_due"])
_NAMES = [f.name for f in dataclasses.fields(PaymentRecord) if f.name != "status"]


@settings(max_examples=300, deadline=None)
@given(_STATUSES, st.dictionaries(st.sampled_from(_NAMES), _VALUES, max_size=6))
def test_with_status_is_replace_for_any_change(status: str, changes: dict[str, object]) -> None:
    """Field by field (by position inside) as `dataclasses.replace`, every field changeable;
    `updated_at` is the clock's whatever the changes say."""
    new = RECORD.with_status(status, **changes)  # type: ignore[arg-type]
    changes = {**changes, "updated_at": new.updated_at}
    assert new == dataclasses.replace(RECORD, status=status, **changes)  # type: ignore[arg-type]
    assert new.updated_at >= 2.0


# --- dumps: asdict's JSON, byte for byte ---------------------------------------------------

_TEXT = st.text()  # any Unicode: escaping (ensure_ascii) must match too
_OPTIONAL = st.none() | _TEXT
_TIMES = st.floats(allow_nan=True, allow_infinity=True)  # NaN/Infinity: json's own spelling
_RECORDS = st.builds(
    PaymentRecord,
    status=st.sampled_from(get_args(Status)),
    request_id=_TEXT,
    route=_TEXT,
    payer=_TEXT,
    amount=_TEXT,
    asset=_TEXT,
    network=_TEXT,
    nonce=_TEXT,
    transaction=_OPTIONAL,
    reason=_OPTIONAL,
    holder=_OPTIONAL,
    created_at=_TIMES,
    updated_at=_TIMES,
    channel=_OPTIONAL,
    cumulative=_OPTIONAL,
)


@settings(max_examples=500, deadline=None)
@given(_RECORDS)
def test_dumps_is_asdicts_json(record: PaymentRecord) -> None:
    assert record.dumps() == json.dumps(dataclasses.asdict(record), separators=(",", ":"))


def test_as_dict_is_asdict_and_dumps_reads_back() -> None:
    assert RECORD.as_dict() == dataclasses.asdict(RECORD)
    assert list(RECORD.as_dict()) == [f.name for f in dataclasses.fields(PaymentRecord)]
    assert PaymentRecord.loads(RECORD.dumps()) == RECORD
