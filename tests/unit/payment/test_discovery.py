"""Discovery: the `bazaar` extension a route's 402 carries (valid by the SDK's own facilitator
-side check), and the `/.well-known/x402` document (cacheable, from the config alone)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from x402.extensions.bazaar import validate_discovery_extension
from x402.http.utils import decode_payment_required_header

from gateway.app import create_app
from gateway.config import loads
from gateway.errors import ConfigError
from gateway.payment.challenge import payment_required
from gateway.payment.discovery import bazaar_extension, well_known
from tests.unit.wire_helpers import ASSET, PAY_TO

CONFIG = f"""
upstream: http://127.0.0.1:9
facilitator: {{url: "http://127.0.0.1:9/"}}
pay_to: "{PAY_TO}"
asset: {{address: "{ASSET}", name: USDC, version: "2", decimals: 6}}
admin: off
routes:
  - path: /v1/quote/*
    price: "$0.01"
    description: A quote
    discovery: {{input: {{query: {{symbol: string}}, required: [symbol], example: {{symbol: ETH}}}},
                output: {{example: {{price: 1.0}}}}}}
  - path: /v1/translate
    methods: [PUT, POST]
    price: "$0.02"
    discovery: {{input: {{body: {{text: string, to: {{type: string, enum: [de, fr]}}}}}}}}
  - path: /plain
    price: "$0.03"
  - path: /free
    price: free
"""


def test_query_route_extension_is_valid_and_names_its_method() -> None:
    settings = loads(CONFIG)
    ext = bazaar_extension(settings.routes[0])
    assert ext is not None
    assert validate_discovery_extension(ext["bazaar"]).valid
    info = ext["bazaar"]["info"]
    assert info["input"] == {"type": "http", "method": "GET", "queryParams": {"symbol": "ETH"}}
    assert info["output"]["example"] == {"price": 1.0}
    query = ext["bazaar"]["schema"]["properties"]["input"]["properties"]["queryParams"]
    assert query["required"] == ["symbol"]


def test_body_route_uses_a_body_method_it_allows() -> None:
    settings = loads(CONFIG)
    ext = bazaar_extension(settings.routes[1])
    assert ext is not None and validate_discovery_extension(ext["bazaar"]).valid
    assert ext["bazaar"]["info"]["input"]["method"] == "POST"
    assert ext["bazaar"]["info"]["input"]["bodyType"] == "json"
    assert bazaar_extension(settings.routes[2]) is None


def test_the_402_carries_the_extension() -> None:
    settings = loads(CONFIG)
    headers, _ = payment_required(settings.routes[0], "http://gw/v1/quote/x", "Payment required")
    challenge = decode_payment_required_header(headers["PAYMENT-REQUIRED"])
    assert challenge.extensions == bazaar_extension(settings.routes[0])


def test_well_known_lists_priced_routes_only_and_its_etag_follows_the_content() -> None:
    settings = loads(CONFIG)
    body, etag = well_known(settings, "https://api.example")
    document = json.loads(body)
    assert document["version"] == 1
    assert document["resources"] == [
        "https://api.example/v1/quote/*",
        "https://api.example/v1/translate",
        "https://api.example/plain",
    ]
    quote = document["items"][0]
    assert quote["accepts"][0]["amount"] == "10000" and quote["accepts"][0]["payTo"] == PAY_TO
    assert quote["description"] == "A quote" and quote["mimeType"] == "application/json"
    assert "bazaar" in quote["extensions"] and "extensions" not in document["items"][2]
    assert well_known(settings, "https://api.example")[1] == etag
    assert well_known(settings, "https://other.example")[1] != etag


@pytest.mark.parametrize(
    ("discovery", "message"),
    [
        ("{input: {query: {q: str}}}", "not one of"),
        ("{input: {query: {q: string}, body: {b: string}}}", "not both"),
        ("{input: {query: {q: string}, required: [x]}}", "x not declared"),
        ("{input: {query: {q: string}, body_type: xml}}", "not allowed"),
        ("{outputs: {}}", "outputs"),
    ],
)
def test_bad_discovery_is_a_config_error(discovery: str, message: str) -> None:
    text = (
        CONFIG.split("routes:", maxsplit=1)[0]
        + f'routes:\n  - {{path: /a, price: "$0.01", discovery: {discovery}}}\n'
    )
    with pytest.raises(ConfigError) as caught:
        loads(text)
    assert message in "\n".join(caught.value.errors)


@pytest.fixture
async def client() -> AsyncIterator[TestClient[Any, Any]]:
    c: TestClient[Any, Any] = TestClient(TestServer(create_app(loads(CONFIG))))
    await c.start_server()
    yield c
    await c.close()


async def test_well_known_is_served_and_cacheable(client: TestClient[Any, Any]) -> None:
    r = await client.get("/.well-known/x402")
    assert r.status == 200
    assert r.headers["Cache-Control"].startswith("public")
    assert r.headers["Access-Control-Allow-Origin"] == "*"
    document = await r.json()
    assert document["resources"][0].endswith("/v1/quote/*")
    again = await client.get("/.well-known/x402", headers={"If-None-Match": r.headers["ETag"]})
    assert again.status == 304 and await again.read() == b""
    assert (await client.post("/.well-known/x402")).status != 200
