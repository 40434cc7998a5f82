"""`verify: local` through a real gateway, the SDK's facilitator over HTTP and the SDK's
paying client, counted on chain: a good payment is served and charged once; a payment the
chain refuses (the payer cannot cover it) costs one origin call, as documented, and is
neither served nor charged; wrong terms are refused before the origin."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from x402.http.utils import decode_payment_response_header

from gateway.demo import chain as chainlib
from gateway.demo.payer import make_x402_client, pay_challenge
from tests.e2e.conftest import Chain
from tests.e2e.gateway_proc import GatewayProcess, Origin, gateway

pytestmark = pytest.mark.e2e
PRICE = 1000


def config(chain: Chain, origin: Origin, pay_to: str, url: str) -> dict[str, Any]:
    return {
        "upstream": origin.url,
        "facilitator": {"url": url},
        "verify": "local",
        "network": "eip155:84532",
        "pay_to": pay_to,
        "asset": {"address": chain.token, "name": "USD Coin", "version": "2", "decimals": 6},
        "store": "memory",
        "routes": [{"path": "/paid/*", "price": "$0.001"}, {"path": "/dear/*", "price": "$0.002"}],
    }


async def pay(gw: GatewayProcess, chain: Chain, payer: Any, path: str, sign_for: str = "") -> Any:
    client = make_x402_client(payer, [(chain.network, chain.token)])
    async with httpx.AsyncClient(timeout=60) as http:
        challenge = await http.get(gw.url + (sign_for or path))
        headers, _ = await pay_challenge(client, challenge.headers, challenge.content)
        return await http.get(gw.url + path, headers=headers)


async def test_verify_local_serves_only_settled_payments(
    chain: Chain, origin: Origin, facilitator_url: str, make_payer: Any, tmp_path: Path
) -> None:
    pay_to = str(chainlib.new_account().address)
    good, poor, cheap = make_payer(), make_payer(amount=PRICE - 1), make_payer()
    with gateway(config(chain, origin, pay_to, facilitator_url), tmp_path) as gw:
        served = await pay(gw, chain, good, "/paid/local-good")
        refused = await pay(gw, chain, poor, "/paid/local-poor")
        # signed for /paid (0.001) and sent to /dear (0.002): wrong amount, judged in process
        underpaid = await pay(gw, chain, cheap, "/dear/local-cheap", sign_for="/paid/x")
    assert served.status_code == 200, served.text
    settled = decode_payment_response_header(served.headers["PAYMENT-RESPONSE"])
    assert settled.success and chain.balance_of(pay_to) == PRICE
    assert chain.balance_of(good.address) == 10_000_000 - PRICE
    # the trade-off: the origin was called for a payment that then failed to settle...
    assert len(origin.log.for_path("/paid/local-poor")) == 1
    # ...but its answer was not served, and nothing was charged
    assert refused.status_code != 200 and '"ok": true' not in refused.text
    assert chain.balance_of(poor.address) == PRICE - 1
    assert underpaid.status_code == 402 and origin.log.for_path("/dear/local-cheap") == []
    assert chain.balance_of(cheap.address) == 10_000_000
