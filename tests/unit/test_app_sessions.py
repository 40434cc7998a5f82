"""SIWX sign-ins in the request flow (gateway/app.py): counted against the client IP's rates
as a paid call is, once per request, and counted in the metrics as sign-ins (not payments).
A real aiohttp origin, the SDK's own proof builder, the memory store; the facilitator is a
fake (a sign-in never calls it; the real one is in tests/e2e/test_sessions.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from eth_account import Account
from eth_account.signers.local import LocalAccount
from prometheus_client.parser import text_string_to_metric_families
from x402.extensions.sign_in_with_x import SIGN_IN_WITH_X, create_siwx_payload, encode_siwx_header
from x402.mechanisms.evm import EthAccountSigner

from gateway.app import LIVE, METRICS, create_app
from gateway.composition import Parts
from gateway.config import loads
from tests.unit.payment.test_engine import FakeFacilitator
from tests.unit.wire_helpers import ASSET, PAY_TO

PUBLIC = "https://api.example.com"
CONFIG = f"""
upstream: "{{origin}}"
facilitator: {{{{url: "http://127.0.0.1:9/"}}}}
pay_to: "{PAY_TO}"
asset: {{{{address: "{ASSET}", name: USDC, version: "2", decimals: 6}}}}
public_url: {PUBLIC}
admin: off
limits: {{{{per_ip: 3/m}}}}
routes:
  - path: /reports/*
    price: "$0.05"
    access: {{{{for: 1h}}}}
"""


class Rig:
    def __init__(self, client: TestClient[Any, Any], origin_calls: list[str]) -> None:
        self.client = client
        self.origin_calls = origin_calls

    @property
    def app(self) -> web.Application:
        return self.client.server.app  # type: ignore[no-any-return]

    async def paid(self, account: LocalAccount) -> None:
        gw = self.app[LIVE].current
        assert gw.sessions is not None
        await gw.sessions.paid(gw.settings.routes[0], account.address)

    async def proof(self, account: LocalAccount, path: str = "/reports/a") -> str:
        """A proof made by the SDK for a fresh challenge (taken in-process: a 402 fetched
        over HTTP would count against the IP's rate too)."""
        gw = self.app[LIVE].current
        assert gw.sessions is not None
        extensions = await gw.sessions.extensions(gw.settings.routes[0], PUBLIC + path)
        assert extensions is not None
        siwx = extensions[SIGN_IN_WITH_X]
        chain = siwx["supportedChains"][0]
        info = {**siwx["info"], "chainId": chain["chainId"], "type": chain["type"]}
        payload = await create_siwx_payload(info, EthAccountSigner(account), PUBLIC + path)
        return encode_siwx_header(payload)

    def sign_ins(self) -> dict[tuple[str, str, str], float]:
        body, _ = self.app[METRICS].render()
        return {
            (s.labels["route"], s.labels["outcome"], s.labels["reason"]): s.value
            for family in text_string_to_metric_families(body.decode())
            for s in family.samples
            if s.name == "x402_gateway_sign_ins_total"
        }

    def payments(self) -> float:
        body, _ = self.app[METRICS].render()
        return sum(
            s.value
            for family in text_string_to_metric_families(body.decode())
            for s in family.samples
            if s.name == "x402_gateway_payments_total"
        )


@pytest.fixture
async def rig() -> AsyncIterator[Callable[[], Awaitable[Rig]]]:
    calls: list[str] = []

    async def handler(request: web.Request) -> web.Response:
        calls.append(request.headers.get("X-Payer", ""))
        return web.json_response({"report": "for a payer"})

    origin_app = web.Application()
    origin_app.router.add_route("*", "/{tail:.*}", handler)
    origin = TestServer(origin_app, host="127.0.0.1")
    await origin.start_server()
    clients: list[TestClient[Any, Any]] = []

    async def make() -> Rig:
        settings = loads(CONFIG.format(origin=str(origin.make_url("")).rstrip("/")))
        parts = Parts(facilitator=lambda _settings, _metrics: FakeFacilitator())
        client: TestClient[Any, Any] = TestClient(TestServer(create_app(settings, parts=parts)))
        await client.start_server()
        clients.append(client)
        return Rig(client, calls)

    yield make
    for c in clients:
        await c.close()
    await origin.close()


async def test_a_sign_in_is_served_and_counted_as_a_sign_in(
    rig: Callable[[], Awaitable[Rig]],
) -> None:
    r = await rig()
    payer, stranger = Account.create(), Account.create()
    await r.paid(payer)
    ok = await r.client.get("/reports/a", headers={SIGN_IN_WITH_X: await r.proof(payer)})
    assert ok.status == 200, await ok.text()
    assert r.origin_calls == [payer.address]
    refused = await r.client.get("/reports/a", headers={SIGN_IN_WITH_X: await r.proof(stranger)})
    assert refused.status == 402
    assert r.sign_ins() == {
        ("/reports/*", "signed_in", ""): 1,
        ("/reports/*", "refused", "siwx_not_paid"): 1,
    }
    assert r.payments() == 0  # no payment was carried: neither request is a payment


async def test_sign_ins_share_the_ip_rate_with_paid_calls(
    rig: Callable[[], Awaitable[Rig]],
) -> None:
    r = await rig()
    payer = Account.create()
    await r.paid(payer)
    # per_ip 3/m: a 402 for a request without payment and two sign-ins take the three.
    assert (await r.client.get("/reports/a")).status == 402
    for _ in range(2):
        ok = await r.client.get("/reports/a", headers={SIGN_IN_WITH_X: await r.proof(payer)})
        assert ok.status == 200
    over = await r.client.get("/reports/a", headers={SIGN_IN_WITH_X: await r.proof(payer)})
    assert over.status == 429 and over.headers["Retry-After"]
    assert len(r.origin_calls) == 2
    # Refused before its proof was read: no sign-in outcome counted for it.
    assert r.sign_ins() == {("/reports/*", "signed_in", ""): 2}


async def test_a_sign_in_beside_a_payment_is_counted_once(
    rig: Callable[[], Awaitable[Rig]],
) -> None:
    r = await rig()
    payer = Account.create()
    await r.paid(payer)
    # A client may send both (the proof wins when accepted): one request, one token.
    for _ in range(3):
        headers = {SIGN_IN_WITH_X: await r.proof(payer), "PAYMENT-SIGNATURE": "not read"}
        ok = await r.client.get("/reports/a", headers=headers)
        assert ok.status == 200, await ok.text()
    headers = {SIGN_IN_WITH_X: await r.proof(payer), "PAYMENT-SIGNATURE": "not read"}
    assert (await r.client.get("/reports/a", headers=headers)).status == 429
    assert len(r.origin_calls) == 3
