"""The MCP binding's pure parts: which JSON-RPC messages are priced, the payment-required
tool result the SDK's MCP client reads, and the config."""

from __future__ import annotations

import pytest
from x402.mcp.types import MCPToolResult
from x402.mcp.utils import extract_payment_required_from_result

from gateway.config import loads
from gateway.errors import ConfigError
from gateway.mcp_tools import payment_required_result, price_of, tool_route
from tests.unit.wire_helpers import ASSET, PAY_TO

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
