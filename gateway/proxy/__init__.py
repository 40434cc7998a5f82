"""The reverse proxy: canonical paths, the route table, header hygiene, the request body and
the streaming upstream relay. It knows x402 only by header names: no payment logic here.

Public face: `canonicalize`, `RouteTable`, `Upstream`, `relay`.
"""

from gateway.proxy.paths import canonicalize
from gateway.proxy.routes import RouteTable
from gateway.proxy.upstream import Upstream, relay

__all__ = ["RouteTable", "Upstream", "canonicalize", "relay"]
