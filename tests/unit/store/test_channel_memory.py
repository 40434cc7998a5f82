"""gateway.store.channel_memory: the SDK's channel storage contract as the SDK's own
`InMemoryChannelStorage` keeps it (held side by side on the same calls), and `change()`, a
record changed in place under the same lock as every other writer."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from x402.mechanisms.evm.batch_settlement.server.storage import Channel, InMemoryChannelStorage

from gateway.store.channel_memory import MemoryChannels
from tests.unit.store.test_channels import channel_id, new_channel


def charge(by: int) -> Any:
    def update(current: Channel | None) -> Channel | None:
        if current is None:
            return None
        following = current.copy()
        following.charged_cumulative_amount = str(int(current.charged_cumulative_amount) + by)
        return following

    return update


def test_every_call_answers_as_the_sdks_in_memory_storage() -> None:
    cid = channel_id()
    ours, sdk = MemoryChannels(), InMemoryChannelStorage()
    calls: list[Any] = [
        ("update_channel", cid, lambda _: new_channel(cid)),  # created
        ("update_channel", cid, lambda current: current),  # unchanged
        ("update_channel", cid, charge(1000)),  # updated
        ("get", cid.upper().replace("0X", "0x")),  # ids are normalized
        ("list",),
        ("update_channel", "0x" + "00" * 32, lambda current: current),  # none, unchanged
        ("update_channel", cid, lambda _: None),  # deleted
        ("update_channel", cid, lambda _: None),  # nothing to delete: unchanged
        ("get", cid),
    ]
    for name, *args in calls:
        got = [getattr(storage, name)(*args) for storage in (ours, sdk)]
        assert _plain(got[0]) == _plain(got[1]), name
    for storage in (ours, sdk):
        with pytest.raises(ValueError):
            storage.get("0x1234")  # not a bytes32 id: refused alike


def _plain(value: Any) -> Any:
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, Channel):
        return value.to_dict()
    if value is None:
        return None
    return (_plain(value.channel), value.status)


def test_reads_are_copies_and_a_change_in_place_is_seen_whole() -> None:
    cid = channel_id()
    storage = MemoryChannels()
    storage.update_channel(cid, lambda _: new_channel(cid))
    read = storage.get(cid)
    assert read is not None
    read.charged_cumulative_amount = "999"  # a copy: the stored record is untouched
    assert storage.get(cid).charged_cumulative_amount == "0"  # type: ignore[union-attr]

    def double(stored: Channel | None) -> bool:
        assert stored is not None
        stored.charged_cumulative_amount = "2000"
        stored.signed_max_claimable = "2000"
        return True

    assert storage.change(cid, double) is True
    after = storage.get(cid)
    assert after is not None and (after.charged_cumulative_amount, after.signed_max_claimable) == (
        "2000",
        "2000",
    )
    assert storage.change("0x" + "00" * 32, lambda stored: stored is None)  # no such channel


def test_changes_in_place_and_updates_from_threads_lose_nothing() -> None:
    cid = channel_id()
    storage = MemoryChannels()
    storage.update_channel(cid, lambda _: new_channel(cid))

    def bump(stored: Channel | None) -> None:
        assert stored is not None
        stored.charged_cumulative_amount = str(int(stored.charged_cumulative_amount) + 1)

    def in_place() -> None:
        for _ in range(500):
            storage.change(cid, bump)

    def by_update() -> None:
        for _ in range(500):
            storage.update_channel(cid, charge(1))

    with ThreadPoolExecutor(4) as pool:
        for done in [pool.submit(f) for f in (in_place, by_update, in_place, by_update)]:
            done.result()
    assert storage.get(cid).charged_cumulative_amount == "2000"  # type: ignore[union-attr]


def test_change_finds_a_channel_by_any_spelling_of_its_id_and_refuses_a_malformed_one() -> None:
    """A stored id is used as it is (no check again); any other is normalized or refused,
    as `get` does."""
    cid = channel_id()
    storage = MemoryChannels()
    storage.update_channel(cid, lambda _: new_channel(cid))
    for spelling in (cid, "0x" + cid[2:].upper()):
        assert storage.change(spelling, lambda stored: stored is not None and stored.channel_id)
    assert storage.change("0x" + "0f" * 32, lambda stored: stored) is None  # no such channel
    with pytest.raises(ValueError):
        storage.change("0x1234", lambda stored: stored)  # not a bytes32 id
    with pytest.raises(ValueError):
        storage.change(cid.upper(), lambda stored: stored)  # `0X`: not canonical, as `get`
