"""gateway.composition: SIWX session state across a reload (see test_composition.py for the
rest of the composition root)."""

from __future__ import annotations

from gateway.composition import Rebuild, Reuse, build
from gateway.config import loads
from gateway.observe.metrics import Metrics
from tests.unit.test_composition import Made, close

CONFIG = """
upstream: http://127.0.0.1:9
facilitator: {url: "http://127.0.0.1:9/"}
pay_to: "0x000000000000000000000000000000000000dEaD"
public_url: https://api.example.com
admin: off
routes:
  - path: /reports/*
    price: "$0.05"
    access: {for: 24h}
"""


async def test_a_reload_keeps_who_paid_and_the_spent_nonces() -> None:
    made = Made()
    settings = loads(CONFIG)
    first = await build(settings, Metrics(), 1, made.parts())
    assert first.sessions is not None
    await first.sessions.paid(settings.routes[0], "0x" + "ab" * 20)
    assert await first.sessions.store.spend_nonce("n0nce1234", 60)
    second = await build(
        settings, first.metrics, 2, made.parts(), Reuse(first, Rebuild(False, False, True))
    )
    try:
        assert second.sessions is not None and second.sessions is not first.sessions
        assert await second.sessions.store.has_paid("/reports/*", "0x" + "AB" * 20)
        assert not await second.sessions.store.spend_nonce("n0nce1234", 60)
        # A new store (another `store:` URL) starts its own state.
        third = await build(settings, first.metrics, 3, made.parts())
        assert third.sessions is not None
        assert not await third.sessions.store.has_paid("/reports/*", "0x" + "ab" * 20)
        await close(third)
    finally:
        await second.upstream.close()
        await close(first)


async def test_no_access_route_no_sessions() -> None:
    made = Made()
    gen = await build(
        loads(CONFIG.replace("    access: {for: 24h}\n", "")), Metrics(), 1, made.parts()
    )
    try:
        assert gen.sessions is None
    finally:
        await close(gen)
