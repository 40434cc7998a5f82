"""`mcp:` on a route: an MCP streamable-HTTP endpoint whose `tools/call` requests are priced
by tool name (prices as for `price:`; `free` allowed), the rest of its JSON-RPC free.

    - path: /mcp
      mcp: {tools: {search: "$0.01", fetch: "$0.002"}, default: free}
"""

from __future__ import annotations

from collections.abc import Callable
from types import MappingProxyType

import yaml

from gateway.config.reader import Reader
from gateway.config.settings import McpPricing, Requirement

MCP_KEYS = frozenset({"tools", "default"})
MAX_TOOLS = 1024

# (price node, key path) -> (text as written, requirement or None when free / wrong)
PriceReader = Callable[[yaml.Node, str], tuple[str, Requirement | None]]


def compile_mcp(
    reader: Reader, node: yaml.Node | None, path: str, price: PriceReader
) -> McpPricing | None:
    if node is None:
        return None
    section = reader.section(node, path, MCP_KEYS)
    if section is None:
        return None
    section.require(("tools",), "required: tool name -> price")
    tools_node = section.get("tools")
    entries = reader.mapping(tools_node, section.where("tools"), None) if tools_node else None
    if entries is not None and len(entries) > MAX_TOOLS:
        section.error("tools", f"more than {MAX_TOOLS} tools")
    tools = {
        name: price(value, f"{section.where('tools')}.{name}")[1]
        for name, value in list((entries or {}).items())[:MAX_TOOLS]
    }
    default_node = section.get("default")
    default = price(default_node, section.where("default"))[1] if default_node else None
    return McpPricing(MappingProxyType(tools), default)
