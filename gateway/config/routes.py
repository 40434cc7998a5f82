"""The `routes:` table of the config file, compiled into `RouteSettings` with exact prices."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import yaml

from gateway import formats
from gateway.config import pricing
from gateway.config import values as cv
from gateway.config.channels import route_channel, with_channel
from gateway.config.discovery import compile_discovery
from gateway.config.dynamic import hook_price, price_rules
from gateway.config.mcp import compile_mcp
from gateway.config.metered import is_upto, metered_price, stream_usage
from gateway.config.pricing import DEFAULT_MAX_TIMEOUT_SECONDS, Asset, Offer
from gateway.config.rates import route_rates
from gateway.config.reader import (
    Reader,
    Scalar,
    Section,
    choice,
    duration,
    positive_int,
    text,
    using,
)
from gateway.config.settings import (
    AccessSettings,
    AssetSpec,
    ChannelsSettings,
    Metered,
    Requirement,
    RouteSettings,
    SettleMode,
    Source,
)

ROUTE_KEYS = frozenset(
    {"path", "methods", "price", "accepts", "description", "mime_type", "upstream", "settle"}
    | {"limits"}
    | {"discovery"}
    | {"price_by"}
    | {"mcp"}
    | {"access"}
    | {"asset", "stream_usage"}
    | {"channel"}
)
ACCESS_KEYS = frozenset({"for"})
ACCEPT_KEYS = frozenset(
    {"scheme", "network", "asset", "amount", "pay_to", "max_timeout_seconds", "extra"}
)
# What the payment step implements today; `upto` and `batch-settlement` join when built.
SCHEMES = ("exact",)  # in `accepts:`; `upto` comes from `price: {upto: ...}`
SETTLE_MODES: tuple[SettleMode, ...] = ("after", "before")
_MIME = re.compile(r"[\w.+\-]+/[\w.+\-]+(\s*;.*)?")

# A price as written (for `check` and logs) and its requirement; None when free or wrong.
Priced = tuple[str, Requirement | None]


@dataclass(frozen=True, slots=True)
class RouteDefaults:
    """The top-level values a route falls back to."""

    network: str
    pay_to: str | None
    asset: AssetSpec | None
    # Top-level keys already reported as wrong: their fallout is not reported again.
    broken: frozenset[str] = frozenset()
    assets: Mapping[str, AssetSpec] = field(default_factory=lambda: MappingProxyType({}))
    channels: ChannelsSettings = field(default_factory=ChannelsSettings)  # `channel:` terms


def compile_routes(
    reader: Reader, node: yaml.Node, defaults: RouteDefaults
) -> tuple[RouteSettings, ...]:
    """Every route in file order; problems go to the reader's errors."""
    items = reader.sequence(node, "routes")
    if items is None:
        return ()
    if not items:
        reader.error(node, "routes", "must list at least one route")
        return ()
    routes: list[RouteSettings] = []
    first: dict[tuple[str, frozenset[str] | None], RouteSettings] = {}
    for index, item in enumerate(items):
        route = _route(reader, item, index, defaults)
        if route is None:
            continue
        earlier = first.setdefault((route.path, route.methods), route)
        if earlier is not route:
            line = earlier.source.line if earlier.source else "?"
            reader.error(
                item,
                f"routes[{index}].path",
                f"same path and methods as routes[{earlier.index}] (line {line}); "
                "that one always wins",
            )
            continue
        routes.append(route)
    return tuple(routes)


# --- one route --------------------------------------------------------------------------


