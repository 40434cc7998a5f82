"""Prices: `"$0.001"` to atomic token units (exact decimal arithmetic), and back for people.

Which token a dollar price is paid in comes from the config's `asset`, or else from the SDK's
table of default stablecoins per network, with the EIP-712 domain (`extra`) that payers sign
against, as the SDK's own `exact` server scheme builds it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal, localcontext
from types import MappingProxyType
from typing import Any

from x402.mechanisms.evm import DEFAULT_ASSETS, find_default_asset
from x402.mechanisms.evm.default_assets import ExactDefaultAssetInfo

from gateway.config.settings import AssetSpec, Requirement
from gateway.formats import PRECISION, parse_usd, quote

_ATOMIC = re.compile(r"[0-9]+")
DEFAULT_NETWORK = "eip155:84532"
DEFAULT_MAX_TIMEOUT_SECONDS = 300


@dataclass(frozen=True, slots=True)
class Asset:
    """A token a price can be paid in, with the `extra` its requirements carry."""

    spec: AssetSpec
    extra: Mapping[str, Any]


def _from_sdk(info: ExactDefaultAssetInfo) -> Asset:
    # Mirrors x402's ExactEvmScheme: the EIP-712 domain unless the token is Permit2-only.
    method = info.get("asset_transfer_method")
    extra: dict[str, Any] = {}
    if not method or info.get("supports_eip2612", False):
        extra["name"] = info["name"]
        extra["version"] = info["version"]
    if method:
        extra["assetTransferMethod"] = method
    spec = AssetSpec(info["asset"], info["name"], info["version"], info["decimals"], info["symbol"])
    return Asset(spec, MappingProxyType(extra))


def _from_config(spec: AssetSpec) -> Asset:
    if spec.transfer == "permit2":
        # As the SDK's ExactEvmScheme states a Permit2-only token: the method alone (payers
        # sign Permit2's domain, not the token's).
        return Asset(spec, MappingProxyType({"assetTransferMethod": "permit2"}))
    return Asset(spec, MappingProxyType({"name": spec.name, "version": spec.version}))


def named_asset(spec: AssetSpec) -> Asset:
    """A token from the config's `assets:` (a route's `asset: <name>`)."""
    return _from_config(spec)


def default_asset(network: str, configured: AssetSpec | None, home: str) -> Asset | None:
    """The token `"$"` prices use on `network`: the configured `asset` (which lives on the
    top-level network, `home`), else the SDK's default stablecoin there, else None."""
    if configured is not None and network == home:
        return _from_config(configured)
    assets = DEFAULT_ASSETS.get(network)
    return _from_sdk(assets[0]) if assets else None


def known_asset(
    network: str, address: str, configured: AssetSpec | None, home: str
) -> Asset | None:
    """What is known about token `address` on `network` (decimals, EIP-712 domain), if any."""
    if configured is not None and network == home and configured.address == address:
        return _from_config(configured)
    found = find_default_asset(address, network)
    return _from_sdk(found) if found is not None else None


def to_atomic(dollars: Decimal, asset: AssetSpec, text: str) -> int:
    """Exact: a price finer than the token's smallest unit is an error, never rounded."""
    with localcontext() as ctx:
        ctx.prec = PRECISION
        atomic = dollars.scaleb(asset.decimals)
        if atomic != atomic.to_integral_value():
            smallest = format(Decimal(1).scaleb(-asset.decimals), "f")
            raise ValueError(
                f"{quote(text)} is finer than {asset.symbol} allows "
                f"({asset.decimals} decimals; the smallest price is ${smallest})"
            )
        return int(atomic)


def parse_amount(text: str, asset: Asset | None, address: str) -> int:
    """An `accepts[].amount`: atomic units, or a `"$"` price in a token whose decimals we know."""
    stripped = text.strip()
    if _ATOMIC.fullmatch(stripped):
        if int(stripped) == 0:
            raise ValueError("is 0; write price: free for a route without charge")
        return int(stripped)
    if not stripped.startswith("$"):
        raise ValueError(
            f'{quote(text)} is not an amount; write atomic units ("1000") or dollars ("$0.001")'
        )
    dollars = parse_usd(stripped)
    if asset is None:
        raise ValueError(
            f"cannot convert {quote(text)}: the decimals of token {address} are unknown; "
            "give the amount in atomic units"
        )
    return to_atomic(dollars, asset.spec, text)


@dataclass(frozen=True, slots=True)
class Offer:
    """How a route asks to be paid, apart from the token and the amount."""

    scheme: str
    network: str
    pay_to: str
    max_timeout_seconds: int = DEFAULT_MAX_TIMEOUT_SECONDS

    def requirement(self, asset: Asset, amount: int) -> Requirement:
        """`amount` atomic units of `asset`, on these terms."""
        return Requirement(
            scheme=self.scheme,
            network=self.network,
            asset=asset.spec.address,
            amount=amount,
            pay_to=self.pay_to,
            max_timeout_seconds=self.max_timeout_seconds,
            extra=MappingProxyType(dict(asset.extra)),
            decimals=asset.spec.decimals,
            symbol=asset.spec.symbol,
        )
