"""Dynamic prices end to end: a real gateway process, the owner's pricing service over HTTP,
anvil, the SDK facilitator over HTTP and the SDK's paying client (which pays whatever the
402 asks). The hook's price is what goes on chain; a changed price is a clean 402; a broken
hook fails closed (503, origin not called, nothing charged)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import httpx
import pytest
from eth_account.signers.local import LocalAccount
from x402.http.utils import decode_payment_required_header, decode_payment_response_header

from gateway.demo.payer import httpx_payer, make_x402_client, pay_challenge
from tests.e2e.conftest import Chain
from tests.e2e.fault_parts import gateway_config
from tests.e2e.gateway_proc import GatewayProcess, Origin, gateway
from tests.e2e.owner_parts import Pricer

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def pricer() -> Iterator[Pricer]:
    p = Pricer("$0.0042").start()
    yield p
    p.stop()


@pytest.fixture(scope="module")
def gw(
    chain: Chain,
    origin: Origin,
    pay_to: str,
    facilitator_url: str,
    pricer: Pricer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[GatewayProcess]:
    cfg = gateway_config(chain, origin.url, pay_to, {"url": facilitator_url}, "memory")
    hook = {"hook": pricer.url + "/price", "cache": "0s", "timeout": "1s", "headers": ["X-Tier"]}
    cfg["routes"] += [
        {"path": "/quote/*", "price": hook},
        {"path": "/sized/*", "price": "$0.001", "price_by": {"query.size": {"large": "$0.003"}}},
    ]
    with gateway(cfg, tmp_path_factory.mktemp("prices")) as g:
        yield g


@pytest.fixture
def reset(pricer: Pricer) -> Iterator[None]:
    yield
    pricer.price, pricer.status = "$0.0042", 200


async def test_a_hook_priced_route_charges_what_the_hook_said(
    gw: GatewayProcess,
    chain: Chain,
    pay_to: str,
    pricer: Pricer,
    make_payer: Callable[..., LocalAccount],
    reset: None,
) -> None:
    payer = make_payer()
    paid_to, txs = chain.balance_of(pay_to), chain.tx_count(chain.facilitator_address)
    client = make_x402_client(payer, [(chain.network, chain.token)])
    async with httpx_payer(client, timeout=30) as http:
        answer = await http.get(gw.url + "/quote/ETH?symbol=ETH", headers={"X-Tier": "gold"})
    assert answer.status_code == 200, answer.text
    assert decode_payment_response_header(answer.headers["PAYMENT-RESPONSE"]).success
    assert chain.balance_of(pay_to) == paid_to + 4200
    assert chain.balance_of(payer.address) == 10_000_000 - 4200
    assert chain.tx_count(chain.facilitator_address) == txs + 1
    assert pricer.asked[-1] == {
        "method": "GET",
        "path": "/quote/ETH",
        "query": "symbol=ETH",
        "headers": {"x-tier": "gold"},
    }


async def test_a_price_change_between_challenge_and_payment_is_a_clean_402(
    gw: GatewayProcess,
    chain: Chain,
    pay_to: str,
    pricer: Pricer,
    make_payer: Callable[..., LocalAccount],
    reset: None,
) -> None:
    payer = make_payer()
    client = make_x402_client(payer, [(chain.network, chain.token)])
    async with httpx.AsyncClient(timeout=30) as http:
        challenge = await http.get(gw.url + "/quote/BTC")
        headers, _ = await pay_challenge(client, challenge.headers, challenge.content)
        pricer.price = "$0.005"
        txs = chain.tx_count(chain.facilitator_address)
        refused = await http.get(gw.url + "/quote/BTC", headers=headers)
    assert refused.status_code == 402
    fresh = decode_payment_required_header(refused.headers["PAYMENT-REQUIRED"])
    assert fresh.accepts[0].amount == "5000"
    assert chain.tx_count(chain.facilitator_address) == txs
    assert chain.balance_of(payer.address) == 10_000_000


async def test_hook_down_fails_closed(
    gw: GatewayProcess,
    chain: Chain,
    origin: Origin,
    pricer: Pricer,
    make_payer: Callable[..., LocalAccount],
    reset: None,
) -> None:
    client = make_x402_client(make_payer(), [(chain.network, chain.token)])
    async with httpx.AsyncClient(timeout=30) as http:
        challenge = await http.get(gw.url + "/quote/SOL")
        headers, _ = await pay_challenge(client, challenge.headers, challenge.content)
        pricer.status = 500
        txs = chain.tx_count(chain.facilitator_address)
        unpaid = await http.get(gw.url + "/quote/SOL")
        paid = await http.get(gw.url + "/quote/SOL", headers=headers)
    for answer in (unpaid, paid):
        assert answer.status_code == 503, answer.text
        assert answer.json()["reason"] == "price_unavailable"
    assert origin.log.for_path("/quote/SOL") == []
    assert chain.tx_count(chain.facilitator_address) == txs


async def test_price_by_rules_charge_by_query(
    gw: GatewayProcess, chain: Chain, pay_to: str, make_payer: Callable[..., LocalAccount]
) -> None:
    payer = make_payer()
    paid_to = chain.balance_of(pay_to)
    client = make_x402_client(payer, [(chain.network, chain.token)])
    async with httpx_payer(client, timeout=30) as http:
        large = await http.get(gw.url + "/sized/r?size=large")
        small = await http.get(gw.url + "/sized/r?size=small")
    assert large.status_code == 200 and small.status_code == 200
    assert chain.balance_of(pay_to) == paid_to + 3000 + 1000