def _route(
    reader: Reader, node: yaml.Node, index: int, defaults: RouteDefaults
) -> RouteSettings | None:
    entry = reader.section(node, f"routes[{index}]", ROUTE_KEYS)
    if entry is None:
        return None
    entry.require(("path",))
    path = entry.read("path", using(cv.parse_path_pattern), None, on_null="error")
    methods = _methods(reader, entry.get("methods"), entry.where("methods"))
    price_text, accepts, metered = _pricing(reader, entry, _with_named_asset(entry, defaults))
    metered = stream_usage(reader, entry, metered)
    after: SettleMode = "after"
    settle = entry.read("settle", _settle, after)
    if metered is not None and settle == "before":
        entry.error("settle", "a metered (upto) price is settled after the origin stated usage")
    channel = route_channel(reader, entry, accepts, price_text)
    route = RouteSettings(
        index=index,
        path=path or "",
        methods=methods,
        accepts=with_channel(accepts, channel, defaults.channels),
        description=entry.read("description", text, ""),
        mime_type=entry.read("mime_type", using(_mime), "application/json"),
        upstream=entry.read("upstream", using(cv.parse_origin), None),
        settle=settle,
        price_text=price_text or "free",
        source=Source(reader.filename, node.start_mark.line + 1),
        metered=metered,
        channel=channel,
        access=_access(reader, entry, bool(accepts)),
        rate_limits=route_rates(
            reader, entry.get("limits"), entry.where("limits"), free=price_text == "free"
        ),
        discovery=compile_discovery(reader, entry.get("discovery"), entry.where("discovery")),
        **_dynamic(reader, entry, defaults, accepts),
        mcp=compile_mcp(
            reader,
            entry.get("mcp"),
            entry.where("mcp"),
            lambda node, where: _price(reader, node, where, defaults),
        ),
    )
    return route if path is not None else None


def _access(reader: Reader, entry: Section, priced: bool) -> AccessSettings | None:
    """`access: {for: 24h}`: sign in with the wallet that paid, for that long (SIWX)."""
    node = entry.get("access")
    if node is None:
        return None
    section = reader.section(node, entry.where("access"), ACCESS_KEYS)
    if section is None:
        return None
    section.require(("for",), "required: how long one payment gives access, e.g. 24h")
    seconds = section.read("for", duration, None, on_null="error")
    if seconds is None:
        return None
    if not priced:
        entry.error("access", "only a priced route can grant access after a payment")
        return None
    return AccessSettings(seconds)


def _pricing(
    reader: Reader, entry: Section, defaults: RouteDefaults
) -> tuple[str, tuple[Requirement, ...], Metered | None]:
    """`price:` or `accepts:` (exactly one of them) as (text as written, requirements, the
    metered terms of an `upto` price)."""
    price, accepts = entry.get("price"), entry.get("accepts")
    if price is not None and accepts is not None:
        entry.error("accepts", "give price or accepts, not both")
        return "", (), None
    if "mcp" in entry and (price is not None or accepts is not None):
        entry.error("mcp", "an MCP endpoint is priced per tool; leave price and accepts out")
        return "", (), None
    if isinstance(price, yaml.MappingNode):
        return _mapping_price(reader, price, entry.where("price"), defaults)
    if price is not None:
        price_text, req = _price(reader, price, entry.where("price"), defaults)
        return price_text, (req,) if req is not None else (), None
    if accepts is not None:
        return (*_accepts(reader, accepts, entry.where("accepts"), defaults), None)
    if "mcp" not in entry:  # an MCP endpoint is priced per tool instead
        entry.error("price", 'required: a price ("$0.001"), free, or accepts: [...]')
    return "", (), None


def _mapping_price(
    reader: Reader, price: yaml.Node, where: str, defaults: RouteDefaults
) -> tuple[str, tuple[Requirement, ...], Metered | None]:
    """`price: {upto, default}` (metered) or `price: {hook, cache}` (a price hook)."""
    if is_upto(price):
        text, req, metered = metered_price(reader, price, where, defaults)
        return text, (req,) if req is not None else (), metered
    offer = (defaults.network, defaults.pay_to, defaults.asset)
    price_text, hooked, _ = hook_price(reader, price, where, offer)
    return price_text, (hooked,) if hooked is not None else (), None


