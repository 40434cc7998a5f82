"""Metered prices (`upto`) through a real gateway: the payer authorizes the route's maximum,
the origin states what the call cost in `Settlement-Overrides`, the gateway settles exactly
that (through the SDK's facilitator over HTTP, the upto Permit2 proxy, anvil) and strips the
header. Paid in TestUSDT by the SDK's own upto client. Money is counted on chain.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from aiohttp import web
from x402.http.utils import decode_payment_required_header, decode_payment_response_header

from gateway.demo import x402_sdk as sdk
from gateway.demo.payer import pay_challenge
from tests.e2e.conftest import Chain
from tests.e2e.gateway_proc import GatewayProcess, ThreadedApp, gateway

pytestmark = pytest.mark.e2e
MAXIMUM = 100_000  # $0.10 in 6-decimal TestUSDT
DEFAULT = 10_000  # $0.01


class MeteredOrigin(ThreadedApp):
    """An API that states what each call cost: `?amount=<as the spec allows>` becomes its
    `Settlement-Overrides` header (absent: it states nothing)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def app(self) -> web.Application:
        async def chat(request: web.Request) -> web.Response:
            self.calls.append(request.path)
            headers = {}
            if "amount" in request.query:
                headers["Settlement-Overrides"] = json.dumps({"amount": request.query["amount"]})
            return web.json_response({"answer": "42", "path": request.path}, headers=headers)

        app = web.Application()
        app.router.add_get("/chat/{name}", chat)
        return app


@pytest.fixture(scope="module")
def metered_origin() -> Iterator[MeteredOrigin]:
    o = MeteredOrigin().start()
    yield o
    o.stop()


@pytest.fixture(scope="module")
def gw(
    chain: Chain,
    metered_origin: MeteredOrigin,
    pay_to: str,
    facilitator_url: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[GatewayProcess]:
    usdt = {"address": chain.local.usdt, "name": "Tether USD", "version": "1", "decimals": 6}
    cfg = {
        "upstream": metered_origin.url,
        "facilitator": {"url": facilitator_url, "timeout": "20s"},
        "network": chain.network,
        "pay_to": pay_to,
        "assets": {"usdt": {**usdt, "transfer": "permit2", "symbol": "USDT"}},
        "routes": [
            {"path": "/chat/*", "price": {"upto": "$0.10", "default": "$0.01"}, "asset": "usdt"}
        ],
    }
    with gateway(cfg, tmp_path_factory.mktemp("gw-upto")) as g:
        yield g


async def _paid_headers(gw: GatewayProcess, chain: Chain, path: str) -> tuple[dict[str, str], str]:
    payer = chain.local.new_usdt_payer(1_000_000, approve=True)
    client = sdk.make_payer_client(payer, chain.rpc_url, [(chain.network, chain.local.usdt)])
    async with httpx.AsyncClient() as http:
        challenge = await http.get(gw.url + path)
    assert challenge.status_code == 402, challenge.text
    headers, _ = await pay_challenge(client, challenge.headers, challenge.content)
    return headers, payer.address


async def _get(gw: GatewayProcess, path: str, headers: dict[str, str]) -> httpx.Response:
    async with httpx.AsyncClient(timeout=30) as http:
        return await http.get(gw.url + path, headers=headers)


async def test_the_challenge_asks_for_the_maximum_bound_to_the_facilitator(
    gw: GatewayProcess, chain: Chain
) -> None:
    async with httpx.AsyncClient() as http:
        r = await http.get(gw.url + "/chat/hello")
    assert r.status_code == 402
    (req,) = decode_payment_required_header(r.headers["PAYMENT-REQUIRED"]).accepts
    assert (req.scheme, req.amount) == ("upto", str(MAXIMUM))
    assert req.asset.lower() == chain.local.usdt.lower()
    assert req.extra["assetTransferMethod"] == "permit2"
    assert req.extra["facilitatorAddress"].lower() == chain.facilitator_address.lower()


@pytest.mark.parametrize(
    ("stated", "settled"),
    [
        ("$0.0123", 12_300),  # dollars
        ("12300", 12_300),  # atomic units
        ("25%", 25_000),  # of the maximum
        (None, DEFAULT),  # the origin states nothing: the route's default
        ("150000", MAXIMUM),  # more than authorized: capped
        ("0", 0),  # nothing used: nothing settled, no transaction
    ],
)
async def test_the_origin_states_usage_and_exactly_that_settles(
    gw: GatewayProcess,
    chain: Chain,
    metered_origin: MeteredOrigin,
    pay_to: str,
    stated: str | None,
    settled: int,
) -> None:
    query = "" if stated is None else "?" + httpx.QueryParams({"amount": stated}).__str__()
    path = f"/chat/{len(metered_origin.calls)}"
    headers, payer = await _paid_headers(gw, chain, path)
    before = chain.local.usdt_balance_of(pay_to)
    txs = chain.tx_count(chain.facilitator_address)
    r = await _get(gw, path + query, headers)
    assert r.status_code == 200, r.text
    assert "Settlement-Overrides" not in r.headers  # the origin's word to the gateway only
    assert r.json()["answer"] == "42"
    receipt = decode_payment_response_header(r.headers["PAYMENT-RESPONSE"])
    assert receipt.success and receipt.amount == str(settled), receipt
    print(f"\nupto stated {stated!r}: settled {settled} units, tx {receipt.transaction or '-'}")
    assert chain.local.usdt_balance_of(pay_to) == before + settled
    assert chain.local.usdt_balance_of(payer) == 1_000_000 - settled
    assert chain.tx_count(chain.facilitator_address) == txs + (1 if settled else 0)
    if stated == "150000":
        assert "usage_capped" in gw.logs()


async def test_a_metered_payment_buys_one_response_even_sent_10_times_at_once(
    gw: GatewayProcess, chain: Chain, metered_origin: MeteredOrigin, pay_to: str
) -> None:
    path = "/chat/burst"
    headers, _ = await _paid_headers(gw, chain, path)
    before = chain.local.usdt_balance_of(pay_to)
    txs = chain.tx_count(chain.facilitator_address)
    answers: list[Any] = await asyncio.gather(
        *(_get(gw, path + "?amount=%240.0123", headers) for _ in range(10))
    )
    statuses = sorted(a.status_code for a in answers)
    assert statuses.count(200) == 1 and set(statuses) <= {200, 409}, statuses
    assert metered_origin.calls.count(path) == 1
    replay = await _get(gw, path + "?amount=%240.05", headers)
    assert replay.status_code == 409
    assert chain.local.usdt_balance_of(pay_to) == before + 12_300
    assert chain.tx_count(chain.facilitator_address) == txs + 1
