"""Discovery end to end: a real gateway process, anvil, the SDK facilitator over HTTP and the
SDK's paying client. An agent reads `/.well-known/x402`, pays a route on its first request
(no 402 taken: one round trip fewer), and the 402 of a route with `discovery` carries the
`bazaar` extension that the SDK's payer copies and a facilitator's catalogue reads."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import httpx
import pytest
from eth_account.signers.local import LocalAccount
from x402.extensions.bazaar import extract_discovery_info
from x402.http import x402HTTPClient
from x402.http.utils import decode_payment_response_header
from x402.schemas import PaymentPayload, PaymentRequirements

from gateway.demo.payer import make_x402_client, pay_challenge, sign_requirements
from tests.e2e.conftest import Chain
from tests.e2e.fault_parts import gateway_config
from tests.e2e.gateway_proc import GatewayProcess, Origin, gateway

pytestmark = pytest.mark.e2e
QUOTE_PRICE = 2500  # "$0.0025"


@pytest.fixture(scope="module")
def gw(
    chain: Chain,
    origin: Origin,
    pay_to: str,
    facilitator_url: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[GatewayProcess]:
    cfg = gateway_config(chain, origin.url, pay_to, {"url": facilitator_url}, "memory")
    cfg["routes"].append(
        {
            "path": "/quote/*",
            "methods": ["GET"],
            "price": "$0.0025",
            "description": "A price quote",
            "discovery": {
                "input": {"query": {"symbol": "string"}, "example": {"symbol": "ETH"}},
                "output": {"example": {"price": 1.0}},
            },
        }
    )
    with gateway(cfg, tmp_path_factory.mktemp("discovery")) as g:
        yield g


async def test_an_agent_pays_from_the_well_known_document_without_a_402(
    gw: GatewayProcess,
    chain: Chain,
    pay_to: str,
    origin: Origin,
    make_payer: Callable[..., LocalAccount],
) -> None:
    payer = make_payer()
    seen: list[tuple[str, int]] = []

    async def log(response: httpx.Response) -> None:
        seen.append((response.request.url.path, response.status_code))

    async with httpx.AsyncClient(timeout=30, event_hooks={"response": [log]}) as http:
        listing = await http.get(gw.url + "/.well-known/x402")
        assert listing.status_code == 200 and "ETag" in listing.headers
        cached = await http.get(
            gw.url + "/.well-known/x402", headers={"If-None-Match": listing.headers["ETag"]}
        )
        assert cached.status_code == 304
        (item,) = [i for i in listing.json()["items"] if i["path"] == "/quote/*"]
        assert item["extensions"]["bazaar"]["info"]["input"]["method"] == "GET"
        terms = PaymentRequirements.model_validate(item["accepts"][0])
        url = gw.url + "/quote/ETH?symbol=ETH"
        client = make_x402_client(payer, [(chain.network, chain.token)])
        payload = await sign_requirements(client, terms, url)
        headers = x402HTTPClient(client).encode_payment_signature_header(payload)
        paid_to = chain.balance_of(pay_to)
        answer = await http.get(url, headers=headers)

    assert answer.status_code == 200, answer.text
    assert answer.json()["payer"] == payer.address
    receipt = decode_payment_response_header(answer.headers["PAYMENT-RESPONSE"])
    assert receipt.success and receipt.transaction
    assert chain.balance_of(pay_to) == paid_to + QUOTE_PRICE
    # The paid resource was asked for once, and answered 200: no 402 first.
    assert [s for p, s in seen if p == "/quote/ETH"] == [200]
    assert len(origin.log.for_path("/quote/ETH")) == 1


async def test_the_402_carries_bazaar_and_a_catalogue_reads_it_from_the_payment(
    gw: GatewayProcess, chain: Chain, make_payer: Callable[..., LocalAccount]
) -> None:
    async with httpx.AsyncClient() as http:
        challenge = await http.get(gw.url + "/quote/BTC?symbol=BTC")
        plain = await http.get(gw.url + "/paid/x")
    assert challenge.status_code == 402 and plain.status_code == 402
    client = make_x402_client(make_payer(), [(chain.network, chain.token)])
    _, payload = await pay_challenge(client, challenge.headers, challenge.content)
    assert isinstance(payload, PaymentPayload)
    found = extract_discovery_info(payload, payload.accepted)
    assert found is not None
    assert found.method == "GET"
    assert found.resource_url.endswith("/quote/BTC")
    assert found.description == "A price quote"
    # A route without `discovery` carries no bazaar extension.
    _, other = await pay_challenge(client, plain.headers, plain.content)
    assert isinstance(other, PaymentPayload)
    assert extract_discovery_info(other, other.accepted) is None
