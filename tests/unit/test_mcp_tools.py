"""The MCP binding's pure parts: which JSON-RPC messages are priced, the payment-required
tool result the SDK's MCP client reads, and the config."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from x402.mcp.types import MCPToolResult
from x402.mcp.utils import extract_payment_required_from_result
from x402.schemas import SettleResponse

from gateway.app import create_app
from gateway.composition import Parts
from gateway.config import loads
from gateway.errors import ConfigError, SettlementPending
from gateway.mcp_tools import payment_required_result, price_of, tool_route
from tests.unit.payment.test_engine import TX, FakeFacilitator
from tests.unit.wire_helpers import ASSET, PAY_TO, new_account, sdk_v2_payment

CONFIG = f"""
upstream: http://127.0.0.1:9
facilitator: {{url: "http://127.0.0.1:9/"}}
pay_to: "{PAY_TO}"
asset: {{address: "{ASSET}", name: USDC, version: "2", decimals: 6}}
routes:
  - path: /mcp
    mcp: {{tools: {{search: "$0.01", ping: free}}, default: "$0.001"}}
  - path: /mcp-free-default
    mcp: {{tools: {{search: "$0.01"}}}}
"""


def call(name: object, method: str = "tools/call") -> dict[str, object]:
    return {"jsonrpc": "2.0", "id": 7, "method": method, "params": {"name": name}}


def test_only_priced_tool_calls_are_priced() -> None:
    route, free_default = loads(CONFIG).routes
    assert route.free and route.mcp is not None
    found = price_of(route, call("search"))
    assert found is not None and found[0] == "search" and found[1].amount == 10_000
    assert price_of(route, call("ping")) is None  # named free
    other = price_of(route, call("anything"))
    assert other is not None and other[1].amount == 1_000  # the default
    assert price_of(free_default, call("anything")) is None
    assert price_of(route, call("search", method="tools/list")) is None
    assert price_of(route, call(42)) is None
    assert price_of(route, "not a message") is None


def test_the_payment_required_result_is_what_the_sdk_client_reads() -> None:
    route = loads(CONFIG).routes[0]
    name, req = "search", route.mcp.tools["search"]  # type: ignore[union-attr]
    assert req is not None
    result = payment_required_result(tool_route(route, name, req), name, "Payment required")
    sdk_view = MCPToolResult(
        content=result["content"],
        is_error=result["isError"],
        structured_content=result["structuredContent"],
    )
    required = extract_payment_required_from_result(sdk_view)
    assert required is not None
    assert required.accepts[0].amount == "10000"
    assert required.resource is not None and required.resource.url == "mcp://tool/search"


def test_mcp_with_a_price_is_a_config_error() -> None:
    text = (
        CONFIG.split("routes:", maxsplit=1)[0]
        + 'routes:\n  - {path: /mcp, price: "$1", mcp: {tools: {}}}\n'
    )
    with pytest.raises(ConfigError) as caught:
        loads(text)
    assert "priced per tool" in "\n".join(caught.value.errors)


# --- the binding in the request flow, with a scripted facilitator and a fake MCP origin -----


def config_for(origin: str) -> str:
    return CONFIG.replace("upstream: http://127.0.0.1:9\n", f"upstream: {origin}\n", 1)


async def flow(
    fac: FakeFacilitator, answer: bytes, content_type: str
) -> AsyncIterator[tuple[TestClient[Any, Any], list[dict[str, Any]]]]:
    seen: list[dict[str, Any]] = []

    async def mcp_origin(request: web.Request) -> web.Response:
        seen.append(await request.json())
        return web.Response(body=answer, content_type=content_type)

    app = web.Application()
    app.router.add_post("/mcp", mcp_origin)
    origin = TestServer(app, host="127.0.0.1")
    await origin.start_server()
    settings = loads(config_for(str(origin.make_url("")).rstrip("/")))
    parts = Parts(facilitator=lambda _s, _m: fac)
    client: TestClient[Any, Any] = TestClient(TestServer(create_app(settings, parts=parts)))
    await client.start_server()
    try:
        yield client, seen
    finally:
        await client.close()
        await origin.close()


def paid_call() -> dict[str, Any]:
    route = loads(CONFIG).routes[0]
    req = route.mcp.tools["search"]  # type: ignore[union-attr]
    assert req is not None
    payload, _ = sdk_v2_payment(tool_route(route, "search", req), new_account())
    meta = {"x402/payment": payload.model_dump(by_alias=True, exclude_none=True), "keep": 1}
    params = {"name": "search", "arguments": {"q": "x"}, "_meta": meta}
    return {"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": params}


RESULT = {"jsonrpc": "2.0", "id": 7, "result": {"content": [{"type": "text", "text": "ok"}]}}
PROGRESS = {"jsonrpc": "2.0", "method": "notifications/progress", "params": {"progress": 1}}
EVENTS = (
    f"event: message\r\ndata: {json.dumps(PROGRESS)}\r\n\r\n"
    f"event: message\r\ndata: {json.dumps(RESULT)}\r\n\r\n"
).encode()


def data_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line[5:]) for line in text.splitlines() if line.startswith("data:")]


async def test_streamed_answer_is_settled_and_notifications_pass_first() -> None:
    async for client, seen in flow(FakeFacilitator(), EVENTS, "text/event-stream"):
        r = await client.post("/mcp", json=paid_call())
        progress, answer = data_lines(await r.text())
        assert progress == PROGRESS
        assert answer["result"]["_meta"]["x402/payment-response"]["transaction"] == TX
        # The server got the call without the payment, its other _meta kept.
        assert seen[0]["params"]["_meta"] == {"keep": 1}


async def test_refused_settlement_in_a_stream_asks_for_payment_and_serves_nothing() -> None:
    failed = SettleResponse(
        success=False, error_reason="insufficient_funds", transaction="", network="eip155:84532"
    )
    async for client, _ in flow(FakeFacilitator(settle=[failed]), EVENTS, "text/event-stream"):
        r = await client.post("/mcp", json=paid_call())
        _, answer = data_lines(await r.text())
        assert answer["result"]["isError"] is True
        assert answer["result"]["structuredContent"]["error"] == "insufficient_funds"
        assert "ok" not in json.dumps(answer)


async def test_pending_settlement_in_json_is_an_error_that_does_not_ask_to_pay() -> None:
    fac = FakeFacilitator(settle=[SettlementPending("no receipt yet")])
    async for client, _ in flow(fac, json.dumps(RESULT).encode(), "application/json"):
        r = await client.post("/mcp", json=paid_call())
        answer = await r.json()
        assert answer["error"]["data"]["reason"] == "settlement_pending"
        assert "result" not in answer


async def test_unpaid_priced_call_is_answered_without_the_server() -> None:
    async for client, seen in flow(FakeFacilitator(), b"{}", "application/json"):
        call = paid_call()
        del call["params"]["_meta"]
        r = await client.post("/mcp", json=call)
        answer = await r.json()
        assert answer["id"] == 7 and answer["result"]["isError"] is True
        assert answer["result"]["structuredContent"]["accepts"][0]["amount"] == "10000"
        assert seen == []
