"""Rates per payer and per IP: which buckets a request counts against, the client IP behind
trusted proxies, and the request flow refusing with 429 before any facilitator call."""

from __future__ import annotations

import ipaddress
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from gateway.app import create_app
from gateway.composition import Parts
from gateway.config import loads
from gateway.config.settings import Limits, Rate, RateLimits, Settings
from gateway.errors import ConfigError, TooManyRequests
from gateway.payment.limits import RateLimiter, client_ip
from gateway.store.buckets import Bucket
from tests.unit.payment.test_engine import FakeFacilitator
from tests.unit.wire_helpers import ASSET, PAY_TO, new_account, route, sdk_v2_payment, settings


class Recorder:
    """Buckets that record what was asked and refuse when told to."""

    def __init__(self, wait: float = 0.0) -> None:
        self.asked: list[list[str]] = []
        self.wait = wait

    async def take_tokens(self, buckets: Sequence[Bucket]) -> float:
        self.asked.append([b.key for b in buckets])
        return self.wait


def limited() -> Settings:
    rates = RateLimits(per_payer=Rate(10, 1.0), per_ip=Rate(100, 60.0))
    return settings(route(), route(path="/free", accepts=()), limits=Limits(rates=rates))


async def test_priced_route_counts_ip_and_payer_in_one_call() -> None:
    s, rec = limited(), Recorder()
    await RateLimiter(s, rec).check(s.routes[0], "192.0.2.1", "0xABCD")
    assert rec.asked == [["x402:rate:ip:192.0.2.1", "x402:rate:payer:0xabcd"]]


async def test_free_route_is_not_counted_by_the_global_rates() -> None:
    s, rec = limited(), Recorder()
    await RateLimiter(s, rec).check(s.routes[1], "192.0.2.1")
    assert rec.asked == []


async def test_refusal_is_429_with_whole_seconds() -> None:
    s = limited()
    with pytest.raises(TooManyRequests) as caught:
        await RateLimiter(s, Recorder(wait=2.3)).check(s.routes[0], "192.0.2.1", "0xabc")
    assert caught.value.status == 429 and caught.value.retry_after == 3


def test_limits_need_a_store_that_counts() -> None:
    with pytest.raises(ConfigError):
        RateLimiter(limited(), None)


def test_client_ip_behind_trusted_proxies() -> None:
    s = settings(route(), trusted_proxies=(ipaddress.ip_network("10.0.0.0/8"),))
    assert client_ip("192.0.2.9", ["1.1.1.1"], s) == "192.0.2.9"  # untrusted peer: its own IP
    assert client_ip("10.0.0.1", ["6.6.6.6, 1.1.1.1, 10.0.0.2"], s) == "1.1.1.1"
    assert client_ip("10.0.0.1", [], s) == "10.0.0.1"
    assert client_ip("10.0.0.1", ["bogus, 10.0.0.3"], s) == "10.0.0.3"


CONFIG = f"""
upstream: "{{origin}}"
facilitator: {{{{url: "http://127.0.0.1:9/"}}}}
pay_to: "{PAY_TO}"
asset: {{{{address: "{ASSET}", name: USDC, version: "2", decimals: 6}}}}
admin: off
limits: {{{{per_payer: 3/m}}}}
routes:
  - path: /paid/*
    price: "$0.001"
  - path: /free
    price: free
    limits: {{{{per_ip: 2/m}}}}
"""


@pytest.fixture
async def client_and_facilitator() -> AsyncIterator[tuple[TestClient[Any, Any], FakeFacilitator]]:
    async def ok(_: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", ok)
    origin = TestServer(app, host="127.0.0.1")
    await origin.start_server()
    fac = FakeFacilitator()
    s = loads(CONFIG.format(origin=str(origin.make_url("")).rstrip("/")))
    parts = Parts(facilitator=lambda _s, _m: fac)
    client: TestClient[Any, Any] = TestClient(TestServer(create_app(s, parts=parts)))
    await client.start_server()
    yield client, fac
    await client.close()
    await origin.close()


async def test_flood_from_one_payer_gets_429_without_facilitator_calls(
    client_and_facilitator: tuple[TestClient[Any, Any], FakeFacilitator],
) -> None:
    client, fac = client_and_facilitator
    account = new_account()
    statuses = []
    for _ in range(6):
        _, header = sdk_v2_payment(route(), account)
        r = await client.get("/paid/x", headers={"PAYMENT-SIGNATURE": header})
        statuses.append(r.status)
        if r.status == 429:
            assert int(r.headers["Retry-After"]) >= 1
            assert (await r.json())["reason"] == "rate_limited"
    assert statuses == [200, 200, 200, 429, 429, 429]
    assert fac.calls.count("verify") == 3
    # Another payer has its own bucket.
    _, header = sdk_v2_payment(route(), new_account())
    assert (await client.get("/paid/x", headers={"PAYMENT-SIGNATURE": header})).status == 200


async def test_route_limit_applies_to_a_free_route(
    client_and_facilitator: tuple[TestClient[Any, Any], FakeFacilitator],
) -> None:
    client, _ = client_and_facilitator
    statuses = [(await client.get("/free")).status for _ in range(3)]
    assert statuses == [200, 200, 429]


# --- daily spend per payer ------------------------------------------------------------------

SPEND_CONFIG = CONFIG.replace("limits: {{per_payer: 3/m}}", 'limits: {{daily_spend: "$0.002"}}')


async def test_daily_spend_counts_settled_payments_and_refuses_past_the_cap() -> None:
    app = web.Application()

    async def ok(_: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    app.router.add_route("*", "/{tail:.*}", ok)
    origin = TestServer(app, host="127.0.0.1")
    await origin.start_server()
    fac = FakeFacilitator()
    s = loads(SPEND_CONFIG.format(origin=str(origin.make_url("")).rstrip("/")))
    assert s.limits.rates.daily_spend == 2000
    client: TestClient[Any, Any] = TestClient(
        TestServer(create_app(s, parts=Parts(facilitator=lambda _s, _m: fac)))
    )
    await client.start_server()
    try:
        account = new_account()
        statuses = []
        for _ in range(3):
            _, header = sdk_v2_payment(route(), account)
            r = await client.get("/paid/x", headers={"PAYMENT-SIGNATURE": header})
            statuses.append(r.status)
        assert statuses == [200, 200, 429]
        assert (await r.json())["reason"] == "daily_spend_reached"
        assert 1 <= int(r.headers["Retry-After"]) <= 86400
        assert fac.calls.count("verify") == 2
    finally:
        await client.close()
        await origin.close()


async def test_spend_counters_on_memory_and_redis(redis: Any) -> None:
    from gateway.store.memory import MemoryStore
    from gateway.store.redis import RedisStore

    for store in (MemoryStore(), RedisStore(redis.url)):
        key = f"x402:rate:spend:test:{id(store)}"
        assert await store.spent(key) == 0
        await store.add_spent(key, 1500, 60)
        await store.add_spent(key, 500, 60)
        assert await store.spent(key) == 2000
        await store.close()
