"""The channel state in this process's memory (`store: memory`): the SDK's `ChannelStorage`
protocol as its `InMemoryChannelStorage` keeps it (thread-safe; every read a copy; an
update runs on a copy and replaces the record), for the SDK's server scheme (its hooks, in
their threads), the claim schedule, recovery and `x402-gateway channels`; and `change()`,
the voucher fast path's plain change of a record in place (issue 14): one lock, no copy,
where the SDK's update costs three copies and four lock operations a call.

Every caller goes through the one lock, so each sees a whole record: a change in place is
never half-seen. Nothing outside holds a stored record (reads and results are copies, and
an update's result is stored as a copy), so a change in place is seen only through here.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

from x402.mechanisms.evm.batch_settlement.server.storage import (
    Channel,
    ChannelUpdate,
    ChannelUpdateResult,
)
from x402.mechanisms.evm.batch_settlement.utils import normalize_channel_id

T = TypeVar("T")


class MemoryChannels:
    def __init__(self) -> None:
        self._channels: dict[str, Channel] = {}
        # Reentrant: an update callback that reads the storage does not deadlock.
        self._lock = threading.RLock()

    def get(self, channel_id: str) -> Channel | None:
        key = normalize_channel_id(channel_id)
        with self._lock:
            found = self._channels.get(key)
            return found.copy() if found is not None else None

    def list(self) -> list[Channel]:
        with self._lock:
            return [c.copy() for c in self._channels.values()]

    def update_channel(self, channel_id: str, update: ChannelUpdate) -> ChannelUpdateResult:
        """The SDK's contract: `update` gets a copy (or None); returning that very copy is
        "unchanged", None deletes, anything else replaces the record."""
        key = normalize_channel_id(channel_id)
        with self._lock:
            current = self._channels.get(key)
            snapshot = current.copy() if current is not None else None
            following = update(snapshot)
            if following is snapshot:
                return ChannelUpdateResult(channel=snapshot, status="unchanged")
            if following is None:
                had = self._channels.pop(key, None) is not None
                return ChannelUpdateResult(channel=None, status="deleted" if had else "unchanged")
            # A copy is stored, not `following`: its maker may keep it, and a record is
            # changed in place (`change`), so no stored record may be anyone else's object.
            self._channels[key] = following.copy()
            return ChannelUpdateResult(channel=following, status="updated")

    def change(self, channel_id: str, apply: Callable[[Channel | None], T]) -> T:
        """`apply` to the stored record itself (None: no such channel), under the lock.
        `apply` decides before it writes (a refusal changes nothing) and never raises once
        it has started writing; it must not keep the record (nothing may hold one)."""
        # A stored id is normalized already (and normalizing it again changes nothing): the
        # fast path's ids are, so one C lookup spares the SDK's two Python calls a voucher.
        key = channel_id if channel_id in self._channels else normalize_channel_id(channel_id)
        with self._lock:
            return apply(self._channels.get(key))
