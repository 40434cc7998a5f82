"""YAML config file -> validated, frozen `Settings`, with `file:line key.path:` errors.

The file is composed into YAML nodes (which carry line numbers) and walked by hand, so every
problem can name its line and key path, and all of them are reported at once. `${ENV}`
references in values are expanded before a value is read as its type.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from types import MappingProxyType

import yaml

from gateway import formats
from gateway.config import values as cv
from gateway.config.reader import (
    Reader,
    Scalar,
    boolean,
    choice,
    duration,
    nonempty,
    positive_int,
    using,
)
from gateway.config.routes import ACCEPT_KEYS, ROUTE_KEYS, compile_routes
from gateway.config.settings import (
    Address,
    AssetSpec,
    FacilitatorSettings,
    Limits,
    LocalFacilitatorSettings,
    RemoteFacilitatorSettings,
    RouteSettings,
    Settings,
    Timeouts,
)
from gateway.errors import ConfigError

__all__ = [
    "ACCEPT_KEYS",
    "ASSET_KEYS",
    "FACILITATOR_KEYS",
    "LIMIT_KEYS",
    "LOCAL_FACILITATOR_KEYS",
    "LOG_LEVELS",
    "ROUTE_KEYS",
    "TIMEOUT_KEYS",
    "TOP_LEVEL_KEYS",
    "Reader",
    "Scalar",
    "load",
    "loads",
]

TOP_LEVEL_KEYS = frozenset(
    {
        "listen",
        "admin",
        "upstream",
        "facilitator",
        "network",
        "pay_to",
        "asset",
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
        "routes",
    }
)
FACILITATOR_KEYS = frozenset({"url", "headers", "timeout", "local"})
LOCAL_FACILITATOR_KEYS = frozenset({"rpc_url", "private_key"})
ASSET_KEYS = frozenset({"address", "name", "version", "decimals", "symbol"})
TIMEOUT_KEYS = frozenset(
    {"connect", "read", "request_header", "request_body", "shutdown_grace", "keepalive"}
)
LIMIT_KEYS = frozenset({"request_body", "header_size", "connections", "payment_header"})
LOG_LEVELS = ("debug", "info", "warning", "error")
_DISABLED = frozenset({"off", "false", "no", "null", "~", ""})
_UNLIMITED = frozenset({"unlimited", "null", "~", "none"})

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


# --- sections -------------------------------------------------------------------------


def _admin(s: Scalar) -> Address | None:
    if s.value is None or s.value is False or s.text.strip().lower() in _DISABLED:
        return None
    return cv.parse_listen(s.text)


def _request_body(s: Scalar) -> int | None:
    if s.value is None or s.text.strip().lower() in _UNLIMITED:
        return None
    return cv.parse_size(s.text)


def _timeouts(r: Reader, node: yaml.Node | None) -> Timeouts:
    d, p = Timeouts(), "timeouts"
    e = r.mapping(node, p, TIMEOUT_KEYS) if node is not None else None
    if not e:
        return d
    grace = using(lambda t: formats.parse_duration(t, allow_zero=True))
    return Timeouts(
        connect=r.read(e, "connect", p, duration, d.connect),
        read=r.read(e, "read", p, duration, d.read),
        request_header=r.read(e, "request_header", p, duration, d.request_header),
        request_body=r.read(e, "request_body", p, duration, d.request_body),
        shutdown_grace=r.read(e, "shutdown_grace", p, grace, d.shutdown_grace),
        keepalive=r.read(e, "keepalive", p, duration, d.keepalive),
    )


def _limits(r: Reader, node: yaml.Node | None) -> Limits:
    d, p = Limits(), "limits"
    e = r.mapping(node, p, LIMIT_KEYS) if node is not None else None
    if not e:
        return d
    size = using(cv.parse_size)
    return Limits(
        request_body=r.read(e, "request_body", p, _request_body, d.request_body, null=True),
        header_size=r.read(e, "header_size", p, size, d.header_size),
        connections=r.read(e, "connections", p, positive_int, d.connections),
        payment_header=r.read(e, "payment_header", p, size, d.payment_header),
    )


def _decimals(s: Scalar) -> int:
    if isinstance(s.value, bool) or not isinstance(s.value, int) or not 0 <= s.value <= 36:
        raise ValueError(f"{formats.quote(s.text)} is not a number of decimals (0-36)")
    return s.value


def _asset(r: Reader, node: yaml.Node) -> AssetSpec | None:
    e = r.mapping(node, "asset", ASSET_KEYS)
    if e is None:
        return None
    for key in ("address", "name", "version", "decimals"):
        if key not in e:
            r.error(
                node, f"asset.{key}", "required (an asset needs address, name, version, decimals)"
            )
    address = r.read(e, "address", "asset", using(formats.parse_evm_address), None, required=True)
    name = r.read(e, "name", "asset", nonempty, None, required=True)
    version = r.read(e, "version", "asset", nonempty, None, required=True)
    decimals = r.read(e, "decimals", "asset", _decimals, None, required=True)
    symbol = r.read(e, "symbol", "asset", nonempty, "")
    if address is None or name is None or version is None or decimals is None:
        return None
    if symbol:
        return AssetSpec(address, name, version, decimals, symbol)
    return AssetSpec(address, name, version, decimals)


def _local_facilitator(
    r: Reader, node: yaml.Node, path: str, timeout: float
) -> LocalFacilitatorSettings | None:
    e = r.mapping(node, path, LOCAL_FACILITATOR_KEYS)
    if e is None:
        return None
    for key in ("rpc_url", "private_key"):
        if key not in e:
            r.error(node, f"{path}.{key}", "required")
    # An RPC URL often embeds an API key: it is never echoed.
    rpc_url = using(lambda t: cv.parse_url(t, allow_path=True, what="RPC URL", echo=False))
    rpc = r.read(e, "rpc_url", path, rpc_url, None, required=True)
    secret = r.read(e, "private_key", path, using(cv.parse_private_key), None, required=True)
    if rpc is None or secret is None:
        return None
    return LocalFacilitatorSettings(rpc_url=rpc, private_key=secret, timeout=timeout)


def _headers(r: Reader, node: yaml.Node, path: str) -> dict[str, str]:
    headers: dict[str, str] = {}
    for name, value in (r.mapping(node, path, None) or {}).items():
        try:
            formats.parse_token(name, "header name")
        except ValueError as exc:
            r.error(value, f"{path}.{name}", str(exc))
            continue
        got = r.value(value, f"{path}.{name}", using(cv.parse_header_value), None)
        if got is not None:
            headers[name] = got
    return headers


def _facilitator(r: Reader, node: yaml.Node, path: str) -> FacilitatorSettings | None:
    e = r.mapping(node, path, FACILITATOR_KEYS)
    if e is None:
        return None
    if ("url" in e) == ("local" in e):
        r.error(node, path, "give either url (a remote facilitator) or local (in-process)")
        return None
    if "local" in e:
        if "headers" in e:
            r.error(e["headers"], f"{path}.headers", "only for a remote facilitator (url)")
        timeout = r.read(e, "timeout", path, duration, 30.0)
        return _local_facilitator(r, e["local"], f"{path}.local", timeout)
    url = r.read(
        e, "url", path, using(lambda t: cv.parse_url(t, allow_path=True)), None, required=True
    )
    timeout = r.read(e, "timeout", path, duration, 10.0)
    headers = _headers(r, e["headers"], f"{path}.headers") if "headers" in e else {}
    if url is None:
        return None
    return RemoteFacilitatorSettings(url=url, headers=MappingProxyType(headers), timeout=timeout)


def _facilitators(r: Reader, node: yaml.Node | None) -> tuple[FacilitatorSettings, ...]:
    if node is None:
        return ()
    if isinstance(node, yaml.SequenceNode):
        if not node.value:
            r.error(node, "facilitator", "is an empty list")
        found = [_facilitator(r, n, f"facilitator[{i}]") for i, n in enumerate(node.value)]
    else:
        found = [_facilitator(r, node, "facilitator")]
    return tuple(f for f in found if f is not None)


def _ip_network(text: str) -> IPNetwork:
    try:
        return ipaddress.ip_network(text.strip(), strict=True)
    except ValueError as exc:
        raise ValueError(f"{formats.quote(text)} is not an IP address or CIDR ({exc})") from None


def _trusted_proxies(r: Reader, node: yaml.Node | None) -> tuple[IPNetwork, ...]:
    if node is None:
        return ()
    items = r.sequence(node, "trusted_proxies") or []
    found = [
        r.value(n, f"trusted_proxies[{i}]", using(_ip_network), None) for i, n in enumerate(items)
    ]
    return tuple(f for f in found if f is not None)


def _compile(r: Reader, root: yaml.Node) -> Settings | None:
    e = r.mapping(root, "", TOP_LEVEL_KEYS)
    if e is None:
        return None
    for key in ("upstream", "routes"):
        if key not in e:
            r.error(root, key, "required")
    listen = r.read(e, "listen", "", using(cv.parse_listen), Address("0.0.0.0", 8402))
    default_admin: Address | None = Address("127.0.0.1", 9402)
    admin = r.read(e, "admin", "", _admin, default_admin, null=True)
    if admin is not None and admin == listen and listen.port != 0:
        r.error(e.get("admin", root), "admin", f"same address as listen ({listen})")
    upstream = r.read(
        e, "upstream", "", using(lambda t: cv.parse_url(t, allow_path=False)), "", required=True
    )
    before = len(r.errors)
    network = r.read(e, "network", "", using(formats.parse_network), "eip155:84532")
    broken = {"network"} if len(r.errors) > before else set()
    before = len(r.errors)
    pay_to = r.read(e, "pay_to", "", using(cv.parse_pay_to), None)
    broken |= {"pay_to"} if len(r.errors) > before else set()
    before = len(r.errors)
    asset = _asset(r, e["asset"]) if "asset" in e else None
    broken |= {"asset"} if len(r.errors) > before else set()
    store = r.read(e, "store", "", using(cv.parse_store), "memory")
    workers = r.read(e, "workers", "", positive_int, 1)
    if workers > 1 and store == "memory":
        r.error(
            e["workers"],
            "workers",
            f"{workers} needs a shared store (redis://...); store: memory is per process",
        )
    facilitators = _facilitators(r, e.get("facilitator"))
    routes: tuple[RouteSettings, ...] = ()
    if "routes" in e:
        routes = compile_routes(
            r, e["routes"], network=network, pay_to=pay_to, asset=asset, broken=frozenset(broken)
        )
    if "facilitator" not in e and any(not route.free for route in routes):
        r.error(
            root,
            "facilitator",
            "priced routes need a facilitator; add e.g. "
            "facilitator: {url: https://x402.org/facilitator}",
        )
    public_url = using(lambda t: cv.parse_url(t, allow_path=True))
    return Settings(
        source=r.filename,
        listen=listen,
        admin=admin,
        upstream=upstream,
        routes=routes,
        facilitators=facilitators,
        network=network,
        pay_to=pay_to,
        asset=asset,
        store=store,
        payer_header=r.read(e, "payer_header", "", using(cv.parse_payer_header), "X-Payer"),
        timeouts=_timeouts(r, e.get("timeouts")),
        limits=_limits(r, e.get("limits")),
        trusted_proxies=_trusted_proxies(r, e.get("trusted_proxies")),
        public_url=r.read(e, "public_url", "", public_url, None),
        case_insensitive_paths=r.read(e, "case_insensitive_paths", "", boolean, False),
        log_level=r.read(e, "log_level", "", choice(LOG_LEVELS), "info"),
        workers=workers,
        server_timing=r.read(e, "server_timing", "", boolean, False),
    )


def loads(text: str, filename: str = "<string>", env: Mapping[str, str] | None = None) -> Settings:
    """Parse and validate a config given as text; raises ConfigError with every problem."""
    reader = Reader(filename, os.environ if env is None else env)
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 1
        # Our own words, not str(exc): PyYAML quotes the offending line, which may hold a secret.
        problem = ": ".join(p for p in (exc.context, exc.problem) if p)
        raise ConfigError([f"{filename}:{line}: YAML syntax error: {problem}"]) from None
    except yaml.reader.ReaderError as exc:
        line = text.count("\n", 0, max(exc.position, 0)) + 1
        raise ConfigError(
            [f"{filename}:{line}: YAML syntax error: a control character is not allowed here"]
        ) from None
    if root is None:
        raise ConfigError([f"{filename}:1: the file is empty; upstream and routes are required"])
    settings = _compile(reader, root)
    if reader.errors or settings is None:
        raise ConfigError(reader.errors)
    return settings


def load(path: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> Settings:
    """Read and validate the config file at `path`."""
    name = os.fspath(path)
    try:
        with open(name, encoding="utf-8") as f:
            content = f.read()
    except OSError as exc:
        raise ConfigError([f"{name}: cannot read the config file: {exc.strerror}"]) from None
    except UnicodeDecodeError:
        raise ConfigError([f"{name}: the config file is not UTF-8 text"]) from None
    return loads(content, name, env)
