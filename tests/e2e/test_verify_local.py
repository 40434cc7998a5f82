"""`verify: local` through a real gateway, the SDK's facilitator over HTTP and the SDK's
paying client, counted on chain: a good payment is served and charged once; a payment the
chain refuses (the payer cannot cover it) costs one origin call, as documented, and is
neither served nor charged; wrong terms are refused before the origin. With an RPC URL
(`networks:`), balance and nonce are read first: such payments are refused before the origin;
with that RPC down, the facilitator's /verify decides."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from x402.http.utils import decode_payment_response_header
from x402.mechanisms.evm.constants import ERR_INSUFFICIENT_BALANCE, ERR_NONCE_ALREADY_USED

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


async def chain_reads(gw: GatewayProcess) -> dict[str, float]:
    """`x402_gateway_chain_reads_total` by outcome, from the gateway's admin /metrics."""
    async with httpx.AsyncClient(timeout=10) as http:
        text = (await http.get(gw.admin_url + "/metrics")).text
    rows = [line for line in text.splitlines() if line.startswith("x402_gateway_chain_reads_total")]
    return {row.split('outcome="')[1].split('"')[0]: float(row.rsplit(" ", 1)[1]) for row in rows}


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


def config_with_rpc(
    chain: Chain, origin: Origin, pay_to: str, url: str, rpc: str
) -> dict[str, Any]:
    return config(chain, origin, pay_to, url) | {"networks": {chain.network: {"rpc_url": rpc}}}


async def settle_elsewhere(facilitator_url: str, payload: Any) -> None:
    """Spend an authorization behind the gateway's back: the facilitator settles it."""
    body = {
        "x402Version": payload.x402_version,
        "paymentPayload": payload.model_dump(mode="json", by_alias=True, exclude_none=True),
        "paymentRequirements": payload.accepted.model_dump(
            mode="json", by_alias=True, exclude_none=True
        ),
    }
    async with httpx.AsyncClient(timeout=60) as http:
        settled = (await http.post(f"{facilitator_url}/settle", json=body)).json()
    assert settled["success"], settled


async def test_verify_local_reads_balance_and_nonce_before_the_origin(
    chain: Chain, origin: Origin, facilitator_url: str, make_payer: Any, tmp_path: Path
) -> None:
    pay_to = str(chainlib.new_account().address)
    good, poor, spent = make_payer(), make_payer(amount=PRICE - 1), make_payer()
    cfg = config_with_rpc(chain, origin, pay_to, facilitator_url, chain.rpc_url)
    with gateway(cfg, tmp_path) as gw:
        served = await pay(gw, chain, good, "/paid/chain-good")
        refused = await pay(gw, chain, poor, "/paid/chain-poor")
        # an authorization already used on chain (settled elsewhere), new to this gateway
        async with httpx.AsyncClient(timeout=60) as http:
            challenge = await http.get(gw.url + "/paid/chain-spent")
            client = make_x402_client(spent, [(chain.network, chain.token)])
            headers, payload = await pay_challenge(client, challenge.headers, challenge.content)
            await settle_elsewhere(facilitator_url, payload)
            replayed = await http.get(gw.url + "/paid/chain-spent", headers=headers)
        logs = gw.logs()
        reads = await chain_reads(gw)
    assert reads == {"ok": 1, ERR_INSUFFICIENT_BALANCE: 1, ERR_NONCE_ALREADY_USED: 1}, reads
    assert served.status_code == 200, served.text
    settled = decode_payment_response_header(served.headers["PAYMENT-RESPONSE"])
    assert settled.success and chain.balance_of(good.address) == 10_000_000 - PRICE
    assert len(origin.log.for_path("/paid/chain-good")) == 1
    # the chain read refuses these before the origin (without it, each cost an origin call)
    assert refused.status_code == 402 and refused.json()["error"] == ERR_INSUFFICIENT_BALANCE
    assert origin.log.for_path("/paid/chain-poor") == []
    assert chain.balance_of(poor.address) == PRICE - 1
    assert replayed.status_code == 402 and replayed.json()["error"] == ERR_NONCE_ALREADY_USED
    assert origin.log.for_path("/paid/chain-spent") == []
    # charged once (the settle elsewhere), not twice
    assert chain.balance_of(spent.address) == 10_000_000 - PRICE
    assert chain.balance_of(pay_to) == 2 * PRICE
    assert "local_verify_rpc_failed" not in logs


async def test_verify_local_without_its_rpc_asks_the_facilitator(
    chain: Chain, origin: Origin, facilitator_url: str, make_payer: Any, tmp_path: Path
) -> None:
    """RPC down: the facilitator's /verify decides (still before the origin), nothing else
    changes; a good payment is served and settled."""
    pay_to = str(chainlib.new_account().address)
    good, poor = make_payer(), make_payer(amount=PRICE - 1)
    dead = f"http://127.0.0.1:{chainlib.free_port()}/v2/secret-api-key"
    with gateway(config_with_rpc(chain, origin, pay_to, facilitator_url, dead), tmp_path) as gw:
        refused = await pay(gw, chain, poor, "/paid/norpc-poor")
        served = await pay(gw, chain, good, "/paid/norpc-good")
        logs = gw.logs()
        reads = await chain_reads(gw)
    assert reads == {"fallback": 2}, reads  # failed, then resting: the facilitator verified
    assert "local_verify_rpc_failed" in logs and "secret-api-key" not in logs
    assert refused.status_code == 402 and refused.json()["error"] == ERR_INSUFFICIENT_BALANCE
    assert origin.log.for_path("/paid/norpc-poor") == []
    assert served.status_code == 200, served.text
    assert decode_payment_response_header(served.headers["PAYMENT-RESPONSE"]).success
    assert chain.balance_of(pay_to) == PRICE and chain.balance_of(poor.address) == PRICE - 1
