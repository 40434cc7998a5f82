"""Header hygiene for the reverse proxy: pure functions, no I/O.

What crosses the gateway and what does not (RFC 9110 7.6.1, RFC 7239):
- hop-by-hop headers, and every header a `Connection` header names, stop here both ways;
- the client's `Host` stays here (the origin sees its own host; the client's goes into
  `X-Forwarded-Host` and `Forwarded: host=`);
- a client's `X-Forwarded-*` / `Forwarded` are believed (appended to) only when the direct
  peer is a trusted proxy, else they are replaced, so nobody can spoof an address to the origin;
- `Upgrade` never crosses: a `Connection: upgrade` request reaches the origin as a plain one;
- names are compared after folding `_` to `-` (and case): CGI-style servers (PHP, many WSGI
  and Rack setups) read `X_Payer` as `X-Payer`, so a spelling must not smuggle a payer,
  payment or hop-by-hop header past the gateway (issue 12 item 6);
- path-override headers (`X-Original-URL`, `X-Rewrite-URL`...) never cross: IIS URL Rewrite
  and older Symfony/Zend origins serve the path they name instead of the one priced;
- a paid answer loses its CDN cache directives (`Surrogate-Control`, `CDN-Cache-Control` and
  vendor variants): they override `Cache-Control: private` at the CDN (issue 12 item 7).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping

from multidict import CIMultiDict, CIMultiDictProxy
from x402.http.constants import (
    PAYMENT_REQUIRED_HEADER,
    PAYMENT_RESPONSE_HEADER,
    X_PAYMENT_RESPONSE_HEADER,
)

from gateway.formats import is_token

# RFC 9110 7.6.1 plus the non-standard Proxy-Connection: meaningful for one connection only.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)

FORWARDING = frozenset({"x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "forwarded"})

# Headers that make some origin serve another path than the request line's (IIS URL Rewrite,
# Symfony/Zend before their fixes, Spring's ForwardedHeaderFilter, proxies' auth hooks).
PATH_OVERRIDE = frozenset(
    {
        "x-original-url",
        "x-rewrite-url",
        "x-override-url",
        "x-original-uri",
        "x-forwarded-path",
        "x-forwarded-prefix",
        "x-forwarded-uri",
    }
)

# CDN cache directives that a CDN obeys over `Cache-Control` (and then strips): Fastly,
# Varnish, Akamai (Edge-Control), nginx caches (X-Accel-Expires), RFC 9213's
# CDN-Cache-Control and its vendor-targeted forms (`<vendor>-CDN-Cache-Control`).
CDN_DIRECTIVES = frozenset(
    {"surrogate-control", "cdn-cache-control", "edge-control", "x-accel-expires"}
)
_TARGETED_CDN_SUFFIX = "-cdn-cache-control"
# Any of them among folded names, one per line (a header name holds no line break).
_ANY_CDN_DIRECTIVE = re.compile(
    "^(?:{}|.*{})$".format(
        "|".join(map(re.escape, sorted(CDN_DIRECTIVES))), re.escape(_TARGETED_CDN_SUFFIX)
    ),
    re.MULTILINE,
)

# Never forwarded upstream: `Host` is the origin's own, and the gateway's server already
# answered `Expect: 100-continue` itself, so the origin must not be asked to do it again.
_REQUEST_ONLY = frozenset({"host", "expect"})

# The x402 response headers a browser client must be allowed to read.
X402_EXPOSED: tuple[str, ...] = (
    PAYMENT_REQUIRED_HEADER,
    PAYMENT_RESPONSE_HEADER,
    X_PAYMENT_RESPONSE_HEADER,
)
EXPOSE = "Access-Control-Expose-Headers"
_X402_EXPOSED_LIST = ", ".join(dict.fromkeys(X402_EXPOSED))  # no name twice, in order


_PLAIN_CONNECTION = frozenset({"keep-alive", "close"})

# Everything a request loses on its way upstream, before the caller's own drops.
_REQUEST_STRIP = HOP_BY_HOP | _REQUEST_ONLY | FORWARDING | PATH_OVERRIDE

Headers = CIMultiDict[str] | CIMultiDictProxy[str]


def fold(name: str) -> str:
    """A header name as a CGI-style server reads it: case and `_` / `-` are one."""
    low = name.lower()
    return low.replace("_", "-") if "_" in low else low


def lower_names(names: Iterable[str]) -> frozenset[str]:
    return frozenset(fold(name) for name in names)


def connection_tokens(headers: Headers) -> frozenset[str]:
    """The lowercased header names listed in `Connection` (they are hop-by-hop too)."""
    values = headers.getall("Connection", ())
    # The common cases name no other header: skip the parsing.
    if not values or (len(values) == 1 and values[0].lower() in _PLAIN_CONNECTION):
        return frozenset()
    return frozenset(
        fold(token.strip()) for value in values for token in value.split(",") if token.strip()
    )


def _strip(headers: Headers, names: Iterable[str]) -> CIMultiDict[str]:
    out = CIMultiDict(headers)
    for name in names:
        out.popall(name, None)
    return out


# The origin's word to the gateway (the amount a metered call costs): never the client's.
ORIGIN_TO_GATEWAY = frozenset({"settlement-overrides"})


def response_headers(incoming: Headers) -> CIMultiDict[str]:
    """The origin's response headers minus the hop-by-hop ones and those meant for the
    gateway alone."""
    out = _strip(incoming, HOP_BY_HOP | ORIGIN_TO_GATEWAY)
    for name in connection_tokens(incoming):
        out.popall(name, None)
    return out


Networks = tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]


def is_trusted(peer: str | None, networks: Networks) -> bool:
    """Whether the direct peer's IP lies in one of the trusted proxy networks."""
    if not peer or not networks:
        return False
    try:
        address = ipaddress.ip_address(peer)
    except ValueError:
        return False
    return any(address in network for network in networks)


