"""gateway.composition: one generation built from settings through the `Parts` seam (fakes
here, no patched modules): what is made, what a reload shares, what a failure closes."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from gateway.composition import EVERYTHING, Parts, Rebuild, Reuse, build
from gateway.config import loads
from gateway.config.settings import Settings
from gateway.observe.metrics import Metrics
from gateway.proxy.upstream import Upstream
from gateway.store.memory import MemoryStore
from tests.unit.payment.test_engine import FakeFacilitator

CONFIG = """
upstream: http://127.0.0.1:9
facilitator: {url: "http://127.0.0.1:9/"}
pay_to: "0x000000000000000000000000000000000000dEaD"
admin: off
routes:
  - path: /paid/*
    price: "$0.001"
"""


class Made:
    """Fake parts, and a log of what was made and closed."""

    def __init__(self, fail_upstream: bool = False) -> None:
        self.log: list[str] = []
        self.fail_upstream = fail_upstream

    def store(self, _settings: Settings) -> MemoryStore:
        store = MemoryStore()
        self.log.append("store")
        close = store.close

        async def closing() -> None:
            self.log.append("store closed")
            await close()

        store.close = closing  # type: ignore[method-assign]
        return store

    def facilitator(self, _settings: Settings, _metrics: Metrics) -> FakeFacilitator:
        self.log.append("facilitator")
        fac = FakeFacilitator()

        async def closing() -> None:
            self.log.append("facilitator closed")

        fac.close = closing  # type: ignore[method-assign]
        return fac

    def upstream(self, settings: Settings) -> Upstream:
        if self.fail_upstream:
            raise OSError("no sockets left")
        self.log.append("upstream")
        return Upstream(settings)

    def parts(self) -> Parts:
        return Parts(store=self.store, facilitator=self.facilitator, upstream=self.upstream)


async def close(gen: Any) -> None:
    for _, closer in gen.shared_parts():
        await closer()


async def test_a_generation_is_made_of_the_parts_the_seam_makes() -> None:
    made = Made()
    gen = await build(loads(CONFIG), Metrics(), 1, made.parts())
    try:
        assert made.log == ["store", "facilitator", "upstream"]
        assert isinstance(gen.payments.facilitator, FakeFacilitator)
        assert gen.routes.match("GET", "/paid/x").route is not None
        assert gen.drop_headers == ("PAYMENT-SIGNATURE", "X-PAYMENT", "sign-in-with-x", "X-Payer")
    finally:
        await close(gen)


async def test_a_reload_shares_what_it_does_not_rebuild() -> None:
    made = Made()
    settings = loads(CONFIG)
    first = await build(settings, Metrics(), 1, made.parts())
    second = await build(
        settings, first.metrics, 2, made.parts(), Reuse(first, Rebuild(False, False, True))
    )
    try:
        assert made.log == ["store", "facilitator", "upstream", "upstream"]
        assert second.payments is first.payments and second.upstream is not first.upstream
        assert EVERYTHING.names() == ["facilitator", "store", "upstream"]
    finally:
        await second.upstream.close()
        await close(first)


async def test_a_failed_build_closes_what_it_had_made() -> None:
    made = Made(fail_upstream=True)
    with pytest.raises(OSError, match="no sockets left"):
        await build(loads(CONFIG), Metrics(), 1, made.parts())
    await asyncio.sleep(0)
    assert made.log == ["store", "facilitator", "facilitator closed", "store closed"]
