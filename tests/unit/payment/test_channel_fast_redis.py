"""The voucher fast path on channel state in Redis (gateway/store/channel_writer.py) when the
network loses a reply: a red-team case (session 8). redis-py's retry (`Retry(retries=1)` on a
dropped connection or a read timeout) sends a command again whose first send may have run;
its second answer is then the one read. A charge must still be known for what it is."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from gateway.config.settings import ChannelsSettings
from gateway.errors import PaymentError
from gateway.payment.channels import Channels
from gateway.payment.engine import Payments
from gateway.store.channel_writer import RedisChannelWriter
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


class RepliesLost:
    """A redis client whose scripts, when `lost` is set, run once with their reply lost on
    the way back and once more (redis-py's retry): the caller reads the second answer."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self.lost = 0  # how many of the next script calls lose their first reply

    def register_script(self, text: str) -> Any:
        script = self._client.register_script(text)

        async def call(keys: list[str], args: list[Any]) -> Any:
            if self.lost:
                self.lost -= 1
                await script(keys=keys, args=args)  # it ran; its answer never came back
            return await script(keys=keys, args=args)

        return call

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)  # every other command as the client sends it


@pytest.fixture
async def fast_on_redis(
    redis: RedisServer,
) -> AsyncIterator[tuple[Payments, RedisChannelStorage, RepliesLost]]:
    store = RedisStore(redis.url)
    storage = RedisChannelStorage(redis.url)
    seed(storage, charged=PRICE)  # type: ignore[arg-type]  # any ChannelStorage
    client = RepliesLost(store.client)
    p = Payments(ChannelFacilitator(), MemoryStore())
    gateway = settings(PRICED, channels=ChannelsSettings(authorizer_key=KEY))
    p.use_channels(Channels(gateway, storage, writer=RedisChannelWriter(client, store.call)))
    assert await p.start() == []
    yield p, storage, client
    await p.close()
    storage.close()
    await store.close()


def charged(storage: RedisChannelStorage) -> str:
    channel = storage.get(channel_id())
    assert channel is not None
    return channel.charged_cumulative_amount


async def test_a_charge_whose_reply_was_lost_is_served_as_charged(
    fast_on_redis: tuple[Payments, RedisChannelStorage, RepliesLost],
) -> None:
    p, storage, client = fast_on_redis
    async with p.claimed(matched(2 * PRICE), PRICED, "req-1") as claim:
        await p.verify(claim)
        assert claim.hold is not None  # the fast path reserved the channel
        client.lost = 1
        settled = await p.settle(claim)  # the charge lands; its reply is lost, then resent
    assert charged(storage) == str(2 * PRICE)  # the payer was charged ...
    assert settled.success  # ... so it is served (not a 402 and a released claim)
    assert settled.extra["channelState"]["chargedCumulativeAmount"] == str(2 * PRICE)
    assert claim.record.status == "settled"


async def test_a_reservation_whose_reply_was_lost_charges_nothing(
    fast_on_redis: tuple[Payments, RedisChannelStorage, RepliesLost],
) -> None:
    # Its own reservation, read back, looks like another request's: the payer is refused
    # (the channel busy until the reservation's bounded lifetime), and charged nothing.
    p, storage, client = fast_on_redis
    with pytest.raises(PaymentError) as busy:
        async with p.claimed(matched(2 * PRICE), PRICED, "req-1") as claim:
            client.lost = 1
            await p.verify(claim)
    assert busy.value.reason == "invalid_batch_settlement_evm_channel_busy"
    assert charged(storage) == str(PRICE)
