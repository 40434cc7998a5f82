"""gateway.reload with channel routes: what each generation owns and what generations share.
The channel storage (the channel state, the truth claims read) is shared by every generation
on the same store and closed once, after the last one that reads it; each generation's
channels (their hook threads) retire with it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from x402.mechanisms.evm.batch_settlement.server.storage import (
    Channel,
    ChannelUpdate,
    ChannelUpdateResult,
    InMemoryChannelStorage,
)

from gateway.composition import Parts
from gateway.config import load
from gateway.config.settings import Settings
from gateway.observe.metrics import Metrics
from gateway.payment.channels import Channels
from gateway.reload import LiveGateway
from tests.unit.payment.channel_fakes import NETWORK, new_channel, put
from tests.unit.test_composition import Made
from tests.unit.test_composition_channels import CHANNELS


class ClosableStorage(InMemoryChannelStorage):
    """A channel storage with connections to close, as the Redis one: used once closed, it
    fails (a closed client's commands in flight fail; nothing may rely on a reconnect)."""

    def __init__(self) -> None:
        super().__init__()
        self.closes = 0

    def close(self) -> None:
        self.closes += 1

    def get(self, channel_id: str) -> Channel | None:
        assert not self.closes, "channel storage used after close"
        return super().get(channel_id)

    def update_channel(self, channel_id: str, update: ChannelUpdate) -> ChannelUpdateResult:
        assert not self.closes, "channel storage used after close"
        return super().update_channel(channel_id, update)


class Opened:
    """The parts seam, recording each channel storage it opens."""

    def __init__(self) -> None:
        self.made = Made()
        self.storages: list[ClosableStorage] = []

    def channels(self, _settings: Settings) -> ClosableStorage:
        storage = ClosableStorage()
        self.storages.append(storage)
        return storage

    def parts(self) -> Parts:
        made = self.made
        return Parts(
            store=made.store,
            facilitator=made.facilitator,
            upstream=made.upstream,
            channels=self.channels,
        )


@pytest.fixture
async def live(tmp_path: Path) -> AsyncIterator[tuple[LiveGateway, Path, Opened]]:
    path = tmp_path / "gateway.yaml"
    path.write_text(CHANNELS)
    opened = Opened()
    holder = LiveGateway(Metrics(), opened.parts())
    await holder.start(load(path))
    try:
        yield holder, path, opened
    finally:
        await holder.close()


def hooks_run(channels: Channels) -> bool:
    """Whether `channels` still runs its SDK hooks (its thread pool takes work)."""
    try:
        channels.schemes[NETWORK]._pool.submit(lambda: None).result()
    except RuntimeError:  # "cannot schedule new futures after shutdown"
        return False
    return True


async def retired(holder: LiveGateway) -> None:
    for _ in range(100):
        if len(holder._alive) == 1:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the old generation did not retire")


async def test_a_retiring_generation_leaves_the_shared_channel_storage_open(
    live: tuple[LiveGateway, Path, Opened],
) -> None:
    holder, path, opened = live
    first = holder.current
    assert first.payments.channels is not None
    storage = first.payments.channels.storage
    channel = put(storage, new_channel(charged=1000))
    # A change of the channels' settings builds new payments (and channels) on the same store.
    path.write_text(CHANNELS.replace("claim_every: 1s", "claim_every: 2s"))
    assert await holder.reload()
    second = holder.current
    assert second.payments is not first.payments and second.payments.channels is not None
    assert second.payments.channels.storage is storage  # the channel state is kept
    await retired(holder)
    assert opened.storages == [storage] and storage.closes == 0  # the new one still reads it
    assert second.payments.channels.storage.get(channel.channel_id) is not None
    assert hooks_run(second.payments.channels)
    assert not hooks_run(first.payments.channels)  # the old one's threads are stopped
    await holder.close()
    assert storage.closes == 1  # once, at shutdown


async def test_a_store_change_retires_the_old_channels_and_their_storage(
    live: tuple[LiveGateway, Path, Opened],
) -> None:
    holder, path, opened = live
    first = holder.current
    assert first.payments.channels is not None
    # A new store (the facilitator client is kept): new payments, new channel state.
    path.write_text(CHANNELS + 'store: "redis://127.0.0.1:1/0"\n')
    assert await holder.reload()
    second = holder.current
    assert second.payments.facilitator is first.payments.facilitator
    assert second.payments.channels is not None
    assert second.payments.channels.storage is not first.payments.channels.storage
    await retired(holder)
    old, new = opened.storages
    assert (old.closes, new.closes) == (1, 0)
    assert not hooks_run(first.payments.channels)
    assert hooks_run(second.payments.channels)


async def test_shutdown_closes_the_shared_storage_after_every_generation_reading_it(
    live: tuple[LiveGateway, Path, Opened],
) -> None:
    holder, path, opened = live
    first = holder.current
    async with first.users.track():  # generation 1 keeps a request in flight
        path.write_text(CHANNELS.replace("claim_every: 1s", "claim_every: 2s"))
        assert await holder.reload()
        await holder.close()  # at shutdown, both generations are still alive
    (storage,) = opened.storages
    assert storage.closes == 1
    assert not hooks_run(first.payments.channels)
    assert holder.current.claims is not None and holder.current.claims.task.done()
