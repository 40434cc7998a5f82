"""`networks:` of the config file: per CAIP-2 network, what the gateway reads the chain with
(`rpc_url`), for reconciling a settlement a crash left unfinished."""

from __future__ import annotations

from types import MappingProxyType

import yaml

from gateway import formats
from gateway.config import values as cv
from gateway.config.reader import Reader, using
from gateway.config.settings import NetworkSettings

NETWORK_KEYS = frozenset({"rpc_url"})


def compile_networks(
    reader: Reader, node: yaml.Node | None
) -> MappingProxyType[str, NetworkSettings]:
    found: dict[str, NetworkSettings] = {}
    for name, value in ((reader.mapping(node, "networks", None) or {}) if node else {}).items():
        path = f"networks.{name}"
        try:
            network = formats.parse_network(name)
        except ValueError as exc:
            reader.error(value, path, str(exc))
            continue
        entry = reader.section(value, path, NETWORK_KEYS)
        if entry is None:
            continue
        entry.require(("rpc_url",))
        # An RPC URL often embeds an API key: it is never echoed.
        rpc_url = using(lambda t: cv.parse_url(t, allow_path=True, what="RPC URL", echo=False))
        rpc = entry.read("rpc_url", rpc_url, None, on_null="error")
        if rpc is not None:
            found[network] = NetworkSettings(rpc_url=rpc)
    return MappingProxyType(found)
