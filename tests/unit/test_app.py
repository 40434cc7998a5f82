"""The request flow in gateway/app.py with a scripted facilitator (a fake: the real one is in
tests/e2e) and a real aiohttp origin: the paths that a real facilitator rarely takes."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from x402.http.utils import decode_payment_response_header
from x402.schemas import SettleResponse, VerifyResponse

from gateway.app import create_app
from gateway.composition import Parts
from gateway.config import loads
from gateway.errors import FacilitatorUnavailable, SettlementPending
from tests.unit.payment.test_engine import TX, FakeFacilitator
from tests.unit.wire_helpers import ASSET, PAY_TO, new_account, route, sdk_v2_payment

CONFIG = f"""
upstream: "{{origin}}"
facilitator: {{{{url: "http://127.0.0.1:9/"}}}}
pay_to: "{PAY_TO}"
asset: {{{{address: "{ASSET}", name: USDC, version: "2", decimals: 6}}}}
server_timing: true
admin: off
routes:
  - path: /paid/*
    price: "$0.001"
"""


class Origin:
    def __init__(self) -> None:
        self.calls = 0
        self.status = 200

    async def handler(self, request: web.Request) -> web.Response:
        self.calls += 1
        headers = CDN_HEADERS if "cdn" in request.path else {}
        return web.json_response({"secret": "paid content"}, status=self.status, headers=headers)


# An origin that means its answers for a CDN (issue 12 item 7), and has no CORS setup.
CDN_HEADERS = {
    "Cache-Control": "public, max-age=3600",
    "Surrogate-Control": "max-age=3600",
    "CDN-Cache-Control": "max-age=3600",
    "Cloudflare-CDN-Cache-Control": "max-age=3600",
    "Netlify-CDN-Cache-Control": "max-age=3600",
    "Edge-Control": "cache-maxage=3600s",
    "X-Accel-Expires": "3600",
    "Vary": "Accept-Encoding",
}


@pytest.fixture
async def rig() -> AsyncIterator[Callable[[FakeFacilitator], Any]]:
    origin = Origin()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", origin.handler)
    origin_server = TestServer(app, host="127.0.0.1")
    await origin_server.start_server()
    clients: list[TestClient[Any, Any]] = []

    async def make(fac: FakeFacilitator) -> tuple[TestClient[Any, Any], Origin]:
        settings = loads(CONFIG.format(origin=str(origin_server.make_url("")).rstrip("/")))
        parts = Parts(facilitator=lambda _settings, _metrics: fac)
        client: TestClient[Any, Any] = TestClient(TestServer(create_app(settings, parts=parts)))
        await client.start_server()
        clients.append(client)
        return client, origin

    yield make
    for c in clients:
        await c.close()
    await origin_server.close()


def payment() -> dict[str, str]:
    _, header = sdk_v2_payment(route(), new_account())
    return {"PAYMENT-SIGNATURE": header}


async def test_paid_request_settles_and_streams(rig: Any) -> None:
    client, origin = await rig(FakeFacilitator())
    r = await client.get("/paid/x", headers=payment())
    assert r.status == 200 and origin.calls == 1
    assert await r.json() == {"secret": "paid content"}
    assert decode_payment_response_header(r.headers["PAYMENT-RESPONSE"]).transaction == TX
    timing = r.headers["Server-Timing"]
    assert all(f"{name};dur=" in timing for name in ("verify", "origin", "settle", "gw", "total"))


async def test_settle_failure_discards_the_origin_body(rig: Any) -> None:
    failed = SettleResponse(
        success=False, error_reason="insufficient_funds", transaction="", network="eip155:84532"
    )
    client, origin = await rig(FakeFacilitator(settle=[failed]))
    r = await client.get("/paid/x", headers=payment())
    body = await r.text()
    assert r.status == 402
    assert "paid content" not in body
    assert json.loads(body)["error"] == "insufficient_funds"
    receipt = decode_payment_response_header(r.headers["PAYMENT-RESPONSE"])
    assert not receipt.success and receipt.error_reason == "insufficient_funds"
    assert origin.calls == 1


async def test_settlement_pending_says_do_not_pay_again(rig: Any) -> None:
    client, _ = await rig(FakeFacilitator(settle=[SettlementPending("no receipt yet")]))
    headers = payment()
    r = await client.get("/paid/x", headers=headers)
    assert r.status == 503 and r.headers["Retry-After"]
    problem = await r.json()
    assert problem["reason"] == "settlement_pending" and "do not pay again" in problem["title"]
    again = await client.get("/paid/x", headers=headers)
    assert again.status == 409


async def test_facilitator_unreachable_fails_closed_before_the_origin(rig: Any) -> None:
    client, origin = await rig(FakeFacilitator(verify=FacilitatorUnavailable("refused")))
    r = await client.get("/paid/x", headers=payment())
    assert r.status == 503 and r.headers["Retry-After"] == "5"
    assert origin.calls == 0


async def test_invalid_payment_gets_a_challenge_and_no_origin_call(rig: Any) -> None:
    client, origin = await rig(
        FakeFacilitator(
            verify=VerifyResponse(
                is_valid=False, invalid_reason="invalid_exact_evm_payload_signature"
            )
        )
    )
    r = await client.get("/paid/x", headers=payment())
    assert r.status == 402
    assert (await r.json())["error"] == "invalid_exact_evm_payload_signature"
    assert origin.calls == 0


async def test_origin_error_is_passed_on_and_not_settled(rig: Any) -> None:
    fac = FakeFacilitator()
    client, origin = await rig(fac)
    origin.status = 503
    r = await client.get("/paid/x", headers=payment())
    assert r.status == 503
    assert "PAYMENT-RESPONSE" not in r.headers
    assert fac.calls == ["verify"]


# --- issue 12: CORS on the gateway's own answers, OPTIONS, CDN directives -----------------


async def test_paid_answer_is_private_no_store_and_loses_cdn_directives(rig: Any) -> None:
    client, _ = await rig(FakeFacilitator())
    r = await client.get("/paid/cdn", headers={**payment(), "Origin": "https://shop.example"})
    assert r.status == 200 and (await r.json())["secret"]
    assert r.headers["Cache-Control"] == "private, no-store"
    cdn = [name for name in CDN_HEADERS if name not in ("Cache-Control", "Vary")]
    assert [name for name in cdn if name in r.headers] == []
    # The origin has no CORS setup: the gateway answered this path's preflight, so the paid
    # answer gets its policy's Allow-Origin (else the page paid and cannot read it).
    assert r.headers["Access-Control-Allow-Origin"] == "*"
    assert "PAYMENT-RESPONSE" in r.headers["Access-Control-Expose-Headers"]
    assert r.headers["Vary"] == "Accept-Encoding"


async def test_the_402_and_problem_answers_carry_cors(rig: Any) -> None:
    client, origin = await rig(FakeFacilitator(verify=FacilitatorUnavailable("refused")))
    page = {"Origin": "https://shop.example"}
    challenge = await client.get("/paid/x", headers=page)
    unavailable = await client.get("/paid/x", headers={**payment(), **page})
    for r, status in ((challenge, 402), (unavailable, 503)):
        assert r.status == status
        assert r.headers["Access-Control-Allow-Origin"] == "*"
        assert "PAYMENT-REQUIRED" in r.headers["Access-Control-Expose-Headers"]
        assert r.headers["Vary"] == "Origin"
    assert origin.calls == 0


async def test_options_on_a_priced_path_never_reaches_the_origin(rig: Any) -> None:
    client, origin = await rig(FakeFacilitator())
    plain = await client.options("/PAID/x")
    preflight = await client.options(
        "/paid/x",
        headers={
            "Origin": "https://shop.example",
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "PAYMENT-SIGNATURE, Access-Control-Expose-Headers",
        },
    )
    free = await client.options("/free/x")
    assert plain.status == 204 and plain.headers["Allow"] == (
        "DELETE, GET, HEAD, OPTIONS, PATCH, POST, PUT"  # the route takes every method
    )
    assert "Access-Control-Allow-Origin" not in plain.headers
    assert preflight.status == 204
    assert preflight.headers["Access-Control-Allow-Origin"] == "*"
    allowed = preflight.headers["Access-Control-Allow-Headers"].lower()
    assert "payment-signature" in allowed and "access-control-expose-headers" in allowed
    assert free.status == 200
    assert origin.calls == 1  # only the free path's OPTIONS


async def test_explicit_cors_origins_are_echoed_with_vary_and_others_get_none() -> None:
    settings = loads(
        CONFIG.format(origin="http://127.0.0.1:9")
        + 'cors: {origins: ["https://shop.example"], credentials: true, max_age: 1m}\n'
    )
    client: TestClient[Any, Any] = TestClient(
        TestServer(create_app(settings, parts=Parts(facilitator=lambda _s, _m: FakeFacilitator())))
    )
    await client.start_server()
    try:
        shop = await client.get("/paid/x", headers={"Origin": "https://shop.example"})
        other = await client.get("/paid/x", headers={"Origin": "https://evil.example"})
        preflight = await client.options(
            "/paid/x",
            headers={"Origin": "https://shop.example", "Access-Control-Request-Method": "GET"},
        )
    finally:
        await client.close()
    assert shop.headers["Access-Control-Allow-Origin"] == "https://shop.example"
    assert shop.headers["Access-Control-Allow-Credentials"] == "true"
    assert shop.headers["Vary"] == "Origin"
    assert "Access-Control-Allow-Origin" not in other.headers
    assert other.headers["Vary"] == "Origin"
    assert preflight.headers["Access-Control-Allow-Origin"] == "https://shop.example"
    assert preflight.headers["Access-Control-Max-Age"] == "60"
