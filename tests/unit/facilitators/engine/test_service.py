"""The HTTP facilitator app: wire format, bounded bodies, JSON depth, bearer auth."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from x402.schemas import SettleResponse, SupportedKind, SupportedResponse, VerifyResponse

from gateway.errors import FacilitatorUnavailable
from gateway.facilitators.engine.service import (
    MAX_REQUEST,
    BadRequest,
    make_app,
    parse_request,
    run,
)
from tests.unit.facilitators.engine.helpers import (
    account,
    requirements,
    requirements_v1,
    sdk_signed,
    sdk_signed_v1,
)

TOKEN = "s3cret-token"


class FakeEngine:
    def __init__(self) -> None:
        self.seen: list[Any] = []
        self.down = False
        self.started = self.closed = False

    async def verify(self, payload: Any, requirements: Any) -> VerifyResponse:
        if self.down:
            raise FacilitatorUnavailable("node down")
        self.seen.append((payload, requirements))
        return VerifyResponse(is_valid=False, invalid_reason="nope", payer="0xP")

    async def settle(self, payload: Any, requirements: Any) -> SettleResponse:
        if self.down:
            raise FacilitatorUnavailable("node down")
        self.seen.append((payload, requirements))
        return SettleResponse(success=True, transaction="0x01", network=requirements.network)

    def get_supported(self) -> SupportedResponse:
        return SupportedResponse(
            kinds=[SupportedKind(x402_version=2, scheme="exact", network="eip155:84532")]
        )

    async def ping(self) -> None:
        if self.down:
            raise FacilitatorUnavailable("node down")

    async def start(self) -> None:
        self.started = True

    async def close(self) -> None:
        self.closed = True


def body(payload: Any, req: Any) -> dict[str, Any]:
    return {
        "x402Version": payload.x402_version,
        "paymentPayload": payload.model_dump(mode="json", by_alias=True, exclude_none=True),
        "paymentRequirements": req.model_dump(mode="json", by_alias=True, exclude_none=True),
    }


@pytest.fixture
async def served() -> AsyncIterator[tuple[str, FakeEngine]]:
    engine = FakeEngine()
    async with TestServer(make_app(engine, token=TOKEN), host="127.0.0.1") as server:  # type: ignore[arg-type]
        yield str(server.make_url("")).rstrip("/"), engine


AUTH = {"Authorization": f"Bearer {TOKEN}"}


async def test_verify_settle_supported_v2_and_v1(served: tuple[str, FakeEngine]) -> None:
    url, engine = served
    payer = account()
    async with aiohttp.ClientSession(headers=AUTH) as http:
        async with http.post(f"{url}/verify", json=body(sdk_signed(payer), requirements())) as r:
            assert r.status == 200
            assert await r.json() == {"isValid": False, "invalidReason": "nope", "payer": "0xP"}
        v1 = body(sdk_signed_v1(payer), requirements_v1())
        async with http.post(f"{url}/settle", json=v1) as r:
            assert r.status == 200
            assert await r.json() == {
                "success": True,
                "transaction": "0x01",
                "network": "base-sepolia",
            }
        async with http.get(f"{url}/supported") as r:
            assert (await r.json())["kinds"][0]["network"] == "eip155:84532"
        async with http.get(f"{url}/readyz") as r:
            assert r.status == 200
    assert [type(p).__name__ for p, _ in engine.seen] == ["PaymentPayload", "PaymentPayloadV1"]


async def test_the_bearer_token_is_required(served: tuple[str, FakeEngine]) -> None:
    url, engine = served
    payload = body(sdk_signed(account()), requirements())
    async with aiohttp.ClientSession() as http:
        for headers in (
            {},
            {"Authorization": "Bearer wrong"},
            {"Authorization": TOKEN},
            {"Authorization": f"Basic {TOKEN}"},
        ):
            for method, path in (("POST", "/verify"), ("POST", "/settle"), ("GET", "/supported")):
                async with http.request(method, f"{url}{path}", json=payload, headers=headers) as r:
                    assert r.status == 401
                    assert r.headers["WWW-Authenticate"] == "Bearer"
        async with http.get(f"{url}/readyz") as r:  # probes carry no secrets
            assert r.status == 200
    assert engine.seen == []


async def test_a_down_node_is_503(served: tuple[str, FakeEngine]) -> None:
    url, engine = served
    engine.down = True
    payload = body(sdk_signed(account()), requirements())
    async with aiohttp.ClientSession(headers=AUTH) as http:
        for path in ("/verify", "/settle"):
            async with http.post(f"{url}{path}", json=payload) as r:
                assert r.status == 503 and r.headers["Retry-After"] == "5"
        async with http.get(f"{url}/readyz") as r:
            assert r.status == 503


async def test_bad_requests_are_400(served: tuple[str, FakeEngine]) -> None:
    url, engine = served
    good = body(sdk_signed(account()), requirements())
    bads: list[bytes] = [
        b"not json",
        b"[]",
        b"\xff\xfe",
        json.dumps({**good, "x402Version": 3}).encode(),
        json.dumps({**good, "x402Version": True}).encode(),
        json.dumps({**good, "paymentPayload": "x"}).encode(),
        json.dumps({**good, "x402Version": 1}).encode(),  # the payload says 2
        json.dumps({**good, "paymentRequirements": {"scheme": "exact"}}).encode(),
        b"[" * 100_000,
        json.dumps({**good, "deep": json.loads("[" * 34 + "1" + "]" * 34)}).encode(),
    ]
    async with aiohttp.ClientSession(headers=AUTH) as http:
        for raw in bads:
            async with http.post(f"{url}/verify", data=raw) as r:
                assert r.status in (400, 413), raw[:40]
        async with http.post(f"{url}/settle", data=b" " * (MAX_REQUEST + 10)) as r:
            assert r.status in (400, 413)
    assert engine.seen == []


def test_parse_request_bounds_depth_before_decoding() -> None:
    with pytest.raises(BadRequest, match="nested"):
        parse_request(b"[" * 40 + b"]" * 40)
    with pytest.raises(BadRequest):
        parse_request(b'{"x402Version": 2, "paymentPayload": {}, "paymentRequirements": {}}')


async def test_run_serves_until_stopped_and_closes_the_engine() -> None:
    engine = FakeEngine()
    stop = asyncio.Event()
    urls: list[str] = []
    task = asyncio.create_task(
        run(
            engine,
            port=0,
            on_listening=urls.append,
            stop=stop,  # type: ignore[arg-type]
            handle_signals=False,
        )
    )
    for _ in range(500):
        if urls:
            break
        await asyncio.sleep(0.01)
    async with aiohttp.ClientSession() as http, http.get(f"{urls[0]}/supported") as r:
        assert r.status == 200
    stop.set()
    await asyncio.wait_for(task, 10)
    assert engine.started and engine.closed
