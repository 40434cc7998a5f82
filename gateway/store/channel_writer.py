"""The channel state changed from the event loop, in one store round trip (issue 14, the
voucher fast path): the same `update(current) -> next` contract as the SDK's
`ChannelStorage.update_channel`, on the same stored representation (the SDK's
`Channel.to_dict()` as compact JSON under `x402:channel:<id>`, see `gateway.store.channels`),
so the SDK's scheme, its claim manager and `x402-gateway channels` read what this writes.

Redis: a compare-and-set script. The update runs here, in Python (the SDK's big integers
stay strings and Python ints: no Lua number, which cjson would turn into a double), on the
channel's last known JSON; the script writes the next JSON only if the key still holds
exactly that text, else returns what it holds and the update runs again on it. The last JSON
this process wrote or read is cached per channel (bounded), so a channel served by this
replica costs one round trip per change; a miss costs one more. Equivalent to the WATCH/MULTI
transaction of `RedisChannelStorage` (both write only over the exact state they decided
from), so the two can change one channel side by side.

Memory: `MemoryChannels` (gateway/store/channel_memory.py; or the SDK's
`InMemoryChannelStorage`), thread-safe, its update a few microseconds of Python: called on
the loop; `change_now` lets the fast path change a record itself, without the copies.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

from cachetools import LRUCache
from x402.mechanisms.evm.batch_settlement.server.storage import (
    Channel,
    ChannelStorage,
    ChannelUpdate,
    ChannelUpdateResult,
    InMemoryChannelStorage,
)

from ..errors import StoreUnavailable
from .channel_memory import MemoryChannels
from .channels import CHANNEL_PREFIX, INDEX_KEY, RedisChannelStorage

MAX_ATTEMPTS = 50  # compare-and-set retries of one change under contention
CACHED_CHANNELS = 4096  # channels whose last JSON this process keeps

T = TypeVar("T")

# KEYS: the channel, the index. ARGV: the JSON decided from ("" = no channel), the next
# JSON, the channel id. Returns 1 when written, else the JSON the key holds ("" = none).
_COMPARE_AND_SET = """
local current = redis.call('GET', KEYS[1]) or ''
if current ~= ARGV[1] then return {current} end
redis.call('SET', KEYS[1], ARGV[2])
redis.call('SADD', KEYS[2], ARGV[3])
return 1
"""


class ChannelWriter(Protocol):
    async def update(self, channel_id: str, update: ChannelUpdate) -> ChannelUpdateResult:
        """`update` is pure (it may run more than once) and never deletes (returns None
        only when given None)."""
        ...


class InPlaceUpdate(Protocol):
    """A pure update (`ChannelUpdate`) that can also make its change on the stored record
    itself (`in_place`: whether it changed it)."""

    def __call__(self, current: Channel | None) -> Channel | None: ...

    def in_place(self, stored: Channel | None) -> bool: ...


class MemoryChannelWriter:
    def __init__(self, storage: InMemoryChannelStorage | MemoryChannels) -> None:
        self._storage = storage
        # The gateway's own memory storage changes records in place (the voucher fast path).
        self._in_place = storage if isinstance(storage, MemoryChannels) else None

    async def update(self, channel_id: str, update: ChannelUpdate) -> ChannelUpdateResult:
        return self.update_now(channel_id, update)

    def update_now(self, channel_id: str, update: ChannelUpdate) -> ChannelUpdateResult:
        """`update` as a plain call: in this process's memory there is nothing to await, so
        no hang-up can cut it short (the fast path needs no task to protect it)."""
        return self._storage.update_channel(channel_id, update)

    def change_now(self, channel_id: str, update: InPlaceUpdate) -> bool:
        """`update_now`, on the stored record itself where the storage allows it
        (`MemoryChannels.change`: no copies); whether the record changed."""
        if self._in_place is not None:
            return self._in_place.change(channel_id, update.in_place)
        return self.update_now(channel_id, update).status == "updated"


class RedisChannelWriter:
    def __init__(self, client: Any, call: Callable[[Awaitable[Any]], Awaitable[Any]]) -> None:
        """`client`: a redis.asyncio client on the channel storage's server; `call`: runs one
        command failing closed (the payment store's `call`)."""
        self._redis = client
        self._call = call
        self._cas = client.register_script(_COMPARE_AND_SET)
        self._known: LRUCache[str, str] = LRUCache(CACHED_CHANNELS)

    async def update(self, channel_id: str, update: ChannelUpdate) -> ChannelUpdateResult:
        key = CHANNEL_PREFIX + channel_id
        raw, fresh = self._known.get(channel_id), False
        if raw is None:
            raw, fresh = await self._get(key), True
        for _ in range(MAX_ATTEMPTS):
            current = _load(raw)
            given = current.copy() if current is not None else None
            following = update(given)
            if following is given or following is None:
                if fresh:  # decided on what the store holds now: nothing to write
                    return ChannelUpdateResult(channel=current, status="unchanged")
                raw, fresh = await self._get(key), True  # decided on a cached copy: re-read
                continue
            text = json.dumps(following.to_dict(), separators=(",", ":"))
            held = await self._call(self._cas(keys=[key, INDEX_KEY], args=[raw, text, channel_id]))
            if held == 1:
                self._known[channel_id] = text
                return ChannelUpdateResult(channel=following.copy(), status="updated")
            raw, fresh = _text(held[0]), True
            self._remember(channel_id, raw)
        raise StoreUnavailable(f"channel {channel_id[:18]}…: {MAX_ATTEMPTS} conflicting writers")

    async def _get(self, key: str) -> str:
        raw = _text(await self._call(self._redis.get(key)) or "")
        self._remember(key.removeprefix(CHANNEL_PREFIX), raw)
        return raw

    def _remember(self, channel_id: str, raw: str) -> None:
        if raw:
            self._known[channel_id] = raw
        else:
            self._known.pop(channel_id, None)


def open_channel_writer(storage: ChannelStorage, store: object) -> ChannelWriter | None:
    """The writer for `storage` (the channel state of a generation), from the payment store
    beside it; None when there is none (the SDK's path serves every voucher)."""
    from .redis import RedisStore

    if isinstance(storage, InMemoryChannelStorage | MemoryChannels):
        return MemoryChannelWriter(storage)
    single = isinstance(store, RedisStore) and store.target.kind == "single"
    if isinstance(storage, RedisChannelStorage) and isinstance(store, RedisStore) and single:
        return RedisChannelWriter(store.client, store.call)
    return None


def _load(raw: str) -> Channel | None:
    return Channel.from_dict(json.loads(raw)) if raw else None


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
