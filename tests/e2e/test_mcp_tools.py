"""Paid MCP tools end to end: an unchanged MCP server (the `mcp` package, streamable HTTP),
a real gateway process in front of it, anvil, the SDK facilitator over HTTP, and the SDK's
MCP client (`x402.mcp.x402MCPSession` over the `mcp` package's client session). Priced tool
calls are paid on chain; `tools/list` and free tools stay free; a failing tool is not charged;
results streamed as events and plain JSON results both work."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager

import httpx
import pytest
from eth_account.signers.local import LocalAccount
from mcp import ClientSession
from mcp.client.streamable_http import streamablehttp_client
from x402.mcp import x402MCPSession

from gateway.demo.payer import make_x402_client
from tests.e2e.conftest import Chain
from tests.e2e.fault_parts import gateway_config
from tests.e2e.gateway_proc import GatewayProcess, gateway
from tests.e2e.owner_parts import McpOrigin

pytestmark = pytest.mark.e2e
SEARCH, FETCH = 10_000, 2_000  # "$0.01", "$0.002"


@pytest.fixture(scope="module", params=["events", "json"])
def mcp_gw(
    request: pytest.FixtureRequest,
    chain: Chain,
    pay_to: str,
    facilitator_url: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[GatewayProcess, McpOrigin]]:
    origin = McpOrigin(json_response=request.param == "json").start()
    try:
        cfg = gateway_config(chain, origin.url, pay_to, {"url": facilitator_url}, "memory")
        cfg["routes"] = [
            {
                "path": "/mcp",
                "mcp": {
                    "tools": {"search": "$0.01", "fetch": "$0.002", "broken": "$0.01"},
                    "default": "free",
                },
            }
        ]
        with gateway(cfg, tmp_path_factory.mktemp("mcp")) as gw:
            yield gw, origin
    finally:
        origin.stop()


@asynccontextmanager
async def paying_session(
    gw: GatewayProcess, chain: Chain, payer: LocalAccount
) -> AsyncIterator[x402MCPSession]:
    client = make_x402_client(payer, [(chain.network, chain.token)])
    async with (
        streamablehttp_client(gw.url + "/mcp") as (read, write, _),
        ClientSession(read, write) as session,
    ):
        paying = x402MCPSession(session, client)
        await paying.initialize()
        yield paying


async def test_the_sdk_mcp_client_pays_for_a_priced_tool_and_lists_tools_free(
    mcp_gw: tuple[GatewayProcess, McpOrigin],
    chain: Chain,
    pay_to: str,
    make_payer: Callable[..., LocalAccount],
) -> None:
    gw, origin = mcp_gw
    payer = make_payer()
    paid_to, txs = chain.balance_of(pay_to), chain.tx_count(chain.facilitator_address)
    async with paying_session(gw, chain, payer) as mcp:
        tools = await mcp.list_tools()
        assert {t.name for t in tools.tools} >= {"search", "fetch", "echo"}
        free = await mcp.call_tool("echo", {"text": "hi"})
        searched = await mcp.call_tool("search", {"query": "weather"})
        fetched = await mcp.call_tool("fetch", {"url": "https://example.com"})

    assert not free.payment_made and free.content[0].text == "hi"
    assert searched.payment_made and not searched.is_error
    assert searched.content[0].text == "results for weather"
    assert searched.payment_response is not None and searched.payment_response.success
    assert fetched.payment_made and fetched.content[0].text == "contents of https://example.com"
    # On chain: exactly the two priced calls, at their prices.
    assert chain.balance_of(pay_to) == paid_to + SEARCH + FETCH
    assert chain.balance_of(payer.address) == 10_000_000 - SEARCH - FETCH
    assert chain.tx_count(chain.facilitator_address) == txs + 2
    # The unpaid probes never reached the server: one run per paid call.
    assert origin.called("search") == 1 and origin.called("fetch") == 1


async def test_a_failing_priced_tool_is_not_charged(
    mcp_gw: tuple[GatewayProcess, McpOrigin],
    chain: Chain,
    make_payer: Callable[..., LocalAccount],
) -> None:
    gw, _ = mcp_gw
    payer = make_payer()
    txs = chain.tx_count(chain.facilitator_address)
    async with paying_session(gw, chain, payer) as mcp:
        failed = await mcp.call_tool("broken", {"reason": "nope"})
    assert failed.is_error and failed.payment_made
    assert failed.payment_response is None
    assert chain.balance_of(payer.address) == 10_000_000
    assert chain.tx_count(chain.facilitator_address) == txs


async def test_batches_pass_to_the_server_unless_they_hold_a_priced_call(
    mcp_gw: tuple[GatewayProcess, McpOrigin],
) -> None:
    gw, origin = mcp_gw
    searches = origin.called("search")
    call = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "search"}}
    async with httpx.AsyncClient(timeout=10) as http:
        refused = await http.post(
            gw.url + "/mcp",
            json=[call, {**call, "id": 2}],
            headers={"Accept": "application/json, text/event-stream"},
        )
    assert refused.status_code == 400 and refused.json()["reason"] == "mcp_batch"
    assert origin.called("search") == searches
    # A batch of free methods goes to the server as sent; its own answer comes back (this
    # server, like MCP since 2025-06-18, takes no batches: a JSON-RPC error of its own).
    free_batch = [
        {"jsonrpc": "2.0", "id": 3, "method": "ping"},
        {**call, "id": 4, "method": "tools/list"},
    ]
    async with httpx.AsyncClient(timeout=10) as http:
        passed = await http.post(
            gw.url + "/mcp",
            json=free_batch,
            headers={"Accept": "application/json, text/event-stream"},
        )
    assert "reason" not in passed.json() and passed.json()["jsonrpc"] == "2.0"
