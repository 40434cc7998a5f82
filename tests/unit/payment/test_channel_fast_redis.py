"""The voucher fast path on channel state in Redis (gateway/store/channel_writer.py) on a
network that loses a reply: a red-team case (session 8). A proxy between the gateway's
redis client and a real redis-server passes a command on, lets it run, and drops the
connection before its answer gets back; redis-py's own retry (`Retry(retries=1)` on a dropped
connection) then sends the command again, and the answer read is the second one."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from gateway.config.settings import ChannelsSettings
from gateway.errors import PaymentError
from gateway.payment.channels import Channels
from gateway.payment.engine import Payments
from gateway.store.channel_writer import open_channel_writer
from gateway.store.channels import RedisChannelStorage
from gateway.store.memory import MemoryStore
from gateway.store.redis import RedisStore
from tests.procs import RedisServer
from tests.unit.payment.test_channels import (
    KEY,
    PRICE,
    PRICED,
    ChannelFacilitator,
    channel_id,
    matched,
    seed,
)
from tests.unit.wire_helpers import settings


class LosingProxy:
    """TCP from the gateway to redis-server; `lose` replies are lost: the command that
    carries `marker` reaches the server, runs, and its connection is cut before its answer
    is passed back."""

    def __init__(self, target_port: int, marker: bytes = b"EVALSHA") -> None:
        self._target = target_port
        self._marker = marker  # what the command whose answer is lost carries
        self.lose = 0
        self.lost = 0
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        return f"redis://127.0.0.1:{port}/0"

    async def close(self) -> None:
        assert self._server is not None
        self._server.close()
        for pipe in self._pipes:
            pipe.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)
        await self._server.wait_closed()

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        server_r, server_w = await asyncio.open_connection("127.0.0.1", self._target)
        losing = asyncio.Event()  # the answer on its way is to be lost, and the line cut

        async def upstream() -> None:
            while data := await client_r.read(65536):
                if self.lose > 0 and self._marker in data:
                    self.lose -= 1
                    losing.set()
                server_w.write(data)
                await server_w.drain()

        async def downstream() -> None:
            while data := await server_r.read(65536):
                if losing.is_set() and data.startswith(b"-NOSCRIPT"):
                    losing.clear()  # it did not run (redis-py loads the script): next time
                    self.lose += 1
                elif losing.is_set():
                    self.lost += 1  # it ran: its answer is read here and never passed on
                    return
                client_w.write(data)
                await client_w.drain()

        tasks = [asyncio.ensure_future(upstream()), asyncio.ensure_future(downstream())]
        self._pipes.update(tasks)
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._pipes.difference_update(tasks)
        for writer in (client_w, server_w):
            writer.close()


@pytest.fixture
async def fast_on_redis(
    redis: RedisServer,
) -> AsyncIterator[tuple[Payments, RedisChannelStorage, LosingProxy]]:
    proxy = LosingProxy(redis.port)
    store = RedisStore(await proxy.start())
    storage = RedisChannelStorage(redis.url)  # the SDK's side: straight to the server
    seed(storage, charged=PRICE)  # type: ignore[arg-type]  # any ChannelStorage
    p = Payments(ChannelFacilitator(), MemoryStore())
    gateway = settings(PRICED, channels=ChannelsSettings(authorizer_key=KEY))
    p.use_channels(Channels(gateway, storage, writer=open_channel_writer(storage, store)))
    assert await p.start() == []
    yield p, storage, proxy
    await p.close()
    storage.close()
    await store.close()
    await proxy.close()


def charged(storage: RedisChannelStorage) -> str:
    channel = storage.get(channel_id())
    assert channel is not None
    return channel.charged_cumulative_amount


async def test_a_charge_whose_reply_was_lost_is_served_as_charged(
    fast_on_redis: tuple[Payments, RedisChannelStorage, LosingProxy],
) -> None:
    p, storage, proxy = fast_on_redis
    async with p.claimed(matched(2 * PRICE), PRICED, "req-1") as claim:
        await p.verify(claim)
        assert claim.hold is not None  # the fast path reserved the channel
        proxy.lose = 1
        settled = await p.settle(claim)  # the charge runs; its answer is lost; sent again
    assert proxy.lost == 1
    assert charged(storage) == str(2 * PRICE)  # the payer was charged ...
    assert settled.success  # ... so it is served (not a 402 and a released claim)
    assert settled.extra is not None
    assert settled.extra["channelState"]["chargedCumulativeAmount"] == str(2 * PRICE)
    assert claim.record.status == "settled"


async def test_a_reservation_whose_reply_was_lost_charges_nothing(
    fast_on_redis: tuple[Payments, RedisChannelStorage, LosingProxy],
) -> None:
    # Its own reservation, read back, looks like another request's: the payer is refused
    # (the channel busy until the reservation's bounded lifetime), and charged nothing.
    p, storage, proxy = fast_on_redis
    with pytest.raises(PaymentError) as busy:
        async with p.claimed(matched(2 * PRICE), PRICED, "req-1") as claim:
            proxy.lose = 1
            await p.verify(claim)
    assert proxy.lost == 1
    assert busy.value.reason == "invalid_batch_settlement_evm_channel_busy"
    assert charged(storage) == str(PRICE)


@pytest.fixture
async def sdk_on_redis(
    redis: RedisServer,
) -> AsyncIterator[tuple[Payments, RedisChannelStorage, LosingProxy]]:
    """The SDK's own path (no fast path): its hooks change the channel through the gateway's
    `RedisChannelStorage` (WATCH, MULTI/EXEC), through the proxy."""
    proxy = LosingProxy(redis.port, b"EXEC")
    storage = RedisChannelStorage(await proxy.start())
    direct = RedisChannelStorage(redis.url)  # the test's own reads: straight to the server
    seed(direct, charged=PRICE)  # type: ignore[arg-type]  # any ChannelStorage
    p = Payments(ChannelFacilitator(), MemoryStore())
    gateway = settings(PRICED, channels=ChannelsSettings(authorizer_key=KEY))
    p.use_channels(Channels(gateway, storage))
    assert await p.start() == []
    yield p, direct, proxy
    await p.close()
    storage.close()
    direct.close()
    await proxy.close()


async def test_an_sdk_charge_whose_reply_was_lost_is_served_as_charged(
    sdk_on_redis: tuple[Payments, RedisChannelStorage, LosingProxy],
) -> None:
    p, storage, proxy = sdk_on_redis
    async with p.claimed(matched(2 * PRICE), PRICED, "req-1") as claim:
        await p.verify(claim)
        assert claim.hold is None  # the SDK's path
        proxy.lose = 1
        settled = await p.settle(claim)  # the charge runs; its answer is lost
    assert proxy.lost == 1
    assert charged(storage) == str(2 * PRICE)  # the payer was charged ...
    assert settled.success  # ... so it is served (not a 402 and a released claim)
    assert claim.record.status == "settled"