def _with_named_asset(entry: Section, defaults: RouteDefaults) -> RouteDefaults:
    """A route's `asset: <name>` (from `assets:`) replaces the top-level `asset` for its
    "$" prices and its accepts entries without an asset address."""
    if "asset" not in entry:
        return defaults
    names = defaults.assets

    def named(value: str) -> str:
        if value.strip() not in names:
            known = ", ".join(sorted(names)) or "none are defined under assets:"
            raise ValueError(f"{formats.quote(value)} is not a named asset ({known})")
        return value.strip()

    name = entry.read("asset", using(named), "", on_null="error")
    if not name:
        return dataclasses.replace(defaults, broken=defaults.broken | {"asset"})
    return dataclasses.replace(defaults, asset=names[name])


def _dynamic(
    reader: Reader, entry: Section, defaults: RouteDefaults, accepts: tuple[Requirement, ...]
) -> dict[str, Any]:
    """`price_hook` and `price_by` of a route (gateway/config/dynamic.py)."""
    price, rules = entry.get("price"), entry.get("price_by")
    if isinstance(price, yaml.MappingNode) and not is_upto(price):
        if rules is not None:
            entry.error("price_by", "give a price hook or price_by rules, not both")
        offer = (defaults.network, defaults.pay_to, defaults.asset)
        quiet = Reader(reader.filename, reader.env)  # its errors were reported by _pricing
        _, _, hook = hook_price(quiet, price, entry.where("price"), offer)
        return {"price_hook": hook}
    priced = accepts[0] if price is not None and len(accepts) == 1 else None
    return {"price_by": price_rules(reader, rules, entry.where("price_by"), priced)}


def _mime(value: str) -> str:
    if not _MIME.fullmatch(value.strip()):
        raise ValueError(f"{formats.quote(value)} is not a media type; write e.g. application/json")
    return value.strip()


def _settle(scalar: Scalar) -> SettleMode:
    word = choice(SETTLE_MODES)(scalar)
    return "before" if word == "before" else "after"


def _method(value: str) -> str:
    return formats.parse_token(value.strip(), "HTTP method").upper()


def _methods(reader: Reader, node: yaml.Node | None, path: str) -> frozenset[str] | None:
    if node is None:
        return None
    items = [node] if isinstance(node, yaml.ScalarNode) else reader.sequence(node, path)
    if items is None:
        return None
    if not items:
        reader.error(node, path, "is empty; leave methods out to allow every method")
        return None
    found = {
        reader.value(item, f"{path}[{index}]", using(_method), "")
        for index, item in enumerate(items)
    }
    return frozenset(found - {""}) or None


# --- price: "$0.001" --------------------------------------------------------------------


def _price(reader: Reader, node: yaml.Node, path: str, defaults: RouteDefaults) -> Priced:
    """`price:` as (text as written, its requirement; None for free or on error)."""
    scalar = reader.scalar(node, path)
    if scalar is None:
        return "", None
    if scalar.text.strip().lower() == "free":
        return "free", None
    if defaults.broken & {"network", "asset"}:
        return scalar.text, None
    try:
        asset, amount = _dollars_in_default_asset(scalar.text, defaults)
    except ValueError as exc:
        reader.error(node, path, str(exc))
        return scalar.text, None
    if defaults.pay_to is None:
        if "pay_to" not in defaults.broken:
            reader.error(node, path, "a priced route needs pay_to; set pay_to at the top level")
        return scalar.text, None
    offer = Offer("exact", defaults.network, defaults.pay_to)
    return scalar.text, offer.requirement(asset, amount)


def _dollars_in_default_asset(price: str, defaults: RouteDefaults) -> tuple[Asset, int]:
    dollars = formats.parse_usd(price)
    asset = pricing.default_asset(defaults.network, defaults.asset, defaults.network)
    if asset is None:
        raise ValueError(
            f"no default stablecoin is known for {defaults.network}; add a top-level "
            "asset: {address, name, version, decimals}, or use accepts with an asset "
            "and an amount in atomic units"
        )
    return asset, pricing.to_atomic(dollars, asset.spec, price)


# --- accepts: [{scheme, network, asset, amount, pay_to, ...}] ----------------------------


