"""An unchanged MCP server (the `mcp` package's FastMCP, streamable HTTP at /mcp) that knows
nothing about payments: `python _mcp_origin.py PORT [json]`. Each tool call is printed as one
JSON line on stdout, so a test can count what reached it. `json`: answer with JSON bodies
instead of event streams."""

from __future__ import annotations

import json
import sys

from mcp.server.fastmcp import Context, FastMCP

port = int(sys.argv[1])
server = FastMCP("owner-tools", port=port, json_response=len(sys.argv) > 2)


def called(tool: str) -> None:
    print(json.dumps({"tool": tool}), flush=True)


@server.tool()
async def search(query: str, ctx: Context) -> str:  # type: ignore[type-arg]
    """Search (priced by the gateway). Reports progress first: a streamed result."""
    called("search")
    await ctx.report_progress(0.5, 1.0, "halfway")
    return f"results for {query}"


@server.tool()
def fetch(url: str) -> str:
    """Fetch (priced by the gateway)."""
    called("fetch")
    return f"contents of {url}"


@server.tool()
def broken(reason: str) -> str:
    """Always fails (priced by the gateway, never charged)."""
    called("broken")
    raise ValueError(reason)


@server.tool()
def echo(text: str) -> str:
    """Free."""
    called("echo")
    return text


server.run(transport="streamable-http")
