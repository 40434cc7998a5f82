"""The `routes:` table of the config file, compiled into `RouteSettings` with exact prices."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import yaml

from gateway import formats
from gateway.config import pricing
from gateway.config import values as cv
from gateway.config.reader import Reader, Scalar, choice, positive_int, text, using
from gateway.config.settings import AssetSpec, Requirement, RouteSettings, SettleMode, Source

ROUTE_KEYS = frozenset(
    {"path", "methods", "price", "accepts", "description", "mime_type", "upstream", "settle"}
)
ACCEPT_KEYS = frozenset(
    {"scheme", "network", "asset", "amount", "pay_to", "max_timeout_seconds", "extra"}
)
# What the payment step implements today; `upto` and `batch-settlement` join when built.
SCHEMES = ("exact",)
SETTLE_MODES: tuple[SettleMode, ...] = ("after", "before")
DEFAULT_MAX_TIMEOUT_SECONDS = 300
_MIME = re.compile(r"[\w.+\-]+/[\w.+\-]+(\s*;.*)?")


class _Defaults:
    """The top-level values a route falls back to."""

    def __init__(
        self, network: str, pay_to: str | None, asset: AssetSpec | None, broken: frozenset[str]
    ) -> None:
        self.network = network
        self.pay_to = pay_to
        self.asset = asset
        # Top-level keys already reported as wrong: their fallout is not reported again.
        self.broken = broken


def _mime(text: str) -> str:
    if not _MIME.fullmatch(text.strip()):
        raise ValueError(f"{formats.quote(text)} is not a media type; write e.g. application/json")
    return text.strip()


def _method(text: str) -> str:
    return formats.parse_token(text.strip(), "HTTP method").upper()


def _methods(r: Reader, node: yaml.Node | None, path: str) -> frozenset[str] | None:
    if node is None:
        return None
    items = [node] if isinstance(node, yaml.ScalarNode) else r.sequence(node, path)
    if items is None:
        return None
    if not items:
        r.error(node, path, "is empty; leave methods out to allow every method")
        return None
    found = {r.value(n, f"{path}[{i}]", using(_method), "") for i, n in enumerate(items)}
    return frozenset(found - {""}) or None


def _price(r: Reader, node: yaml.Node, path: str, d: _Defaults) -> tuple[str, Requirement | None]:
    """`price:` as (text as written, its requirement; None for free or on error)."""
    scalar = r.scalar(node, path)
    if scalar is None:
        return "", None
    if scalar.text.strip().lower() == "free":
        return "free", None
    if d.broken & {"network", "asset"}:
        return scalar.text, None
    try:
        dollars = formats.parse_usd(scalar.text)
        asset = pricing.default_asset(d.network, d.asset, d.network)
        if asset is None:
            raise ValueError(
                f"no default stablecoin is known for {d.network}; add a top-level "
                "asset: {address, name, version, decimals}, or use accepts with an asset "
                "and an amount in atomic units"
            )
        amount = pricing.to_atomic(dollars, asset.spec, scalar.text)
    except ValueError as exc:
        r.error(node, path, str(exc))
        return scalar.text, None
    if d.pay_to is None:
        if "pay_to" not in d.broken:
            r.error(node, path, "a priced route needs pay_to; set pay_to at the top level")
        return scalar.text, None
    req = pricing.requirement(
        scheme="exact",
        network=d.network,
        asset=asset.spec,
        amount=amount,
        pay_to=d.pay_to,
        max_timeout_seconds=DEFAULT_MAX_TIMEOUT_SECONDS,
        extra=asset.extra,
    )
    return scalar.text, req


def _extra(r: Reader, node: yaml.Node | None, path: str) -> dict[str, Any] | None:
    if node is None:
        return None
    value = r.plain(node, path)
    if not isinstance(value, dict):
        r.error(node, path, "must be a mapping, e.g. {name: USD Coin, version: '2'}")
        return None
    return value


def _accept(r: Reader, node: yaml.Node, path: str, d: _Defaults) -> tuple[str, Requirement | None]:
    """One `accepts:` entry as (amount as written, its requirement or None on error)."""
    e = r.mapping(node, path, ACCEPT_KEYS)
    if e is None:
        return "", None
    errors_before = len(r.errors)
    scheme = r.read(e, "scheme", path, choice(SCHEMES), "exact")
    network = r.read(e, "network", path, using(formats.parse_network), d.network)
    address = r.read(e, "asset", path, using(formats.parse_evm_address), None)
    if address is None:
        asset = pricing.default_asset(network, d.asset, d.network)
        if asset is None and "asset" not in e:
            r.error(
                node, f"{path}.asset", f"required: no default stablecoin is known for {network}"
            )
    else:
        asset = pricing.known_asset(network, address, d.asset, d.network)
    extra = _extra(r, e.get("extra"), f"{path}.extra")
    if address is not None and asset is None and extra is None:
        r.error(
            node,
            f"{path}.extra",
            f"token {address} is not known on {network}; give extra: {{name, version}} "
            "(its EIP-712 domain, which payers sign)",
        )
    written: list[str] = []

    def amount_of(s: Scalar) -> int:
        written.append(s.text)
        return pricing.parse_amount(s.text, asset, address or "")

    if "amount" not in e:
        r.error(node, f"{path}.amount", 'required: atomic units ("1000") or dollars ("$0.001")')
    amount = r.read(e, "amount", path, amount_of, 0, required=True)
    pay_to = r.read(e, "pay_to", path, using(cv.parse_pay_to), d.pay_to)
    if pay_to is None and "pay_to" not in e and "pay_to" not in d.broken:
        r.error(node, f"{path}.pay_to", "required (here, or pay_to at the top level)")
    timeout = r.read(e, "max_timeout_seconds", path, positive_int, DEFAULT_MAX_TIMEOUT_SECONDS)
    if len(r.errors) > errors_before or pay_to is None or not amount:
        return "".join(written), None
    spec = asset.spec if asset is not None else _unknown_token(address or "", extra or {})
    merged = {**(asset.extra if asset is not None else {}), **(extra or {})}
    req = pricing.requirement(
        scheme=scheme,
        network=network,
        asset=spec,
        amount=amount,
        pay_to=pay_to,
        max_timeout_seconds=timeout,
        extra=merged,
    )
    return "".join(written), req


def _unknown_token(address: str, extra: Mapping[str, Any]) -> AssetSpec:
    # Decimals unknown: amounts are atomic units only, and shown as such.
    name, version = str(extra.get("name", "")), str(extra.get("version", ""))
    return AssetSpec(address, name, version, decimals=0, symbol=address)


def _accepts(
    r: Reader, node: yaml.Node, path: str, d: _Defaults
) -> tuple[str, tuple[Requirement, ...]]:
    items = r.sequence(node, path)
    if items is None:
        return "", ()
    if not items:
        r.error(node, path, "is empty; for a route without charge write price: free")
        return "", ()
    found = [_accept(r, n, f"{path}[{i}]", d) for i, n in enumerate(items)]
    text = " or ".join(t for t, _ in found if t)
    return text, tuple(req for _, req in found if req is not None)


def _route(r: Reader, node: yaml.Node, index: int, d: _Defaults) -> RouteSettings | None:
    p = f"routes[{index}]"
    e = r.mapping(node, p, ROUTE_KEYS)
    if e is None:
        return None
    if "path" not in e:
        r.error(node, f"{p}.path", "required")
    path = r.read(e, "path", p, using(cv.parse_path_pattern), None, required=True)
    methods = _methods(r, e.get("methods"), f"{p}.methods")
    accepts: tuple[Requirement, ...] = ()
    if "price" in e and "accepts" in e:
        r.error(e["accepts"], f"{p}.accepts", "give price or accepts, not both")
        price_text = ""
    elif "price" in e:
        price_text, req = _price(r, e["price"], f"{p}.price", d)
        accepts = (req,) if req is not None else ()
    elif "accepts" in e:
        price_text, accepts = _accepts(r, e["accepts"], f"{p}.accepts", d)
    else:
        r.error(node, f"{p}.price", 'required: a price ("$0.001"), free, or accepts: [...]')
        price_text = ""
    upstream = using(lambda t: cv.parse_url(t, allow_path=False))
    route = RouteSettings(
        index=index,
        path=path or "",
        methods=methods,
        accepts=accepts,
        description=r.read(e, "description", p, text, ""),
        mime_type=r.read(e, "mime_type", p, using(_mime), "application/json"),
        upstream=r.read(e, "upstream", p, upstream, None),
        settle=r.read(e, "settle", p, _settle, "after"),
        price_text=price_text or "free",
        source=Source(r.filename, node.start_mark.line + 1),
    )
    return route if path is not None else None


def _settle(s: Scalar) -> SettleMode:
    word = choice(SETTLE_MODES)(s)
    return "before" if word == "before" else "after"


def compile_routes(
    r: Reader,
    node: yaml.Node,
    *,
    network: str,
    pay_to: str | None,
    asset: AssetSpec | None,
    broken: frozenset[str] = frozenset(),
) -> tuple[RouteSettings, ...]:
    """Every route in file order; problems go to `r.errors`."""
    items = r.sequence(node, "routes")
    if items is None:
        return ()
    if not items:
        r.error(node, "routes", "must list at least one route")
        return ()
    defaults = _Defaults(network, pay_to, asset, broken)
    routes: list[RouteSettings] = []
    first: dict[tuple[str, frozenset[str] | None], RouteSettings] = {}
    for i, item in enumerate(items):
        route = _route(r, item, i, defaults)
        if route is None:
            continue
        key = (route.path, route.methods)
        if key in first:
            earlier = first[key]
            r.error(
                item,
                f"routes[{i}].path",
                f"same path and methods as routes[{earlier.index}] (line "
                f"{earlier.source.line if earlier.source else '?'}); that one always wins",
            )
            continue
        first[key] = route
        routes.append(route)
    return tuple(routes)
