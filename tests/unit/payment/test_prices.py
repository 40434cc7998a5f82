"""Dynamic prices: rules, the hook's cache and single flight, the hook client on a real HTTP
server (down, slow, wrong), and the request flow charging what the hook said, failing closed
without it, and answering a price change between challenge and payment with a clean 402."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from multidict import CIMultiDict
from x402.http.utils import decode_payment_required_header

from gateway.app import create_app
from gateway.composition import Parts
from gateway.config import loads
from gateway.config.settings import PriceHook
from gateway.errors import ConfigError, PriceUnavailable
from gateway.payment.price_hook import HttpPriceSource
from gateway.payment.prices import PriceQuery, Prices, atomic, with_amount
from tests.unit.payment.test_engine import FakeFacilitator
from tests.unit.wire_helpers import ASSET, PAY_TO, new_account, sdk_v2_payment

HEAD = f"""
upstream: "{{origin}}"
facilitator: {{{{url: "http://127.0.0.1:9/"}}}}
pay_to: "{PAY_TO}"
asset: {{{{address: "{ASSET}", name: USDC, version: "2", decimals: 6}}}}
admin: off
routes:
  - path: /quote/*
    price: {{{{hook: "{{hook}}", cache: 30s, timeout: 300ms, headers: [X-Tier]}}}}
  - path: /sized
    price: "$0.01"
    price_by:
      query.size: {{{{large: "$0.05", sample: free}}}}
      header.X-Tier: {{{{pro: "$0.002"}}}}
"""


def test_atomic() -> None:
    assert atomic("$0.003", 6) == 3000
    assert atomic("free", 6) is None
    with pytest.raises(ValueError, match="finer"):
        atomic("$0.0000001", 6)
    with pytest.raises(ValueError):
        atomic("cheap", 6)


def test_config_rejects_a_hook_with_rules_and_rules_without_a_price() -> None:
    base = HEAD.split("routes:", maxsplit=1)[0].format(origin="http://127.0.0.1:9", hook="x")
    for route, message in [
        ('{path: /a, price: {hook: "http://h/"}, price_by: {query.a: {b: "$1"}}}', "not both"),
        ('{path: /a, price: free, price_by: {query.a: {b: "$1"}}}', "needs a price"),
        ('{path: /a, price: "$1", price_by: {cookie.a: {b: "$1"}}}', "query.NAME"),
        ("{path: /a, price: {cache: 1s}}", "required"),
    ]:
        with pytest.raises(ConfigError) as caught:
            loads(base + f"routes:\n  - {route}\n")
        assert message in "\n".join(caught.value.errors), route


class Answers:
    """A price source that answers as told and counts its calls."""

    def __init__(self, *answers: Any, delay: float = 0.0) -> None:
        self.answers = list(answers)
        self.calls = 0
        self.delay = delay

    async def ask(self, hook: PriceHook, query: PriceQuery) -> str:
        self.calls += 1
        await asyncio.sleep(self.delay)
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        return str(answer)

    async def close(self) -> None:
        return None


def routes() -> Any:
    return loads(HEAD.format(origin="http://127.0.0.1:9", hook="http://127.0.0.1:9/p")).routes


async def test_hook_price_is_cached_per_key_and_asked_once_for_concurrent_requests() -> None:
    source = Answers("$0.003", delay=0.01)
    prices, hooked = Prices(source), routes()[0]
    resolved = await asyncio.gather(
        *(prices.resolve(hooked, "GET", "/quote/a", "", {}) for _ in range(10))
    )
    assert {r.accepts[0].amount for r in resolved} == {3000} and source.calls == 1
    await prices.resolve(hooked, "GET", "/quote/b", "", {})
    await prices.resolve(hooked, "GET", "/quote/a", "", CIMultiDict({"X-Tier": "pro"}))
    assert source.calls == 3  # another path, another selected header value: other keys


async def test_hook_failure_is_not_cached() -> None:
    source = Answers(PriceUnavailable("down"), "$0.004")
    prices, hooked = Prices(source), routes()[0]
    with pytest.raises(PriceUnavailable):
        await prices.resolve(hooked, "GET", "/quote/a", "", {})
    assert (await prices.resolve(hooked, "GET", "/quote/a", "", {})).accepts[0].amount == 4000


async def test_hook_answer_that_is_no_price_fails_closed_and_free_is_free() -> None:
    hooked = routes()[0]
    with pytest.raises(PriceUnavailable, match="no price"):
        await Prices(Answers("lots")).resolve(hooked, "GET", "/quote/a", "", {})
    assert (await Prices(Answers("free")).resolve(hooked, "GET", "/quote/a", "", {})).free


async def test_rules_pick_the_first_matching_value() -> None:
    prices, sized = Prices(Answers("unused")), routes()[1]

    async def amount(query: str, headers: dict[str, str]) -> int | None:
        route = await prices.resolve(sized, "GET", "/sized", query, CIMultiDict(headers))
        return route.accepts[0].amount if route.accepts else None

    assert await amount("", {}) == 10_000
    assert await amount("size=large", {"x-tier": "pro"}) == 50_000
    assert await amount("size=medium", {"X-Tier": "pro"}) == 2_000
    assert await amount("size=sample", {}) is None


# --- the hook client, on a real HTTP server ------------------------------------------------


@pytest.fixture
async def hook_server() -> AsyncIterator[tuple[str, list[dict[str, Any]], dict[str, Any]]]:
    seen: list[dict[str, Any]] = []
    behaviour: dict[str, Any] = {"price": "$0.003", "status": 200, "delay": 0.0}

    async def price(request: web.Request) -> web.Response:
        seen.append(await request.json())
        await asyncio.sleep(behaviour["delay"])
        if behaviour["status"] != 200:
            return web.Response(status=behaviour["status"])
        return web.json_response({"price": behaviour["price"]})

    app = web.Application()
    app.router.add_post("/price", price)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield str(server.make_url("/price")), seen, behaviour
    await server.close()


async def test_hook_client_sends_the_request_and_fails_closed(hook_server: Any) -> None:
    url, seen, behaviour = hook_server
    source, hook = HttpPriceSource(), PriceHook(url, timeout=0.2, headers=("x-tier",))
    query = PriceQuery("GET", "/quote/a", "symbol=ETH", (("x-tier", "pro"),))
    try:
        assert await source.ask(hook, query) == "$0.003"
        assert seen == [
            {
                "method": "GET",
                "path": "/quote/a",
                "query": "symbol=ETH",
                "headers": {"x-tier": "pro"},
            }
        ]
        behaviour["status"] = 500
        with pytest.raises(PriceUnavailable, match="500"):
            await source.ask(hook, query)
        behaviour.update(status=200, delay=0.5)
        with pytest.raises(PriceUnavailable, match="longer"):
            await source.ask(hook, query)
        with pytest.raises(PriceUnavailable, match="unreachable"):
            await source.ask(PriceHook("http://127.0.0.1:9/price"), query)
    finally:
        await source.close()


# --- the request flow -----------------------------------------------------------------------


@pytest.fixture
async def rig(hook_server: Any) -> AsyncIterator[tuple[TestClient[Any, Any], Any, FakeFacilitator]]:
    url, _, behaviour = hook_server
    calls: list[str] = []

    async def origin_handler(request: web.Request) -> web.Response:
        calls.append(request.path)
        return web.json_response({"ok": True})

    origin_app = web.Application()
    origin_app.router.add_route("*", "/{tail:.*}", origin_handler)
    origin = TestServer(origin_app, host="127.0.0.1")
    await origin.start_server()
    fac = FakeFacilitator()
    text = HEAD.format(origin=str(origin.make_url("")).rstrip("/"), hook=url)
    text = text.replace("cache: 30s", "cache: 0s")
    settings = loads(text)
    parts = Parts(facilitator=lambda _s, _m: fac)
    client: TestClient[Any, Any] = TestClient(TestServer(create_app(settings, parts=parts)))
    await client.start_server()
    yield client, (behaviour, calls, settings), fac
    await client.close()
    await origin.close()


async def test_the_402_announces_the_hooks_price_and_a_change_is_a_clean_402(rig: Any) -> None:
    client, (behaviour, calls, settings), fac = rig
    r = await client.get("/quote/a")
    assert r.status == 402
    announced = decode_payment_required_header(r.headers["PAYMENT-REQUIRED"])
    assert announced.accepts[0].amount == "3000"
    # A payment for what was announced is accepted...
    route = settings.routes[0]
    at_3000 = with_amount(route, 3000)
    account = new_account()
    _, paid = sdk_v2_payment(at_3000, account)
    assert (await client.get("/quote/a", headers={"PAYMENT-SIGNATURE": paid})).status == 200
    # ...then the price changes: the same kind of payment gets a 402 with the new price.
    behaviour["price"] = "$0.004"
    _, stale = sdk_v2_payment(at_3000, account)
    again = await client.get("/quote/a", headers={"PAYMENT-SIGNATURE": stale})
    assert again.status == 402
    assert (
        decode_payment_required_header(again.headers["PAYMENT-REQUIRED"]).accepts[0].amount
        == "4000"
    )
    assert calls == ["/quote/a"] and fac.calls == ["verify", "settle"]


async def test_hook_down_is_503_and_the_origin_is_not_called(rig: Any) -> None:
    client, (behaviour, calls, _), fac = rig
    behaviour["status"] = 502
    _, paid = sdk_v2_payment(routes()[1], new_account())
    r = await client.get("/quote/a", headers={"PAYMENT-SIGNATURE": paid})
    assert r.status == 503 and (await r.json())["reason"] == "price_unavailable"
    assert r.headers["Retry-After"] == "5"
    assert calls == [] and fac.calls == []
