"""Network names on the x402 wire: CAIP-2 (`eip155:84532`, v2) and legacy v1 names
(`base-sepolia`), both taken from the SDK's own table so the two can never drift apart.
A CAIP-2 id is read by `gateway.formats.chain_id`, the one rule config and requests share."""

from __future__ import annotations

from types import MappingProxyType

from x402.mechanisms.evm.v1.constants import V1_NETWORK_CHAIN_IDS

from gateway.formats import chain_id

# chain id -> v1 name; the SDK's table is one-to-one, the first name wins should it ever not be
_V1_NAMES: MappingProxyType[int, str] = MappingProxyType(
    {cid: name for name, cid in reversed(list(V1_NETWORK_CHAIN_IDS.items()))}
)
# The SDK's v1 names say which chains are test networks; the paywall shows faucets for those.
_TESTNET_MARKERS = ("sepolia", "testnet", "fuji", "amoy")


def v1_name(network: str) -> str | None:
    """The legacy v1 name of a CAIP-2 network (`eip155:84532` -> `base-sepolia`), or None when
    v1 clients have no name for it (then the route is simply not offered to them)."""
    cid = chain_id(network)
    return None if cid is None else _V1_NAMES.get(cid)


def caip_from_v1(name: str) -> str | None:
    """The CAIP-2 network of a v1 name (`base-sepolia` -> `eip155:84532`), or None."""
    cid = V1_NETWORK_CHAIN_IDS.get(name)
    return None if cid is None else f"eip155:{cid}"


def is_testnet(network: str) -> bool:
    """True unless the SDK knows the chain as a main network; unknown chains (a local anvil)
    count as test networks."""
    name = v1_name(network)
    return name is None or any(marker in name for marker in _TESTNET_MARKERS)
