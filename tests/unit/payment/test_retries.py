"""Idempotent retries in the request flow, with a scripted facilitator and a real aiohttp
origin: a kept response answers a retry without the facilitator or the origin; a required
identifier that is missing is 400; the 402 declares the extension."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from x402.extensions.payment_identifier import PAYMENT_IDENTIFIER
from x402.http.utils import decode_payment_required_header, encode_payment_signature_header

from gateway.app import create_app
from gateway.composition import Parts
from gateway.config import loads
from gateway.payment.retries import Kept
from tests.unit.payment.test_engine import FakeFacilitator
from tests.unit.wire_helpers import ASSET, PAY_TO, new_account, route, sdk_v2_payment

CONFIG = f"""
upstream: "{{origin}}"
facilitator: {{{{url: "http://127.0.0.1:9/"}}}}
pay_to: "{PAY_TO}"
asset: {{{{address: "{ASSET}", name: USDC, version: "2", decimals: 6}}}}
admin: off
idempotency: {{{{keep_body: 1KiB, required: {{required}}}}}}
routes:
  - path: /paid/*
    price: "$0.001"
"""


def test_kept_round_trip() -> None:
    kept = Kept("fp", "done", 200, (("Content-Type", "text/plain"),), b"\x00body")
    assert Kept.loads(kept.dumps()) == kept


def named(payment_id: str | None) -> dict[str, str]:
    payload, _ = sdk_v2_payment(route(), new_account())
    if payment_id is not None:
        payload.extensions = {PAYMENT_IDENTIFIER: {"info": {"required": False, "id": payment_id}}}
    return {"PAYMENT-SIGNATURE": encode_payment_signature_header(payload)}


async def rig(required: bool) -> tuple[TestClient[Any, Any], FakeFacilitator, list[int], Any]:
    served: list[int] = []

    async def origin_handler(request: web.Request) -> web.Response:
        served.append(1)
        size = int(request.query.get("size", "10"))
        return web.Response(body=str(len(served)).encode() * size)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", origin_handler)
    origin = TestServer(app, host="127.0.0.1")
    await origin.start_server()
    fac = FakeFacilitator()
    text = CONFIG.format(
        origin=str(origin.make_url("")).rstrip("/"), required=str(required).lower()
    )
    client: TestClient[Any, Any] = TestClient(
        TestServer(create_app(loads(text), parts=Parts(facilitator=lambda _s, _m: fac)))
    )
    await client.start_server()
    return client, fac, served, origin


@pytest.fixture
async def optional() -> AsyncIterator[tuple[TestClient[Any, Any], FakeFacilitator, list[int]]]:
    client, fac, served, origin = await rig(required=False)
    yield client, fac, served
    await client.close()
    await origin.close()


async def test_retry_is_answered_from_the_kept_response(optional: Any) -> None:
    client, fac, served = optional
    headers = named("pay_unit_test_retry_00001")
    first = await client.get("/paid/x", headers=headers)
    retry = await client.get("/paid/x", headers=headers)
    assert first.status == retry.status == 200
    assert await first.read() == await retry.read() == b"1" * 10
    assert retry.headers["PAYMENT-RESPONSE"] == first.headers["PAYMENT-RESPONSE"]
    assert served == [1] and fac.calls == ["verify", "settle"]


async def test_unnamed_payments_are_not_kept_and_the_402_declares_the_extension(
    optional: Any,
) -> None:
    client, _, _ = optional
    challenge = await client.get("/paid/x")
    declared = decode_payment_required_header(challenge.headers["PAYMENT-REQUIRED"]).extensions
    assert declared is not None and declared[PAYMENT_IDENTIFIER]["info"]["required"] is False
    headers = named(None)
    assert (await client.get("/paid/x", headers=headers)).status == 200
    assert (await client.get("/paid/x", headers=headers)).status == 409  # the claim's answer


async def test_a_large_response_is_streamed_whole_and_its_retry_is_409(optional: Any) -> None:
    client, _, served = optional
    headers = named("pay_unit_test_large_00001")
    first = await client.get("/paid/x?size=5000", headers=headers)
    assert first.status == 200 and await first.read() == b"1" * 5000
    retry = await client.get("/paid/x?size=5000", headers=headers)
    assert retry.status == 409 and "PAYMENT-RESPONSE" in retry.headers
    assert served == [1]


async def test_required_identifier_missing_is_400() -> None:
    client, fac, served, origin = await rig(required=True)
    try:
        r = await client.get("/paid/x", headers=named(None))
        assert r.status == 400 and (await r.json())["reason"] == "payment_identifier_required"
        assert fac.calls == [] and served == []
        assert (await client.get("/paid/x", headers=named("pay_unit_required_00001"))).status == 200
    finally:
        await client.close()
        await origin.close()