def _forwarded_value(value: str) -> str:
    if is_token(value):  # an RFC 9110 token needs no quotes in a Forwarded value
        return value
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def forwarded_element(peer: str | None, proto: str, host: str | None) -> str:
    """One RFC 7239 element: `for=192.0.2.1;proto=http;host=example.com` (IPv6 quoted)."""
    if not peer:
        node = "unknown"
    elif ":" in peer:
        node = f'"[{peer}]"'
    else:
        node = _forwarded_value(peer)
    parts = [f"for={node}", f"proto={_forwarded_value(proto)}"]
    if host:
        parts.append(f"host={_forwarded_value(host)}")
    return ";".join(parts)


def _kept_client_headers(
    incoming: Headers, drop: frozenset[str], add: Mapping[str, str] | None
) -> CIMultiDict[str]:
    """The client's headers minus every one whose folded name is stripped or dropped."""
    named = connection_tokens(incoming)
    out: CIMultiDict[str] = CIMultiDict()
    spelled: list[str] = []  # names kept that fold to another spelling (`X_Request_Id`)
    for name, value in incoming.items():
        low = name.lower()
        if "_" in low:
            low = low.replace("_", "-")
            spelled.append(name)
        if low not in _REQUEST_STRIP and low not in drop and low not in named:
            out.add(name, value)
    if spelled and add:
        # What the gateway sets must not have a rival spelling a CGI-style origin would read.
        added = lower_names(add)
        for name in spelled:
            if fold(name) in added:
                out.popall(name, None)
    return out


def request_headers(  # noqa: PLR0913  every input of the rewrite, keyword-only at call sites
    incoming: Headers,
    *,
    peer: str | None,
    scheme: str,
    trusted: bool,
    drop: frozenset[str] = frozenset(),
    add: Mapping[str, str] | None = None,
) -> CIMultiDict[str]:
    """The headers to send upstream for a client request.

    `peer` is the direct peer's IP, `scheme` the scheme the client used to reach the
    gateway, `trusted` whether that peer is a trusted proxy; `drop` (lowercased names) are
    removed always, and `add` replaces any header of the same name the client sent (or one
    that folds to it: `X_Request_Id`).
    """
    out = _kept_client_headers(incoming, drop, add)
    host = incoming.get("Host")
    client_ip = peer or "unknown"
    element = forwarded_element(peer, scheme, host)
    if trusted:
        prior_for = incoming.getall("X-Forwarded-For", ())
        prior_fwd = incoming.getall("Forwarded", ())
        out["X-Forwarded-For"] = ", ".join((*prior_for, client_ip))
        out["X-Forwarded-Proto"] = incoming.get("X-Forwarded-Proto", scheme)
        forwarded_host = incoming.get("X-Forwarded-Host", host)
        if forwarded_host:
            out["X-Forwarded-Host"] = forwarded_host
        out["Forwarded"] = ", ".join((*prior_fwd, element))
    else:
        out["X-Forwarded-For"] = client_ip
        out["X-Forwarded-Proto"] = scheme
        if host:
            out["X-Forwarded-Host"] = host
        out["Forwarded"] = element
    if add:
        for name, value in add.items():
            out[name] = value
    return out


def expose_x402_headers(headers: CIMultiDict[str]) -> None:
    """Let browser code read the x402 headers: merge them into Access-Control-Expose-Headers.

    The origin's own exposed names are kept, in order; no name is listed twice.
    """
    if EXPOSE not in headers:  # the origin exposes nothing of its own: the x402 list as is
        headers[EXPOSE] = _X402_EXPOSED_LIST
        return
    listed: list[str] = []
    seen: set[str] = set()
    for value in headers.popall(EXPOSE, ()):
        for token in value.split(","):
            name = token.strip()
            if name and name.lower() not in seen:
                seen.add(name.lower())
                listed.append(name)
    for name in X402_EXPOSED:
        if name.lower() not in seen:
            seen.add(name.lower())
            listed.append(name)
    headers[EXPOSE] = ", ".join(listed)


def strip_cdn_directives(headers: CIMultiDict[str]) -> None:
    """Remove every CDN cache directive (a paid answer must not be cached for others)."""
    # Every paid answer passes here and an origin rarely sends one: all the names looked at
    # first in one pass of C calls (the per-name test below is three calls a header).
    if _ANY_CDN_DIRECTIVE.search("\n".join(headers).lower().replace("_", "-")) is None:
        return
    # `fold` inlined (C string methods, no Python call per header): a paid answer's every
    # header passes here.
    doomed = {
        name
        for name in headers
        if (folded := name.lower().replace("_", "-")) in CDN_DIRECTIVES
        or folded.endswith(_TARGETED_CDN_SUFFIX)
    }
    for name in doomed:
        headers.popall(name, None)


def add_vary(headers: CIMultiDict[str], name: str) -> None:
    """List `name` in `Vary` (merged with what is there, once)."""
    listed = [t.strip() for v in headers.popall("Vary", ()) for t in v.split(",") if t.strip()]
    if "*" not in listed and name.lower() not in {t.lower() for t in listed}:
        listed.append(name)
    headers["Vary"] = ", ".join(listed)
