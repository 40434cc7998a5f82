"""gateway.store.channel_writer: one-round-trip channel changes from the loop, on a real
redis-server, side by side with the SDK storage's WATCH/MULTI transaction on the same key."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest
from x402.mechanisms.evm.batch_settlement.server.storage import Channel

from gateway.store.channel_writer import RedisChannelWriter, open_channel_writer
from gateway.store.channels import CHANNEL_PREFIX, INDEX_KEY, RedisChannelStorage
from gateway.store.redis import RedisStore
from tests.procs import RedisServer
from tests.unit.store.test_channels import accept_voucher, channel_id, new_channel


@pytest.fixture
async def replicas(redis: RedisServer) -> AsyncIterator[tuple[RedisChannelWriter, ...]]:
    stores = RedisStore(redis.url), RedisStore(redis.url)
    writers = tuple(open_channel_writer(RedisChannelStorage(redis.url), s) for s in stores)
    assert all(isinstance(w, RedisChannelWriter) for w in writers)
    yield writers  # type: ignore[misc]
    for store in stores:
        await store.close()


def charge_once(cumulative: int) -> object:
    """Charge a channel that exists, once (never creates one: the writer never does)."""
    accept = accept_voucher("", cumulative)

    def update(current: Channel | None) -> Channel | None:
        return current if current is None else accept(current)  # type: ignore[operator]

    return update


async def test_fifty_copies_at_two_replicas_charge_once(
    redis: RedisServer, replicas: tuple[RedisChannelWriter, ...]
) -> None:
    cid = channel_id()
    sdk = RedisChannelStorage(redis.url)
    sdk.update_channel(cid, lambda _: new_channel(cid))
    results = await asyncio.gather(
        *(replicas[i % 2].update(cid, charge_once(1000)) for i in range(50))  # type: ignore[arg-type]
    )
    assert [r.status for r in results].count("updated") == 1
    channel = sdk.get(cid)
    assert channel is not None and channel.charged_cumulative_amount == "1000"
    sdk.close()


async def test_increasing_changes_from_both_replicas_and_the_sdk_all_count(
    redis: RedisServer, replicas: tuple[RedisChannelWriter, ...]
) -> None:
    cid = channel_id()
    sdk = RedisChannelStorage(redis.url)
    sdk.update_channel(cid, lambda _: new_channel(cid))
    for k in range(1, 31):
        if k % 3 == 0:  # the SDK's transaction changes it behind the writers' cached copies
            assert sdk.update_channel(cid, accept_voucher(cid, k * 1000)).status == "updated"  # type: ignore[arg-type]
        else:
            result = await replicas[k % 2].update(cid, charge_once(k * 1000))  # type: ignore[arg-type]
            assert result.status == "updated"
    channel = sdk.get(cid)
    assert channel is not None and channel.charged_cumulative_amount == "30000"
    sdk.close()


async def test_a_decision_on_a_stale_cached_copy_is_made_again_on_the_stored_one(
    redis: RedisServer, replicas: tuple[RedisChannelWriter, ...]
) -> None:
    cid = channel_id()
    sdk = RedisChannelStorage(redis.url)
    sdk.update_channel(cid, lambda _: new_channel(cid))
    writer = replicas[0]
    assert (await writer.update(cid, charge_once(1000))).status == "updated"  # type: ignore[arg-type]
    sdk.update_channel(cid, accept_voucher(cid, 5000))  # type: ignore[arg-type]
    # on its cached copy (1000) the writer would charge 3000; the store holds 5000: unchanged
    result = await writer.update(cid, charge_once(3000))  # type: ignore[arg-type]
    assert result.status == "unchanged"
    assert result.channel is not None and result.channel.charged_cumulative_amount == "5000"


async def test_it_writes_what_the_sdk_storage_writes(
    redis: RedisServer, replicas: tuple[RedisChannelWriter, ...]
) -> None:
    cid = channel_id()
    sdk = RedisChannelStorage(redis.url)
    sdk.update_channel(cid, lambda _: new_channel(cid))
    await replicas[0].update(cid, charge_once(2000))  # type: ignore[arg-type]
    store = RedisStore(redis.url)
    raw = await store.client.get(CHANNEL_PREFIX + cid)
    expected = sdk.get(cid)
    assert expected is not None
    assert json.loads(raw) == expected.to_dict()
    assert raw.decode() == json.dumps(expected.to_dict(), separators=(",", ":"))
    assert await store.client.sismember(INDEX_KEY, cid)
    assert cid in [c.channel_id for c in sdk.list()]
    await store.close()
    sdk.close()


async def test_a_missing_channel_is_left_missing(
    replicas: tuple[RedisChannelWriter, ...],
) -> None:
    result = await replicas[0].update(channel_id(), charge_once(1000))  # type: ignore[arg-type]
    assert result.status == "unchanged" and result.channel is None
