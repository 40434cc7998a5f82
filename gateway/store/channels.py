"""Batch-settlement channel state (issue 14, channels: the storage slice), shared by every
replica: the SDK's `ChannelStorage` protocol (x402.mechanisms.evm.batch_settlement.server.
storage) kept in Redis.

The SDK changes a channel through `update_channel(id, update)`, where `update` is a Python
function from the current channel to the next one (a voucher accepted, a reservation taken
or released, a claim recorded). A Lua script cannot run that function, so the change is a
Redis transaction instead: WATCH the channel's key, read it, compute the next state, and
MULTI/EXEC the write; EXEC fails when another replica wrote the key in between, and the
update runs again on the new state. Two replicas handed the same voucher therefore accept
it once: the second sees the first's state. `update` must be a pure function of the state
it is given (the SDK's are), because it may run more than once.

The SDK's storage calls are synchronous (its scheme hooks are), so this is redis-py's sync
client: whoever drives the SDK's batch-settlement scheme must do so off the event loop (a
thread pool), as with the SDK's other blocking parts.

One Redis server (or a Sentinel-managed master: not yet) holds the channels; a Redis
Cluster would need every channel key and the index in one hash slot: not supported yet.
"""

from __future__ import annotations

import asyncio
import builtins
import functools
import json
from collections.abc import Callable
from typing import TypeVar

import redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, WatchError
from redis.exceptions import TimeoutError as RedisTimeoutError
from x402.mechanisms.evm.batch_settlement.server.storage import (
    Channel,
    ChannelStorage,
    ChannelUpdate,
    ChannelUpdateResult,
)
from x402.mechanisms.evm.batch_settlement.utils import normalize_channel_id

from ..errors import StoreUnavailable
from .channel_memory import MemoryChannels
from .redis_url import parse_redis_url

CHANNEL_PREFIX = "x402:channel:"
INDEX_KEY = "x402:channels"  # every channel id, for listing and the claim schedule
MAX_ATTEMPTS = 50  # optimistic retries of one update under contention
TIMEOUT = 2.0

T = TypeVar("T")


class RedisChannelStorage:
    """`ChannelStorage` in Redis: atomic per channel across processes and replicas."""

    def __init__(self, url: str) -> None:
        target = parse_redis_url(url)
        if target.kind != "single":
            raise ValueError("channel state needs a single Redis server (redis:// or rediss://)")
        self._redis = redis.Redis.from_url(
            target.url, socket_timeout=TIMEOUT, socket_connect_timeout=TIMEOUT
        )

    def get(self, channel_id: str) -> Channel | None:
        raw = self._call(lambda: self._redis.get(_key(channel_id)))
        return _load(raw)

    def list(self) -> list[Channel]:
        ids = sorted(_text(i) for i in self._call(lambda: self._redis.smembers(INDEX_KEY)))
        if not ids:
            return []
        raws = self._call(lambda: self._redis.mget([CHANNEL_PREFIX + i for i in ids]))
        return [c for c in (_load(raw) for raw in raws) if c is not None]

    def update_channel(self, channel_id: str, update: ChannelUpdate) -> ChannelUpdateResult:
        key = _key(channel_id)
        for _ in range(MAX_ATTEMPTS):
            sent: builtins.list[str] = []  # the text this attempt's transaction writes
            try:
                return self._call(functools.partial(self._attempt, key, update, sent))
            except WatchError as exc:
                landed = self._landed(key, sent, exc)
                if landed is not None:
                    return landed
                continue  # another process changed the channel first: run update again
        raise StoreUnavailable(f"channel {channel_id[:18]}…: {MAX_ATTEMPTS} conflicting writers")

    def _landed(
        self, key: str, sent: builtins.list[str], exc: WatchError
    ) -> ChannelUpdateResult | None:
        """The attempt's write, when its EXEC ran but its answer was lost: redis-py then
        raises `WatchError` from the dropped connection (not from a conflict), and running
        `update` again on the state our own write made would misread it (a charge that
        landed would read as "busy": refused, the payer charged). Landed when the key holds
        exactly the text the transaction wrote; None: it did not, run `update` again."""
        lost = isinstance(exc.__context__, RedisConnectionError | RedisTimeoutError | OSError)
        if not lost or not sent:
            return None
        if _text(self._call(lambda: self._redis.get(key)) or b"") != sent[0]:
            return None
        return ChannelUpdateResult(channel=_load(sent[0]), status="updated")

    def _attempt(
        self, key: str, update: ChannelUpdate, sent: builtins.list[str]
    ) -> ChannelUpdateResult:
        with self._redis.pipeline() as pipe:
            pipe.watch(key)  # type: ignore[no-untyped-call]
            current = _load(pipe.get(key))
            given = current.copy() if current is not None else None
            following = update(given)
            if following is given:
                pipe.unwatch()
                return ChannelUpdateResult(channel=current, status="unchanged")
            channel_id = key.removeprefix(CHANNEL_PREFIX)
            pipe.multi()
            if following is None:
                pipe.delete(key)
                pipe.srem(INDEX_KEY, channel_id)
            else:
                sent.append(json.dumps(following.to_dict(), separators=(",", ":")))
                pipe.set(key, sent[0])
                pipe.sadd(INDEX_KEY, channel_id)
            pipe.execute()  # WatchError when the key moved since WATCH
        if following is None:
            if current is None:
                return ChannelUpdateResult(channel=None, status="unchanged")
            return ChannelUpdateResult(channel=None, status="deleted")
        return ChannelUpdateResult(channel=following.copy(), status="updated")

    def close(self) -> None:
        self._redis.close()

    @staticmethod
    def _call(command: Callable[[], T]) -> T:
        try:
            return command()
        except WatchError:
            raise
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(f"redis (channels): {type(exc).__name__}: {exc}") from exc


def open_channel_storage(store_url: str) -> ChannelStorage:
    """Channels beside the payment records: in Redis when they are, else in this process
    (`MemoryChannels`: the SDK's in-memory storage's contract, and changes in place)."""
    if store_url == "memory":
        return MemoryChannels()
    return RedisChannelStorage(store_url)


class ChannelCharges:
    """What a channel's state says was charged: the reconciler's question about a channel
    payment's record (gateway/payment/recovery.py); read off the loop (the storage's client
    is synchronous)."""

    def __init__(self, storage: ChannelStorage) -> None:
        self.storage = storage

    async def charged(self, channel_id: str) -> int | None:
        """The channel's charged cumulative amount (atomic units); None: no such channel."""
        channel = await asyncio.to_thread(self.storage.get, channel_id)
        return None if channel is None else int(channel.charged_cumulative_amount)


async def close_channel_storage(storage: ChannelStorage) -> None:
    """Close a channel storage that holds connections (the Redis one); off the loop, since
    its client is synchronous. Whoever opened it closes it, once nothing uses it
    (gateway/composition.py: the generations that share it)."""
    close = getattr(storage, "close", None)  # the SDK's protocol has none; ours has
    if callable(close):
        await asyncio.to_thread(close)


def _key(channel_id: str) -> str:
    return CHANNEL_PREFIX + normalize_channel_id(channel_id)


def _load(raw: bytes | str | None) -> Channel | None:
    return Channel.from_dict(json.loads(raw)) if raw else None


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
