"""`price: {upto: "$0.10", default: "$0.01"}` and `stream_usage: {sse_event: usage}`:
a metered (`upto`) route, compiled into its requirement and its `Metered` terms.

`upto` is paid through Permit2 whatever the token (its `extra` names the method alone, as the
SDK's `UptoEvmScheme` states it; the facilitator's address joins it at run time, from the
facilitator's /supported). Without `default`, a response whose origin states nothing is
charged the maximum.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import TYPE_CHECKING

import yaml

from gateway import formats
from gateway.config import pricing
from gateway.config.pricing import Asset, Offer
from gateway.config.reader import Reader, Section, nonempty
from gateway.config.settings import Metered, Requirement

if TYPE_CHECKING:
    from gateway.config.routes import RouteDefaults

UPTO_KEYS = frozenset({"upto", "default"})
STREAM_USAGE_KEYS = frozenset({"sse_event"})
UPTO_EXTRA = MappingProxyType({"assetTransferMethod": "permit2"})


def is_upto(node: yaml.Node) -> bool:
    """Whether a `price:` mapping is a metered one (`{upto: ...}`), not a price hook."""
    return isinstance(node, yaml.MappingNode) and any(
        isinstance(key, yaml.ScalarNode) and key.value == "upto" for key, _ in node.value
    )


def _dollars(reader: Reader, section: Section, key: str, asset: Asset) -> int | None:
    node = section.get(key)
    if node is None:
        return None
    scalar = reader.scalar(node, section.where(key))
    if scalar is None:
        return None
    try:
        return pricing.to_atomic(formats.parse_usd(scalar.text), asset.spec, scalar.text)
    except ValueError as exc:
        reader.error(node, section.where(key), str(exc))
        return None


def metered_price(
    reader: Reader, node: yaml.Node, path: str, defaults: RouteDefaults
) -> tuple[str, Requirement | None, Metered | None]:
    """`price: {upto, default}` as (text as written, its requirement, its terms)."""
    section = reader.section(node, path, UPTO_KEYS)
    if section is None:
        return "", None, None
    section.require(("upto",), 'required: the most a call may cost, e.g. upto: "$0.10"')
    known = pricing.default_asset(defaults.network, defaults.asset, defaults.network)
    if known is None or defaults.pay_to is None:
        reader.error(node, path, "an upto price needs pay_to and a known asset")
        return "", None, None
    asset = Asset(known.spec, UPTO_EXTRA)
    maximum = _dollars(reader, section, "upto", asset)
    default = _dollars(reader, section, "default", asset)
    if not maximum:
        if maximum == 0:
            section.error("upto", "is 0; write price: free for a route without charge")
        return "", None, None
    if default is not None and default > maximum:
        section.error("default", "is more than upto: a call never costs more than its maximum")
        return "", None, None
    scalar = reader.scalar(section.entries["upto"], section.where("upto"))
    text = f"upto {scalar.text if scalar else maximum}"
    offer = Offer("upto", defaults.network, defaults.pay_to)
    terms = Metered(default=maximum if default is None else default)
    return text, offer.requirement(asset, maximum), terms


def stream_usage(reader: Reader, entry: Section, terms: Metered | None) -> Metered | None:
    """`stream_usage: {sse_event: name}` onto the route's metered terms."""
    node = entry.get("stream_usage")
    if node is None:
        return terms
    section = reader.section(node, entry.where("stream_usage"), STREAM_USAGE_KEYS)
    if section is None:
        return terms
    if terms is None:
        entry.error("stream_usage", 'needs a metered price: price: {upto: "$0.10"}')
        return None
    section.require(("sse_event",), "required: the name of the SSE event that states usage")
    event = section.read("sse_event", nonempty, None, on_null="error")
    return Metered(terms.default, event) if event else terms
