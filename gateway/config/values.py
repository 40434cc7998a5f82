"""Pure parsers for the config file's scalar values: text in, typed value out.

Each raises `ValueError` with a message meant for the person editing the file; the caller
(gateway.config.reader) prefixes it with `file:line key.path:`. None of them echoes a value that may
be a secret (private keys, header values, URL credentials).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from decimal import Decimal
from urllib.parse import SplitResult, urlsplit

from gateway.config.settings import Address
from gateway.formats import parse_evm_address, parse_token, quote
from gateway.proxy.paths import check_pattern
from gateway.store.redis_url import parse_redis_url

_VAR = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([A-Za-z]*)")
_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}
_HEX_KEY = re.compile(r"0x[0-9a-fA-F]{64}")
_STORE_SCHEMES = ("redis", "rediss", "redis+sentinel", "unix")
# Headers the gateway itself reads or must own: a payer header with one of these names
# would let a client's header through, or clobber the payment protocol.
_RESERVED_HEADERS = frozenset(
    {
        "payment-signature",
        "payment-required",
        "payment-response",
        "x-payment",
        "x-payment-response",
        "host",
        "connection",
        "content-length",
        "transfer-encoding",
        "authorization",
        "cookie",
        "forwarded",
        "x-forwarded-for",
    }
)


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """Expand `${NAME}` and `${NAME:-default}`; `$$` is a literal `$`, any other `$` stays.

    `${NAME:-default}` uses the default when NAME is unset or empty, as a shell does.
    """
    out: list[str] = []
    i = 0
    while i < len(text):
        dollar = text.find("$", i)
        if dollar < 0:
            out.append(text[i:])
            break
        out.append(text[i:dollar])
        nxt = text[dollar + 1 : dollar + 2]
        if nxt == "$":
            out.append("$")
            i = dollar + 2
        elif nxt == "{":
            end = text.find("}", dollar)
            if end < 0:
                raise ValueError("unterminated ${...}; write $$ for a literal $")
            body = text[dollar + 2 : end]
            name, sep, default = body.partition(":-")
            if not _VAR.fullmatch(name):
                raise ValueError(
                    f"{quote('${' + body + '}')} is not a variable reference; "
                    "write ${NAME} or ${NAME:-default}"
                )
            value = env.get(name)
            if sep and not value:
                value = default
            if value is None:
                raise ValueError(
                    f"environment variable {name} is not set "
                    f"(set it, or give a default: ${{{name}:-...}})"
                )
            out.append(value)
            i = end + 1
        else:
            out.append("$")
            i = dollar + 1
    return "".join(out)


def parse_size(text: str) -> int:
    """`10MiB`, `512KiB`, `1GB`, `1.5MiB` or a plain number of bytes."""
    text = text.strip()
    if text.startswith("-"):
        raise ValueError(f"{quote(text)} is negative; a size must be positive")
    match = _SIZE.fullmatch(text)
    unit = match.group(2).lower() if match else ""
    if match is None or unit not in _SIZE_UNITS:
        raise ValueError(f"{quote(text)} is not a size; write e.g. 10MiB, 512KiB, 1GB or 65536")
    size = Decimal(match.group(1)) * _SIZE_UNITS[unit]
    if size != size.to_integral_value():
        raise ValueError(f"{quote(text)} is not a whole number of bytes")
    if size == 0:
        raise ValueError("must be more than 0")
    return int(size)


def parse_listen(text: str) -> Address:
    """`host:port` or `[v6]:port`."""
    example = "write host:port, e.g. 0.0.0.0:8402 or [::1]:8402"
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
        if not sep:
            raise ValueError(f"{quote(text)} is not an address; {example}")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{quote(host)} is not an IPv6 address") from None
    else:
        host, sep, port = text.rpartition(":")
        if not sep or not host:
            raise ValueError(f"{quote(text)} is not an address; {example}")
        if ":" in host:
            raise ValueError(f"{quote(text)}: put an IPv6 host in brackets, e.g. [::1]:8402")
        if not re.fullmatch(r"[A-Za-z0-9.\-_]+", host):
            raise ValueError(f"{quote(host)} is not a host name or IP address")
    if not port.isdigit() or int(port) > 65535:
        raise ValueError(f"{quote(port)} is not a port (0-65535)")
    return Address(host, int(port))


def parse_url(text: str, *, allow_path: bool, what: str = "URL", echo: bool = True) -> str:
    """An http(s) URL without query, fragment or credentials; returned without trailing `/`.

    `echo=False` for URLs that may embed an API key (RPC endpoints): the value is not shown.
    """
    shown = quote(text) if echo else "the value"
    parts = _http_parts(text, shown, what)
    _refuse_secrets(text, parts, what, echo=echo)
    if not allow_path and parts.path not in ("", "/"):
        raise ValueError(
            f"{shown} has a path ({parts.path}); the gateway forwards the exact request path, "
            "so give only scheme://host:port (route the prefix in the origin instead)"
        )
    return text.rstrip("/")


def _http_parts(text: str, shown: str, what: str) -> SplitResult:
    try:
        parts: SplitResult = urlsplit(text)
        _ = parts.port  # raises on a port that is not a number in range
    except ValueError:
        raise ValueError(f"{shown} is not a valid {what}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{shown} is not an http(s) {what}; write e.g. http://127.0.0.1:8080")
    return parts


def _refuse_secrets(text: str, parts: SplitResult, what: str, *, echo: bool) -> None:
    """Credentials and queries are where secrets hide: neither belongs in a URL setting."""
    if parts.username is not None or parts.password is not None:
        raise ValueError(
            f"{what} must not carry credentials (user:password@); "
            "use facilitator headers or the origin's own auth"
        )
    if parts.query or parts.fragment or text.endswith(("?", "#")):
        # The query is not shown: it is where API keys tend to hide.
        cut = re.split(r"[?#]", text, maxsplit=1)[0] + "?..."
        where = quote(cut) if echo else "the value"
        raise ValueError(f"{where}: a {what} cannot have a query (?) or fragment (#)")


def parse_origin(text: str) -> str:
    """An origin: scheme://host:port, no path (the request path is forwarded as is)."""
    return parse_url(text, allow_path=False)


