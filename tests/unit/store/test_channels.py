"""gateway.store.channels: the SDK's channel storage protocol in a real redis-server, atomic
per channel across processes (two storage objects stand for two replicas)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from x402.mechanisms.evm.batch_settlement.server.storage import (
    Channel,
    ChannelStorage,
    InMemoryChannelStorage,
)
from x402.mechanisms.evm.batch_settlement.types import ChannelConfig

from gateway.errors import StoreUnavailable
from gateway.store.channel_memory import MemoryChannels
from gateway.store.channels import RedisChannelStorage, open_channel_storage
from tests.procs import RedisServer, free_port

PRICE = 1000


def channel_id() -> str:
    return "0x" + os.urandom(32).hex()


def new_channel(cid: str) -> Channel:
    config = ChannelConfig(
        payer="0x" + "11" * 20,
        payer_authorizer="0x" + "22" * 20,
        receiver="0x" + "33" * 20,
        receiver_authorizer="0x" + "44" * 20,
        token="0x" + "55" * 20,
        withdraw_delay=900,
        salt="0x" + "00" * 32,
    )
    return Channel(channel_id=cid, channel_config=config, balance="1000000")


def accept_voucher(cid: str, cumulative: int) -> object:
    """What accepting a voucher does to a channel: charge it once, if it is new."""

    def update(current: Channel | None) -> Channel | None:
        channel = current if current is not None else new_channel(cid)
        if int(channel.charged_cumulative_amount) >= cumulative:
            return current  # already charged: unchanged
        following = channel.copy()
        following.charged_cumulative_amount = str(cumulative)
        following.signed_max_claimable = str(cumulative)
        return following

    return update


@pytest.fixture(params=["memory", "gateway-memory", "redis"])
def storages(request: pytest.FixtureRequest) -> Iterator[tuple[ChannelStorage, ChannelStorage]]:
    if request.param in ("memory", "gateway-memory"):
        local = InMemoryChannelStorage() if request.param == "memory" else MemoryChannels()
        yield local, local
        return
    server: RedisServer = request.getfixturevalue("redis")
    one, two = RedisChannelStorage(server.url), RedisChannelStorage(server.url)
    yield one, two
    one.close()
    two.close()


def test_fifty_copies_of_one_voucher_at_two_replicas_charge_once(
    storages: tuple[ChannelStorage, ChannelStorage],
) -> None:
    one, two = storages
    cid = channel_id()
    with ThreadPoolExecutor(16) as pool:
        results = list(
            pool.map(
                lambda i: (one, two)[i % 2].update_channel(cid, accept_voucher(cid, PRICE)),  # type: ignore[arg-type]
                range(50),
            )
        )
    statuses = sorted(r.status for r in results)
    assert statuses.count("updated") == 1, statuses
    assert statuses.count("unchanged") == 49
    stored = two.get(cid)
    assert stored is not None and stored.charged_cumulative_amount == str(PRICE)


def test_increasing_vouchers_from_both_replicas_all_count(
    storages: tuple[ChannelStorage, ChannelStorage],
) -> None:
    one, two = storages
    cid = channel_id()
    with ThreadPoolExecutor(8) as pool:
        list(
            pool.map(
                lambda n: (one, two)[n % 2].update_channel(cid, accept_voucher(cid, n * PRICE)),  # type: ignore[arg-type]
                range(1, 41),
            )
        )
    stored = one.get(cid)
    assert stored is not None and stored.charged_cumulative_amount == str(40 * PRICE)


def test_list_get_and_delete(storages: tuple[ChannelStorage, ChannelStorage]) -> None:
    one, two = storages
    cid = channel_id()
    one.update_channel(cid, accept_voucher(cid, PRICE))  # type: ignore[arg-type]
    assert cid.lower() in {c.channel_id.lower() for c in two.list()}
    assert two.get(cid.upper().replace("0X", "0x")) is not None  # ids are normalised
    assert two.update_channel(cid, lambda _c: None).status == "deleted"
    assert one.get(cid) is None
    assert cid.lower() not in {c.channel_id.lower() for c in one.list()}
    assert one.update_channel(cid, lambda _c: None).status == "unchanged"


def test_redis_state_outlives_the_process_that_wrote_it(redis: RedisServer) -> None:
    cid = channel_id()
    writer = RedisChannelStorage(redis.url)
    writer.update_channel(cid, accept_voucher(cid, 3 * PRICE))  # type: ignore[arg-type]
    writer.close()
    reader = open_channel_storage(redis.url)
    stored = reader.get(cid)
    assert stored is not None and stored.to_dict() == {
        **new_channel(cid).to_dict(),
        "chargedCumulativeAmount": str(3 * PRICE),
        "signedMaxClaimable": str(3 * PRICE),
    }
    assert isinstance(open_channel_storage("memory"), MemoryChannels)


def test_an_unreachable_redis_fails_closed() -> None:
    storage = RedisChannelStorage(f"redis://127.0.0.1:{free_port()}/0")
    cid = channel_id()
    with pytest.raises(StoreUnavailable):
        storage.update_channel(cid, accept_voucher(cid, PRICE))  # type: ignore[arg-type]
    with pytest.raises(StoreUnavailable):
        storage.list()


def test_a_cluster_url_is_refused() -> None:
    with pytest.raises(ValueError, match="single Redis server"):
        RedisChannelStorage("redis://127.0.0.1:7000,127.0.0.1:7001?cluster=true")
