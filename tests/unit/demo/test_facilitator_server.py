"""The facilitator HTTP layer: request parsing and status codes (no chain: a dead RPC)."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from x402.schemas import PaymentPayload
from x402.schemas.v1 import PaymentPayloadV1, PaymentRequirementsV1

from gateway.demo.chain import ANVIL_KEYS, free_port, new_account
from gateway.demo.facilitator_server import make_app
from gateway.demo.payer import make_x402_client, sign_requirements
from gateway.facilitators.engine.service import BadRequest, parse_request
from gateway.facilitators.local import LocalFacilitator
from tests.unit.facilitators.test_local import NETWORK, TOKEN, requirements

Client = Callable[..., Awaitable[TestClient[Any, Any]]]


async def request_body() -> dict[str, Any]:
    req = requirements()
    payment = await sign_requirements(make_x402_client(new_account(), [(NETWORK, TOKEN)]), req)
    return {
        "x402Version": 2,
        "paymentPayload": payment.model_dump(mode="json", by_alias=True, exclude_none=True),
        "paymentRequirements": req.model_dump(mode="json", by_alias=True, exclude_none=True),
    }


async def test_parses_v2_and_v1_into_the_sdk_models() -> None:
    body = await request_body()
    payload, req = parse_request(json.dumps(body).encode())
    assert isinstance(payload, PaymentPayload) and req.amount == "1000"

    v1 = {
        "x402Version": 1,
        "paymentPayload": {
            "x402Version": 1,
            "scheme": "exact",
            "network": "base-sepolia",
            "payload": body["paymentPayload"]["payload"],
        },
        "paymentRequirements": {
            "scheme": "exact",
            "network": "base-sepolia",
            "maxAmountRequired": "1000",
            "resource": "http://x/",
            "payTo": body["paymentRequirements"]["payTo"],
            "maxTimeoutSeconds": 60,
            "asset": TOKEN,
        },
    }
    payload1, req1 = parse_request(json.dumps(v1).encode())
    assert isinstance(payload1, PaymentPayloadV1) and isinstance(req1, PaymentRequirementsV1)


@pytest.mark.parametrize(
    "mutate",
    [
        lambda b: "not an object",
        lambda b: {**b, "x402Version": 3},
        lambda b: {**b, "x402Version": True},
        lambda b: {**b, "x402Version": 1},  # the payload says 2
        lambda b: {**b, "paymentPayload": []},
        lambda b: {k: v for k, v in b.items() if k != "paymentRequirements"},
        lambda b: {**b, "paymentRequirements": {**b["paymentRequirements"], "amount": None}},
    ],
)
async def test_refuses_what_is_not_a_request(mutate: Callable[[Any], Any]) -> None:
    with pytest.raises(BadRequest):
        parse_request(json.dumps(mutate(await request_body())).encode())
    with pytest.raises(BadRequest):
        parse_request(b"[" * 100_000)


async def test_status_codes(aiohttp_client: Client) -> None:
    facilitator = LocalFacilitator(f"http://127.0.0.1:{free_port()}", ANVIL_KEYS[1], [NETWORK])
    await facilitator.start()
    client = await aiohttp_client(make_app(facilitator))

    resp = await client.get("/supported")
    assert resp.status == 200
    kinds = (await resp.json())["kinds"]
    assert {"x402Version": 2, "scheme": "exact", "network": NETWORK} in kinds

    resp = await client.post("/verify", data=b"{")
    assert resp.status == 400 and "error" in await resp.json()
    resp = await client.post("/settle", data=b"x" * 70_000)
    assert resp.status in (400, 413)

    body = await request_body()
    for path in ("/verify", "/settle"):
        resp = await client.post(path, json=body)
        assert resp.status == 503, path  # the chain is not there: fail closed