def _accepts(
    reader: Reader, node: yaml.Node, path: str, defaults: RouteDefaults
) -> tuple[str, tuple[Requirement, ...]]:
    items = reader.sequence(node, path)
    if items is None:
        return "", ()
    if not items:
        reader.error(node, path, "is empty; for a route without charge write price: free")
        return "", ()
    found = [_accept(reader, item, f"{path}[{i}]", defaults) for i, item in enumerate(items)]
    written = " or ".join(price for price, _ in found if price)
    return written, tuple(req for _, req in found if req is not None)


@dataclass(frozen=True, slots=True)
class _Token:
    """The token an `accepts` entry names: its address (None: the network's default), what
    is known about it, and the entry's own `extra`."""

    address: str | None
    known: Asset | None
    extra: dict[str, Any] | None

    def asset(self) -> Asset:
        """The token with its `extra`: what is known, overridden by the entry's own."""
        spec = (
            self.known.spec
            if self.known is not None
            else _unknown_token(self.address or "", self.extra or {})
        )
        known_extra = self.known.extra if self.known is not None else {}
        return Asset(spec, MappingProxyType({**known_extra, **(self.extra or {})}))


def _accept(reader: Reader, node: yaml.Node, path: str, defaults: RouteDefaults) -> Priced:
    """One `accepts:` entry as (amount as written, its requirement or None on error)."""
    entry = reader.section(node, path, ACCEPT_KEYS)
    if entry is None:
        return "", None
    errors_before = reader.error_count
    scheme = entry.read("scheme", choice(SCHEMES), "exact")
    network = entry.read("network", using(formats.parse_network), defaults.network)
    token = _token(reader, entry, network, defaults)
    written, amount = _amount(entry, token)
    pay_to = entry.read("pay_to", using(cv.parse_pay_to), defaults.pay_to)
    if pay_to is None and "pay_to" not in entry and "pay_to" not in defaults.broken:
        entry.error("pay_to", "required (here, or pay_to at the top level)")
    timeout = entry.read("max_timeout_seconds", positive_int, DEFAULT_MAX_TIMEOUT_SECONDS)
    if reader.error_count > errors_before or pay_to is None or not amount:
        return written, None
    return written, Offer(scheme, network, pay_to, timeout).requirement(token.asset(), amount)


def _token(reader: Reader, entry: Section, network: str, defaults: RouteDefaults) -> _Token:
    address = entry.read("asset", using(formats.parse_evm_address), None)
    if address is None:
        known = pricing.default_asset(network, defaults.asset, defaults.network)
        if known is None and "asset" not in entry:
            entry.error("asset", f"required: no default stablecoin is known for {network}")
    else:
        known = pricing.known_asset(network, address, defaults.asset, defaults.network)
    extra = _extra(reader, entry.get("extra"), entry.where("extra"))
    if address is not None and known is None and extra is None:
        reader.error(
            entry.node,
            entry.where("extra"),
            f"token {address} is not known on {network}; give extra: {{name, version}} "
            "(its EIP-712 domain, which payers sign)",
        )
    return _Token(address, known, extra)


def _amount(entry: Section, token: _Token) -> tuple[str, int]:
    """(the amount as written, in atomic units; 0 when absent or wrong)."""
    written: list[str] = []

    def amount_of(scalar: Scalar) -> int:
        written.append(scalar.text)
        return pricing.parse_amount(scalar.text, token.known, token.address or "")

    entry.require(("amount",), 'required: atomic units ("1000") or dollars ("$0.001")')
    amount = entry.read("amount", amount_of, 0, on_null="error")
    return "".join(written), amount


def _extra(reader: Reader, node: yaml.Node | None, path: str) -> dict[str, Any] | None:
    if node is None:
        return None
    value = reader.plain(node, path)
    if not isinstance(value, dict):
        reader.error(node, path, "must be a mapping, e.g. {name: USD Coin, version: '2'}")
        return None
    return value


def _unknown_token(address: str, extra: Mapping[str, Any]) -> AssetSpec:
    # Decimals unknown: amounts are atomic units only, and shown as such.
    name, version = str(extra.get("name", "")), str(extra.get("version", ""))
    return AssetSpec(address, name, version, decimals=0, symbol=address)
