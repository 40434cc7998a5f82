"""Discovery: a priced route's `bazaar` extension (built with the SDK's helpers, carried by
its 402 so facilitators' catalogues list it), and the `/.well-known/x402` document that lists
every priced route with its terms, from the config alone, so an agent can pay a route on its
first request instead of taking a 402 first.
"""

from __future__ import annotations

import hashlib
import json
from types import SimpleNamespace
from typing import Any

from x402.extensions.bazaar import (
    BAZAAR,
    OutputConfig,
    bazaar_resource_server_extension,
    declare_discovery_extension,
)
from x402.extensions.payment_identifier import (
    PAYMENT_IDENTIFIER,
    declare_payment_identifier_extension,
)

from gateway.config.settings import Discovery, Idempotency, RouteSettings, Settings
from gateway.payment.requirements import requirements_v2, thaw

WELL_KNOWN = "/.well-known/x402"
CACHE_CONTROL = "public, max-age=300"
_QUERY_METHODS = ("GET", "HEAD", "DELETE")
_BODY_METHODS = ("POST", "PUT", "PATCH")


def discovery_method(route: RouteSettings, discovery: Discovery) -> str:
    """The method a catalogue lists: the route's first fitting one (a body needs POST/PUT/PATCH)."""
    fitting = _BODY_METHODS if discovery.input_in == "body" else _QUERY_METHODS
    for method in fitting:
        if route.methods is None or method in route.methods:
            return method
    return fitting[0]


def bazaar_extension(route: RouteSettings) -> dict[str, Any] | None:
    """`{"bazaar": {info, schema}}` for the route's 402, or None without `discovery`."""
    found = route.discovery
    if found is None:
        return None
    schema: dict[str, Any] = {"properties": thaw(found.properties)}
    if found.required:
        schema["required"] = list(found.required)
    output = None
    if found.output_example is not None or found.output_schema is not None:
        output = OutputConfig(
            example=thaw(found.output_example),
            schema=thaw(found.output_schema) if found.output_schema is not None else None,
        )
    declared = declare_discovery_extension(
        input=thaw(found.example) if found.example is not None else None,
        input_schema=schema,
        body_type=found.body_type if found.input_in == "body" else None,
        output=output,
    )
    # The SDK's own server extension adds the method (info and schema) the way catalogues
    # expect; it reads only `method` from the transport context.
    context = SimpleNamespace(method=discovery_method(route, found))
    enriched = bazaar_resource_server_extension.enrich_declaration(declared[BAZAAR.key], context)
    return {BAZAAR.key: enriched}


def declaration(config: Idempotency | None) -> dict[str, Any]:
    """The payment-identifier extension a 402 declares (the SDK's declaration), or nothing."""
    if config is None:
        return {}
    return {PAYMENT_IDENTIFIER: declare_payment_identifier_extension(required=config.required)}


def _item(route: RouteSettings, base_url: str) -> dict[str, Any]:
    item: dict[str, Any] = {
        "resource": base_url + route.path,
        "path": route.path,
        "methods": sorted(route.methods) if route.methods is not None else None,
        "type": "http",
        "x402Version": 2,
        "description": route.description,
        "mimeType": route.mime_type,
        "accepts": [r.model_dump(by_alias=True, exclude_none=True) for r in requirements_v2(route)],
    }
    if route.price_hook is not None:
        item["accepts"] = []  # priced per request by the owner's service: take a 402 first
    if route.dynamic:
        item["dynamicPrice"] = True
    extension = bazaar_extension(route)
    if extension is not None:
        item["extensions"] = extension
    return item


def well_known(settings: Settings, base_url: str) -> tuple[bytes, str]:
    """The `/.well-known/x402` document for clients reaching the gateway at `base_url`, and
    its strong ETag. `version`/`resources` is the shape x402scan and other crawlers read;
    `items` carries each route's terms (as a catalogue's `DiscoveryResource` does)."""
    items = [_item(route, base_url) for route in settings.routes if not route.free]
    document = {
        "version": 1,
        "x402Version": 2,
        "resources": [item["resource"] for item in items],
        "items": items,
    }
    body = json.dumps(document, sort_keys=True, separators=(",", ":")).encode()
    return body, '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
