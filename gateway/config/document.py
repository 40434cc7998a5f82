"""The config document's top level, compiled into `Settings`: one small function per section
(addresses, payment defaults, store and workers, timeouts, limits, proxies). `facilitator:` is
gateway/config/facilitators.py, the `routes:` table gateway/config/routes.py. Problems go to
the `Reader`, all of them, each with its line; a section that cannot be read yields defaults.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

import yaml

from gateway import formats
from gateway.config import values as cv
from gateway.config.channels import channels_need_one_redis, compile_channels
from gateway.config.cors import compile_cors
from gateway.config.facilitators import compile_facilitators
from gateway.config.networks import compile_networks
from gateway.config.pricing import DEFAULT_NETWORK
from gateway.config.rates import read_rates
from gateway.config.reader import (
    Reader,
    Scalar,
    Section,
    boolean,
    choice,
    duration,
    nonempty,
    positive_int,
    using,
)
from gateway.config.routes import RouteDefaults, compile_routes
from gateway.config.settings import (
    Address,
    AssetSpec,
    Idempotency,
    Limits,
    RouteSettings,
    Settings,
    Timeouts,
    Transfer,
)

# `verify: local` checks a payment in process, without the facilitator's /verify round trip.
VERIFY_MODES = ("facilitator", "local")

TOP_LEVEL_KEYS = frozenset(
    {
        "listen",
        "admin",
        "upstream",
        "facilitator",
        "network",
        "pay_to",
        "asset",
        "assets",
        "store",
        "payer_header",
        "timeouts",
        "limits",
        "trusted_proxies",
        "public_url",
        "case_insensitive_paths",
        "log_level",
        "workers",
        "server_timing",
        "verify",
        "networks",
        "cors",
        "routes",
    }
    | {"idempotency"}
    | {"channels"}
)
IDEMPOTENCY_KEYS = frozenset({"keep_body", "keep_for", "required"})
ASSET_KEYS = frozenset({"address", "name", "version", "decimals", "symbol", "transfer"})
TRANSFERS = ("eip3009", "permit2")
TIMEOUT_KEYS = frozenset(
    {"connect", "read", "request_header", "request_body", "shutdown_grace", "keepalive"}
)
LIMIT_KEYS = frozenset(
    {"request_body", "header_size", "connections", "payment_header", "per_payer", "per_ip"}
    | {"daily_spend"}
)
LOG_LEVELS = ("debug", "info", "warning", "error")
DEFAULT_LISTEN = Address("0.0.0.0", 8402)
DEFAULT_ADMIN = Address("127.0.0.1", 9402)
_DISABLED = frozenset({"off", "false", "no", "null", "~", ""})
_UNLIMITED = frozenset({"unlimited", "null", "~", "none"})

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def compile_document(reader: Reader, root: yaml.Node) -> Settings | None:
    """The whole file as `Settings`; None when its top level is not even a mapping."""
    top = reader.section(root, "", TOP_LEVEL_KEYS)
    if top is None:
        return None
    top.require(("upstream", "routes"))
    listen, admin = _addresses(top)
    upstream = top.read("upstream", using(cv.parse_origin), "", on_null="error")
    channels = compile_channels(reader, top.get("channels"))
    defaults = dataclasses.replace(_route_defaults(reader, top), channels=channels)
    store, workers = _store_and_workers(top)
    facilitators = compile_facilitators(reader, top.get("facilitator"))
    routes = _routes(reader, top, defaults)
    _access_needs_public_url(top, routes)
    channels_need_one_redis(top, store, routes)
    return Settings(
        source=reader.filename,
        listen=listen,
        admin=admin,
        upstream=upstream,
        routes=routes,
        facilitators=facilitators,
        network=defaults.network,
        pay_to=defaults.pay_to,
        asset=defaults.asset,
        assets=defaults.assets,
        store=store,
        payer_header=top.read("payer_header", using(cv.parse_payer_header), "X-Payer"),
        timeouts=_timeouts(reader, top.get("timeouts")),
        limits=_limits(reader, top.get("limits")),
        trusted_proxies=_trusted_proxies(reader, top.get("trusted_proxies")),
        public_url=top.read("public_url", using(cv.parse_http_url), None),
        case_insensitive_paths=top.read("case_insensitive_paths", boolean, True),
        log_level=top.read("log_level", choice(LOG_LEVELS), "info"),
        workers=workers,
        server_timing=top.read("server_timing", boolean, False),
        networks=compile_networks(reader, top.get("networks")),
        idempotency=_idempotency(reader, top.get("idempotency")),
        cors=compile_cors(reader, top.get("cors")),
        verify=top.read("verify", choice(VERIFY_MODES), "facilitator"),
        channels=channels,
    )


# --- listening addresses ----------------------------------------------------------------


def _admin(scalar: Scalar) -> Address | None:
    if scalar.value is None or scalar.value is False or scalar.text.strip().lower() in _DISABLED:
        return None
    return cv.parse_listen(scalar.text)


def _addresses(top: Section) -> tuple[Address, Address | None]:
    listen = top.read("listen", using(cv.parse_listen), DEFAULT_LISTEN)
    default_admin: Address | None = DEFAULT_ADMIN
    admin = top.read("admin", _admin, default_admin, on_null="convert")
    if admin is not None and admin == listen and listen.port != 0:
        top.error("admin", f"same address as listen ({listen})")
    return listen, admin


# --- what routes fall back to -----------------------------------------------------------


@dataclass(slots=True)
class _Broken:
    """Which top-level keys were reported as wrong while reading them."""

    reader: Reader
    keys: set[str]

    def watch(self, key: str, errors_before: int) -> None:
        if self.reader.error_count > errors_before:
            self.keys.add(key)


def _route_defaults(reader: Reader, top: Section) -> RouteDefaults:
    broken = _Broken(reader, set())
    before = reader.error_count
    network = top.read("network", using(formats.parse_network), DEFAULT_NETWORK)
    broken.watch("network", before)
    before = reader.error_count
    pay_to = top.read("pay_to", using(cv.parse_pay_to), None)
    broken.watch("pay_to", before)
    before = reader.error_count
    asset_node = top.get("asset")
    asset = _asset(reader, asset_node) if asset_node is not None else None
    broken.watch("asset", before)
    before = reader.error_count
    assets = _assets(reader, top.get("assets"))
    broken.watch("assets", before)
    return RouteDefaults(network, pay_to, asset, frozenset(broken.keys), assets)


def _decimals(scalar: Scalar) -> int:
    value = scalar.value
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 36:
        raise ValueError(f"{formats.quote(scalar.text)} is not a number of decimals (0-36)")
    return value


def _transfer(scalar: Scalar) -> Transfer:
    return "permit2" if choice(TRANSFERS)(scalar) == "permit2" else "eip3009"


def _assets(reader: Reader, node: yaml.Node | None) -> Mapping[str, AssetSpec]:
    """`assets: {name: {address, name, version, decimals, transfer}}`: tokens routes name."""
    if node is None:
        return MappingProxyType({})
    section = reader.section(node, "assets", None)
    if section is None:
        return MappingProxyType({})
    found: dict[str, AssetSpec] = {}
    for name, value in section.entries.items():
        spec = _asset(reader, value, f"assets.{name}")
        if spec is not None:
            found[name] = spec
    return MappingProxyType(found)


def _asset(reader: Reader, node: yaml.Node, where: str = "asset") -> AssetSpec | None:
    asset = reader.section(node, where, ASSET_KEYS)
    if asset is None:
        return None
    asset.require(
        ("address", "name", "version", "decimals"),
        "required (an asset needs address, name, version, decimals)",
    )
    address = asset.read("address", using(formats.parse_evm_address), None, on_null="error")
    name = asset.read("name", nonempty, None, on_null="error")
    version = asset.read("version", nonempty, None, on_null="error")
    decimals = asset.read("decimals", _decimals, None, on_null="error")
    symbol = asset.read("symbol", nonempty, "")
    default: Transfer = "eip3009"
    transfer = asset.read("transfer", _transfer, default)
    if address is None or name is None or version is None or decimals is None:
        return None
    return AssetSpec(address, name, version, decimals, symbol or "USDC", transfer)


# --- store, workers, routes -------------------------------------------------------------


def _store_and_workers(top: Section) -> tuple[str, int]:
    store = top.read("store", using(cv.parse_store), "memory")
    workers = top.read("workers", positive_int, 1)
    if workers > 1 and store == "memory":
        top.error(
            "workers", f"{workers} needs a shared store (redis://...); store: memory is per process"
        )
    return store, workers


def _routes(reader: Reader, top: Section, defaults: RouteDefaults) -> tuple[RouteSettings, ...]:
    routes_node = top.get("routes")
    routes = compile_routes(reader, routes_node, defaults) if routes_node is not None else ()
    if "facilitator" not in top and any(not route.free for route in routes):
        reader.error(
            top.node,
            "facilitator",
            "priced routes need a facilitator; add e.g. "
            "facilitator: {url: https://x402.org/facilitator}",
        )
    return routes


def _access_needs_public_url(top: Section, routes: tuple[RouteSettings, ...]) -> None:
    """A SIWX proof is bound to one origin (its `domain` and `uri`): the gateway's public one,
    never whatever Host a client sent."""
    if "public_url" in top:
        return
    for route in routes:
        if route.access is not None:
            top.error(
                "public_url",
                f"routes[{route.index}].access signs payers in to this origin; set "
                "public_url: https://api.example.com (the URL clients use)",
            )
            return


# --- timeouts, limits, proxies ----------------------------------------------------------


def _timeouts(reader: Reader, node: yaml.Node | None) -> Timeouts:
    default = Timeouts()
    section = reader.section(node, "timeouts", TIMEOUT_KEYS) if node is not None else None
    if not section or not section.entries:
        return default
    grace = using(lambda text: formats.parse_duration(text, allow_zero=True))
    return Timeouts(
        connect=section.read("connect", duration, default.connect),
        read=section.read("read", duration, default.read),
        request_header=section.read("request_header", duration, default.request_header),
        request_body=section.read("request_body", duration, default.request_body),
        shutdown_grace=section.read("shutdown_grace", grace, default.shutdown_grace),
        keepalive=section.read("keepalive", duration, default.keepalive),
    )


def _request_body(scalar: Scalar) -> int | None:
    if scalar.value is None or scalar.text.strip().lower() in _UNLIMITED:
        return None
    return cv.parse_size(scalar.text)


def _limits(reader: Reader, node: yaml.Node | None) -> Limits:
    default = Limits()
    section = reader.section(node, "limits", LIMIT_KEYS) if node is not None else None
    if not section or not section.entries:
        return default
    size = using(cv.parse_size)
    return Limits(
        request_body=section.read(
            "request_body", _request_body, default.request_body, on_null="convert"
        ),
        header_size=section.read("header_size", size, default.header_size),
        connections=section.read("connections", positive_int, default.connections),
        payment_header=section.read("payment_header", size, default.payment_header),
        rates=read_rates(section),
    )


def _idempotency(reader: Reader, node: yaml.Node | None) -> Idempotency | None:
    if node is None:
        return None
    section = reader.section(node, "idempotency", IDEMPOTENCY_KEYS)
    if section is None:
        return None
    default = Idempotency()
    return Idempotency(
        keep_body=section.read("keep_body", using(cv.parse_size), default.keep_body),
        keep_for=section.read("keep_for", duration, default.keep_for),
        required=section.read("required", boolean, default.required),
    )


def _ip_network(text: str) -> IPNetwork:
    try:
        return ipaddress.ip_network(text.strip(), strict=True)
    except ValueError as exc:
        raise ValueError(f"{formats.quote(text)} is not an IP address or CIDR ({exc})") from None


def _trusted_proxies(reader: Reader, node: yaml.Node | None) -> tuple[IPNetwork, ...]:
    if node is None:
        return ()
    items = reader.sequence(node, "trusted_proxies") or []
    found = [
        reader.value(item, f"trusted_proxies[{index}]", using(_ip_network), None)
        for index, item in enumerate(items)
    ]
    return tuple(f for f in found if f is not None)