def parse_http_url(text: str) -> str:
    """An http(s) URL that may have a path (a facilitator, the public URL)."""
    return parse_url(text, allow_path=True)


def parse_pay_to(text: str) -> str:
    address = parse_evm_address(text)
    if int(address, 16) == 0:
        raise ValueError("is the zero address: payments to it are burned")
    return address


def parse_private_key(text: str) -> str:
    if not _HEX_KEY.fullmatch(text):
        raise ValueError("is not a private key (expected 0x followed by 64 hex digits)")
    return text


def parse_payer_header(text: str) -> str:
    parse_token(text, "header name")
    if text.lower() in _RESERVED_HEADERS:
        raise ValueError(f"{quote(text)} is a header the gateway or HTTP already uses")
    return text


def parse_header_value(text: str) -> str:
    """No CR, LF or NUL (header injection). The value itself is never shown."""
    if any(c in text for c in "\r\n\0"):
        raise ValueError("header value contains a line break or NUL")
    return text


def parse_store(text: str) -> str:
    if text == "memory":
        return text
    scheme, sep, rest = text.partition("://")
    if not sep or scheme not in _STORE_SCHEMES or not rest:
        # Redis URLs may carry a password: name the scheme, never the URL.
        raise ValueError(
            "is not a store; write memory, or a redis://, rediss://, redis+sentinel:// "
            "or unix:// URL"
        )
    parse_redis_url(text)  # Sentinel and Cluster forms are checked here, not at start-up
    return text


def parse_path_pattern(text: str) -> str:
    """A route path: exact, or ending in `/*` (the prefix and everything below it)."""
    message = _pattern_text_problem(text)
    # The pattern must be in the same canonical form requests are matched in, or it could
    # never match (or match something else than the operator wrote).
    if message is None and (problem := check_pattern(text)):
        message = f"{quote(text)}: {problem}"
    if message is not None:
        raise ValueError(message)
    return text


def _pattern_text_problem(text: str) -> str | None:
    """What is wrong with a route path's characters, as the message for the operator."""
    if not text.startswith("/"):
        return f"{quote(text)} must start with /"
    for bad, why in (("?", "a query (?)"), ("#", "a fragment (#)"), ("\\", "a backslash")):
        if bad in text:
            return f"{quote(text)} contains {why}; route on the path only"
    if "%2f" in text.lower() or "%5c" in text.lower():
        return f"{quote(text)} contains an encoded slash (%2F or %5C)"
    if any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in text):
        return f"{quote(text)} contains whitespace or a control character"
    if "*" in text.removesuffix("/*"):
        return (
            f"{quote(text)}: * is only allowed as the last segment (/prefix/*, meaning the "
            "prefix and everything below it)"
        )
    return None
