"""gateway.composition and the channel claim schedule: started where channels may exist,
kept by a reload that changes none of its parts, replaced (sharing its lock) otherwise,
stopped with the generation."""

from __future__ import annotations

import asyncio
import dataclasses

from x402.mechanisms.evm.batch_settlement.server.storage import InMemoryChannelStorage
from x402.schemas import PaymentPayload, PaymentRequirements

from gateway.composition import Parts, Rebuild, Reuse, build
from gateway.config import loads
from gateway.config.settings import Settings
from gateway.observe.metrics import Metrics
from tests.unit.payment.channel_fakes import new_channel, put
from tests.unit.test_composition import CONFIG, Made, close

CHANNELS = """
upstream: http://127.0.0.1:9
facilitator: {url: "http://127.0.0.1:9/"}
pay_to: "0x000000000000000000000000000000000000dEaD"
admin: off
channels: {claim_every: 1s, claim_over: "$5", withdraw_delay: 1h}
routes:
  - path: /v1/infer/*
    price: "$0.001"
    channel: {min_deposit: "$1.00"}
"""


def parts(made: Made, storage: InMemoryChannelStorage) -> Parts:
    def channels(_settings: Settings) -> InMemoryChannelStorage:
        made.log.append("channels")
        return storage

    return Parts(
        store=made.store, facilitator=made.facilitator, upstream=made.upstream, channels=channels
    )


async def test_no_channel_route_and_a_memory_store_runs_no_schedule() -> None:
    made = Made()
    gen = await build(loads(CONFIG), Metrics(), 1, parts(made, InMemoryChannelStorage()))
    try:
        assert gen.claims is None and "channels" not in made.log
    finally:
        await close(gen)


async def test_a_channel_route_runs_the_schedule_on_the_served_channels() -> None:
    made = Made()
    metrics = Metrics()
    gen = await build(loads(CHANNELS), metrics, 1, parts(made, InMemoryChannelStorage()))
    try:
        assert gen.claims is not None and not gen.claims.task.done()
        assert gen.payments.channels is not None
        assert gen.claims.scheduler.storage is gen.payments.channels.storage
        assert made.log.count("channels") == 1  # the served channels' storage, not another
        assert gen.claims.scheduler.policy.every == 1.0
        put(gen.payments.channels.storage, new_channel(charged=1234))  # type: ignore[arg-type]
        # `exact` on the channel's network still finds its scheme (the SDK does not fall
        # back to "eip155:*" once a network has an entry of its own).
        exact = gen.settings.routes[0].accepts[0]
        requirement = PaymentRequirements(
            scheme="exact",
            network=exact.network,
            asset=exact.asset,
            amount=str(exact.amount),
            pay_to=exact.pay_to,
            max_timeout_seconds=60,
            extra=dict(exact.extra),
        )
        payload = PaymentPayload(x402_version=2, payload={}, accepted=requirement)
        assert gen.payments.server.get_payment_flow(payload, requirement)
        await asyncio.sleep(0.6)  # a round has read the storage (every 0.25 s)
        owed = metrics.registry.get_sample_value(
            "x402_gateway_channel_unclaimed_atomic_units",
            {
                "network": "eip155:84532",
                "receiver": "0x3333333333333333333333333333333333333333",
                "asset": "0x5555555555555555555555555555555555555555",
            },
        )
        assert owed == 1234
    finally:
        await close(gen)
    assert gen.claims.task.cancelled()


async def test_a_redis_store_without_channel_routes_still_claims() -> None:
    made, storage = Made(), InMemoryChannelStorage()
    settings = dataclasses.replace(loads(CONFIG), store="redis://127.0.0.1:1/0")
    gen = await build(settings, Metrics(), 1, parts(made, storage))
    try:
        assert gen.claims is not None and gen.claims.scheduler.storage is storage
        assert "channels" in made.log
        assert gen.channel_storages() == [storage]  # closed with the last generation using it
    finally:
        await close(gen)


async def test_a_reload_keeps_an_unchanged_schedule_and_replaces_a_changed_one() -> None:
    made, storage = Made(), InMemoryChannelStorage()
    settings = loads(CHANNELS)
    first = await build(settings, Metrics(), 1, parts(made, storage))
    same = await build(
        settings, first.metrics, 2, parts(made, storage), Reuse(first, Rebuild(False, False, True))
    )
    assert same.claims is first.claims
    await same.upstream.close()
    changed = loads(CHANNELS.replace("claim_every: 1s", "claim_every: 30s"))
    elsewhere = parts(made, InMemoryChannelStorage())  # not asked: the store is shared
    second = await build(
        changed, first.metrics, 3, elsewhere, Reuse(first, Rebuild(False, False, True))
    )
    try:
        assert second.claims is not None and first.claims is not None
        assert second.claims is not first.claims
        assert second.claims.lock is first.claims.lock  # the two never claim at once
        assert first.payments.channels is not None
        assert second.claims.scheduler.storage is first.payments.channels.storage
        assert second.claims.scheduler.policy.every == 30.0
    finally:
        await second.claims.close()
        await second.upstream.close()
        await close(first)
