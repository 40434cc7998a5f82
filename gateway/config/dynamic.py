"""Dynamic prices in the config.

A hook asks the owner's pricing service for each request's price:

    price: {hook: http://pricer:9000/price, cache: 30s, timeout: 2s, headers: [X-Tier]}

Declarative rules pick a price from a query parameter or header, without a service; the
first rule whose value matches wins, else the route's `price`:

    price: "$0.01"
    price_by:
      query.size: {small: "$0.01", large: "$0.05", sample: free}
      header.X-Tier: {pro: "$0.002"}
"""

from __future__ import annotations

from types import MappingProxyType

import yaml

from gateway import formats
from gateway.config import pricing
from gateway.config import values as cv
from gateway.config.pricing import Offer
from gateway.config.reader import Reader, Scalar, duration, using
from gateway.config.settings import AssetSpec, PriceHook, PriceRule, Requirement

HOOK_KEYS = frozenset({"hook", "cache", "timeout", "headers"})
RULE_SOURCES = ("query", "header")
MAX_RULES = 16
MAX_CASES = 256


def hook_price(
    reader: Reader,
    node: yaml.Node,
    path: str,
    offer: tuple[str, str | None, AssetSpec | None],
) -> tuple[str, Requirement | None, PriceHook | None]:
    """`price: {hook: ...}` as (text for `check`, the template requirement, the hook)."""
    section = reader.section(node, path, HOOK_KEYS)
    if section is None:
        return "", None, None
    section.require(("hook",), "required: the pricing service's URL")
    url = section.read("hook", using(cv.parse_http_url), None, on_null="error")
    cache = section.read("cache", using(lambda t: formats.parse_duration(t, allow_zero=True)), 30.0)
    timeout = section.read("timeout", duration, 2.0)
    headers = _header_names(reader, section.get("headers"), section.where("headers"))
    template = _template(reader, node, path, offer)
    if url is None or template is None:
        return "hook", None, None
    return f"hook {url}", template, PriceHook(url, cache, timeout, headers)


def _template(
    reader: Reader, node: yaml.Node, path: str, offer: tuple[str, str | None, AssetSpec | None]
) -> Requirement | None:
    network, pay_to, configured = offer
    asset = pricing.default_asset(network, configured, network)
    if asset is None:
        reader.error(node, path, f"no default stablecoin is known for {network}; set asset")
        return None
    if pay_to is None:
        reader.error(node, path, "a priced route needs pay_to; set pay_to at the top level")
        return None
    return Offer("exact", network, pay_to).requirement(asset, 0)


def _header_names(reader: Reader, node: yaml.Node | None, path: str) -> tuple[str, ...]:
    if node is None:
        return ()
    items = reader.sequence(node, path) or []
    names = [
        reader.value(item, f"{path}[{i}]", using(lambda t: formats.parse_token(t, "header")), "")
        for i, item in enumerate(items)
    ]
    return tuple(n.lower() for n in names if n)


def price_rules(
    reader: Reader, node: yaml.Node | None, path: str, priced: Requirement | None
) -> tuple[PriceRule, ...]:
    """`price_by:` against the route's one `price` (its token gives the decimals)."""
    if node is None:
        return ()
    entries = reader.mapping(node, path, None)
    if entries is None:
        return ()
    if priced is None:
        reader.error(node, path, 'needs a price in dollars beside it (price: "$0.01")')
        return ()
    if len(entries) > MAX_RULES:
        reader.error(node, path, f"more than {MAX_RULES} rules")
    rules = []
    for key, value in list(entries.items())[:MAX_RULES]:
        rule = _rule(reader, key, value, f"{path}.{key}", priced)
        if rule is not None:
            rules.append(rule)
    return tuple(rules)


def _rule(
    reader: Reader, key: str, node: yaml.Node, path: str, priced: Requirement
) -> PriceRule | None:
    source, _, name = key.partition(".")
    if source not in RULE_SOURCES or not name:
        reader.error(node, path, "write query.NAME or header.NAME")
        return None
    cases = reader.mapping(node, path, None) or {}
    spec = AssetSpec(priced.asset, "", "", priced.decimals, priced.symbol)

    def amount(scalar: Scalar) -> int | None:
        if scalar.text.strip().lower() == "free":
            return None
        return pricing.to_atomic(formats.parse_usd(scalar.text), spec, scalar.text)

    found = {
        value: reader.value(case, f"{path}.{value}", amount, None)
        for value, case in list(cases.items())[:MAX_CASES]
    }
    if source == "header":
        return PriceRule("header", name.lower(), MappingProxyType(found))
    return PriceRule("query", name, MappingProxyType(found))
