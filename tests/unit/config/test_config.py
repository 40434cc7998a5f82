"""gateway.config: YAML -> Settings, every error with its file:line and key path."""

from __future__ import annotations

import ipaddress
import textwrap
from decimal import Decimal
from pathlib import Path

import pytest
from eth_utils.address import to_checksum_address

from gateway import config
from gateway.config import document
from gateway.config.settings import (
    Address,
    AssetSpec,
    Limits,
    LocalFacilitatorSettings,
    RemoteFacilitatorSettings,
    Settings,
    Timeouts,
)
from gateway.errors import ConfigError
from gateway.formats import format_price

PAY_TO = "0x209693Bc6afc0C5328bA36FaF03C514EF312287C"
BASE_SEPOLIA_USDC = "0x036CbD53842c5426634e7929541eC2318f3dCF7e"
SECRET_KEY = "0x" + "ab" * 32
SECRET_TOKEN = "tok-SUPERSECRET-123"
MARK = "# <-"

TOP = {
    "upstream": "http://127.0.0.1:8080",
    "facilitator": "{url: http://127.0.0.1:9000}",
    "pay_to": f'"{PAY_TO.lower()}"',
}
ROUTES = 'routes:\n  - path: /paid\n    price: "$0.001"\n'


def text_with(routes: str = ROUTES, **top: str | None) -> str:
    """The base config with top-level keys replaced (None: removed) or added, in order."""
    items = {**TOP, **top}
    lines = [f"{k}: {v}" for k, v in items.items() if v is not None]
    return "\n".join(lines) + "\n" + routes


def with_route(route: str) -> str:
    """The base config plus one more route, given as the YAML of one list item."""
    first, *rest = textwrap.dedent(route).strip().splitlines()
    item = "".join(f"    {line}\n" for line in rest)
    return text_with(ROUTES + f"  - {first}\n" + item)


def loads(text: str, env: dict[str, str] | None = None) -> Settings:
    return config.loads(text, "gateway.yaml", env or {})


def errors(text: str, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        loads(text, env)
    return caught.value.errors


def marked_line(text: str) -> int:
    """The 1-based line carrying the `# <-` marker."""
    return next(i for i, line in enumerate(text.splitlines(), 1) if MARK in line)


def test_the_base_config_loads() -> None:
    settings = loads(text_with())
    assert settings.upstream == "http://127.0.0.1:8080"
    assert settings.routes[0].accepts[0].amount == 1000


# --- one test per error message: (config text with the line marked, key path, message) --------

TOP_LEVEL_CASES = [
    (
        text_with(listen=f"8402 {MARK}"),
        "listen",
        '"8402" is not an address; write host:port, e.g. 0.0.0.0:8402 or [::1]:8402',
    ),
    (
        text_with(listen=f'"::1:80" {MARK}'),
        "listen",
        '"::1:80": put an IPv6 host in brackets, e.g. [::1]:8402',
    ),
    (text_with(listen=f'"[::zz]:80" {MARK}'), "listen", '"::zz" is not an IPv6 address'),
    (text_with(listen=f"0.0.0.0:99999 {MARK}"), "listen", '"99999" is not a port (0-65535)'),
    (text_with(listen=f'"a b:80" {MARK}'), "listen", '"a b" is not a host name or IP address'),
    (
        text_with(listen="127.0.0.1:9402", admin=f"127.0.0.1:9402 {MARK}"),
        "admin",
        "same address as listen (127.0.0.1:9402)",
    ),
    (
        text_with(upstream=f"http://127.0.0.1:8080/api {MARK}"),
        "upstream",
        '"http://127.0.0.1:8080/api" has a path (/api); the gateway forwards the exact request '
        "path, so give only scheme://host:port (route the prefix in the origin instead)",
    ),
    (
        text_with(upstream=f"http://127.0.0.1:8080/?a=1 {MARK}"),
        "upstream",
        '"http://127.0.0.1:8080/?...": a URL cannot have a query (?) or fragment (#)',
    ),
    (
        text_with(upstream=f"ftp://files {MARK}"),
        "upstream",
        '"ftp://files" is not an http(s) URL; write e.g. http://127.0.0.1:8080',
    ),
    (
        text_with(upstream=f"http://127.0.0.1:port {MARK}"),
        "upstream",
        '"http://127.0.0.1:port" is not a valid URL',
    ),
    (
        text_with(upstream=f"http://u:pw@origin {MARK}"),
        "upstream",
        "URL must not carry credentials (user:password@); use facilitator headers or the "
        "origin's own auth",
    ),
    (text_with(upstream=f"{MARK}"), "upstream", "is empty; a value is required"),
    (
        f"facilitator: {{url: http://f}} {MARK}\n" + ROUTES.replace('"$0.001"', "free"),
        "upstream",
        "required",
    ),
    (text_with(upstream=f"http://o {MARK}", routes=""), "routes", "required"),
    (text_with(routes=f"routes: [] {MARK}\n"), "routes", "must list at least one route"),
    (text_with(routes=f"routes: {{}} {MARK}\n"), "routes", "must be a list"),
    (
        text_with(facilitator=f"{{url: http://f, local: {{rpc_url: http://n}}}} {MARK}"),
        "facilitator",
        "give either url (a remote facilitator) or local (in-process)",
    ),
    (text_with(facilitator=f"[] {MARK}"), "facilitator", "is an empty list"),
    (
        text_with(facilitator=f"{{local: {{rpc_url: http://n}}}} {MARK}"),
        "facilitator.local.private_key",
        "required (or keys: a list of settler keys)",
    ),
    (
        text_with(facilitator=f'{{local: {{rpc_url: http://n, private_key: "0x12"}}}} {MARK}'),
        "facilitator.local.private_key",
        "is not a private key (expected 0x followed by 64 hex digits)",
    ),
    (
        text_with(
            facilitator=f"{{local: {{rpc_url: ws://n/KEY, private_key: {SECRET_KEY}}}}} {MARK}"
        ),
        "facilitator.local.rpc_url",
        "the value is not an http(s) RPC URL; write e.g. http://127.0.0.1:8080",
    ),
    (
        text_with(
            facilitator=f"{{local: {{rpc_url: http://n, private_key: {SECRET_KEY}}}, "
            f"headers: {{A: b}}}} {MARK}"
        ),
        "facilitator.headers",
        "only for a remote facilitator (url)",
    ),
    (
        text_with(facilitator=f'{{url: http://f, headers: {{"Bad Name": x}}}} {MARK}'),
        "facilitator.headers.Bad Name",
        '"Bad Name" is not a valid header name',
    ),
    (
        text_with(facilitator=f'{{url: http://f, headers: {{A: "x\\r\\nB: y"}}}} {MARK}'),
        "facilitator.headers.A",
        "header value contains a line break or NUL",
    ),
    (
        text_with(network=f"base-sepolai {MARK}"),
        "network",
        '"base-sepolai" is not a known network name; did you mean "base-sepolia"? '
        "(or write eip155:<chain id>)",
    ),
    (
        text_with(network=f"solana:5eykt4UsFv8P8NJdTREpY1vzqKqZKvdp {MARK}"),
        "network",
        '"solana:5eykt4UsFv8P8NJdTREpY1vzqKqZKvdp" is not a supported network; write '
        "eip155:<chain id>, e.g. eip155:84532 (only EVM networks are supported)",
    ),
    (
        text_with(pay_to=f'"{PAY_TO[:-1]}c" {MARK}'),
        "pay_to",
        f'"{PAY_TO[:-1]}c" has a bad checksum (mixed case that does not match EIP-55); check it '
        "for a typo, or write it all lower-case",
    ),
    (
        text_with(pay_to=f"nobody {MARK}"),
        "pay_to",
        '"nobody" is not an address (0x followed by 40 hex digits)',
    ),
    (
        text_with(pay_to=f'"0x{"0" * 40}" {MARK}'),
        "pay_to",
        "is the zero address: payments to it are burned",
    ),
    (
        text_with(asset=f"{{address: '{BASE_SEPOLIA_USDC}', name: USDC, version: '2'}} {MARK}"),
        "asset.decimals",
        "required (an asset needs address, name, version, decimals)",
    ),
    (
        text_with(
            asset=f"{{address: '{BASE_SEPOLIA_USDC}', name: USDC, version: '2', "
            f"decimals: 99}} {MARK}"
        ),
        "asset.decimals",
        '"99" is not a number of decimals (0-36)',
    ),
    (
        text_with(
            asset=f"{{address: '{BASE_SEPOLIA_USDC}', name: '', version: '2', decimals: 6}} {MARK}"
        ),
        "asset.name",
        "must not be empty",
    ),
    (
        text_with(store=f"mysql://db {MARK}"),
        "store",
        "is not a store; write memory, or a redis://, rediss://, redis+sentinel:// or unix:// URL",
    ),
    (
        text_with(payer_header=f"PAYMENT-SIGNATURE {MARK}"),
        "payer_header",
        '"PAYMENT-SIGNATURE" is a header the gateway or HTTP already uses',
    ),
    (
        text_with(payer_header=f'"X Payer" {MARK}'),
        "payer_header",
        '"X Payer" is not a valid header name',
    ),
    (
        text_with(timeouts=f"{{conect: 3s}} {MARK}"),
        "timeouts.conect",
        'unknown key; did you mean "connect"?',
    ),
    (
        text_with(timeouts=f"{{read: fast}} {MARK}"),
        "timeouts.read",
        '"fast" is not a duration; write e.g. 10s, 250ms, 1m or 1.5',
    ),
    (
        text_with(timeouts=f"{{read: -1s}} {MARK}"),
        "timeouts.read",
        '"-1s" is negative; a duration must be positive',
    ),
    (text_with(timeouts=f"{{read: 0s}} {MARK}"), "timeouts.read", "must be more than 0"),
    (text_with(timeouts=f"[1, 2] {MARK}"), "timeouts", "must be a mapping (key: value lines)"),
    (
        text_with(limits=f"{{header_size: 10 parsecs}} {MARK}"),
        "limits.header_size",
        '"10 parsecs" is not a size; write e.g. 10MiB, 512KiB, 1GB or 65536',
    ),
    (
        text_with(limits=f"{{header_size: 1.5B}} {MARK}"),
        "limits.header_size",
        '"1.5B" is not a whole number of bytes',
    ),
    (
        text_with(limits=f"{{header_size: -5}} {MARK}"),
        "limits.header_size",
        '"-5" is negative; a size must be positive',
    ),
    (
        text_with(limits=f"{{payment_header: 0}} {MARK}"),
        "limits.payment_header",
        "must be more than 0",
    ),
    (
        text_with(limits=f"{{connections: 0}} {MARK}"),
        "limits.connections",
        "0 must be 1 or more",
    ),
    (
        text_with(limits=f"{{connections: many}} {MARK}"),
        "limits.connections",
        '"many" is not a whole number',
    ),
    (
        text_with(trusted_proxies=f"[10.0.0.1/8] {MARK}"),
        "trusted_proxies[0]",
        '"10.0.0.1/8" is not an IP address or CIDR (10.0.0.1/8 has host bits set)',
    ),
    (text_with(trusted_proxies=f"10.0.0.1 {MARK}"), "trusted_proxies", "must be a list"),
    (
        text_with(public_url=f"https://api.example.com/#top {MARK}"),
        "public_url",
        '"https://api.example.com/?...": a URL cannot have a query (?) or fragment (#)',
    ),
    (
        text_with(case_insensitive_paths=f"maybe {MARK}"),
        "case_insensitive_paths",
        '"maybe" is not true or false',
    ),
    (
        text_with(log_level=f"warn {MARK}"),
        "log_level",
        '"warn" is not allowed; did you mean "warning"?',
    ),
    (
        text_with(workers=f"4 {MARK}"),
        "workers",
        "4 needs a shared store (redis://...); store: memory is per process",
    ),
    (
        text_with(listn=f"0.0.0.0:1 {MARK}"),
        "listn",
        'unknown key; did you mean "listen"?',
    ),
    (
        text_with(zzzz=f"1 {MARK}"),
        "zzzz",
        "unknown key; expected one of: " + ", ".join(sorted(document.TOP_LEVEL_KEYS)),
    ),
    (
        text_with() + f"upstream: http://other {MARK}\n",
        "upstream",
        "duplicate key (first at line 1)",
    ),
    (
        text_with(listen=f"${{NOPE}} {MARK}"),
        "listen",
        "environment variable NOPE is not set (set it, or give a default: ${NOPE:-...})",
    ),
    (
        text_with(listen=f"${{1X}} {MARK}"),
        "listen",
        '"${1X}" is not a variable reference; write ${NAME} or ${NAME:-default}',
    ),
    (text_with(listen=f"${{X {MARK}"), "listen", "unterminated ${...}; write $$ for a literal $"),
    (text_with(listen=f"[a] {MARK}"), "listen", "must be a single value, not a list or mapping"),
    (
        text_with(timeouts="&b {connect: 1s}", limits=f"{{<<: *b}} {MARK}"),
        "limits",
        "YAML merge keys (<<) are not supported",
    ),
    (
        text_with(listen=f"!!binary aGVsbG8= {MARK}"),
        "listen",
        '"aGVsbG8=" is not an address; write host:port, e.g. 0.0.0.0:8402 or [::1]:8402',
    ),
    (
        text_with(listen=f"!custom x {MARK}"),
        "listen",
        "cannot read this value (could not determine a constructor for the tag '!custom')",
    ),
    (f"- just a list {MARK}\n", "(top level)", "must be a mapping (key: value lines)"),
    (text_with(**{"[a, b]": f"1 {MARK}"}), "(top level)", "a key must be a plain name"),
]


ROUTE_CASES = [
    (with_route(f"methods: [GET] {MARK}\nprice: free"), "routes[1].path", "required"),
    (with_route(f"path: v1 {MARK}\nprice: free"), "routes[1].path", '"v1" must start with /'),
    (
        with_route(f"path: /a/*/b {MARK}\nprice: free"),
        "routes[1].path",
        '"/a/*/b": * is only allowed as the last segment (/prefix/*, meaning the prefix and '
        "everything below it)",
    ),
    (
        with_route(f"path: /a* {MARK}\nprice: free"),
        "routes[1].path",
        '"/a*": * is only allowed as the last segment (/prefix/*, meaning the prefix and '
        "everything below it)",
    ),
    (
        with_route(f'path: "/a?b=1" {MARK}\nprice: free'),
        "routes[1].path",
        '"/a?b=1" contains a query (?); route on the path only',
    ),
    (
        with_route(f'path: "/a#b" {MARK}\nprice: free'),
        "routes[1].path",
        '"/a#b" contains a fragment (#); route on the path only',
    ),
    (
        with_route(f"path: '/a\\b' {MARK}\nprice: free"),
        "routes[1].path",
        '"/a\\b" contains a backslash; route on the path only',
    ),
    (
        with_route(f"path: /a%2Fb {MARK}\nprice: free"),
        "routes[1].path",
        '"/a%2Fb" contains an encoded slash (%2F or %5C)',
    ),
    (
        with_route(f'path: "/a b" {MARK}\nprice: free'),
        "routes[1].path",
        '"/a b" contains whitespace or a control character',
    ),
    (
        with_route(f"path: /paid {MARK}\nprice: free"),
        "routes[1].path",
        "same path and methods as routes[0] (line 5); that one always wins",
    ),
    (
        with_route(f"path: /x\nmethods: [] {MARK}\nprice: free"),
        "routes[1].methods",
        "is empty; leave methods out to allow every method",
    ),
    (
        with_route(f'path: /x\nmethods: ["GE T"] {MARK}\nprice: free'),
        "routes[1].methods[0]",
        '"GE T" is not a valid HTTP method',
    ),
    (
        with_route(f'path: /x\nprice: "0.001$" {MARK}'),
        "routes[1].price",
        '"0.001$" is not a price; write "$0.001"',
    ),
    (
        with_route(f"path: /x\nprice: 0.001 {MARK}"),
        "routes[1].price",
        '"0.001" is not a price; write "$0.001"',
    ),
    (
        with_route(f"path: /x\nprice: lots {MARK}"),
        "routes[1].price",
        '"lots" is not a price; write "$0.001" or free',
    ),
    (
        with_route(f'path: /x\nprice: "$0" {MARK}'),
        "routes[1].price",
        '"$0" is zero; write free for a route without charge',
    ),
    (
        with_route(f'path: /x\nprice: "$-1" {MARK}'),
        "routes[1].price",
        '"$-1" is negative; a price must be more than $0',
    ),
    (
        with_route(f'path: /x\nprice: "$0.0000001" {MARK}'),
        "routes[1].price",
        '"$0.0000001" is finer than USDC allows (6 decimals; the smallest price is $0.000001)',
    ),
    (
        with_route(f'path: /x\nprice: "${"1" * 41}" {MARK}'),
        "routes[1].price",
        "is too long to be a price",
    ),
    (
        with_route(f"path: /x {MARK}"),
        "routes[1].price",
        'required: a price ("$0.001"), free, or accepts: [...]',
    ),
    (
        with_route(f'path: /x\nprice: "$1"\naccepts: [{{amount: 1}}] {MARK}'),
        "routes[1].accepts",
        "give price or accepts, not both",
    ),
    (
        text_with(network="eip155:999999").replace('price: "$0.001"', f'price: "$0.001" {MARK}'),
        "routes[0].price",
        "no default stablecoin is known for eip155:999999; add a top-level asset: "
        "{address, name, version, decimals}, or use accepts with an asset and an amount in "
        "atomic units",
    ),
    (
        text_with(pay_to=None).replace('price: "$0.001"', f'price: "$0.001" {MARK}'),
        "routes[0].price",
        "a priced route needs pay_to; set pay_to at the top level",
    ),
    (
        with_route(f"path: /x\naccepts: [] {MARK}"),
        "routes[1].accepts",
        "is empty; for a route without charge write price: free",
    ),
    (
        with_route(f"path: /x\naccepts: [{{scheme: exact}}] {MARK}"),
        "routes[1].accepts[0].amount",
        'required: atomic units ("1000") or dollars ("$0.001")',
    ),
    (
        with_route(f"path: /x\naccepts: [{{amount: 0}}] {MARK}"),
        "routes[1].accepts[0].amount",
        "is 0; write price: free for a route without charge",
    ),
    (
        with_route(f"path: /x\naccepts: [{{amount: 1e3}}] {MARK}"),
        "routes[1].accepts[0].amount",
        '"1e3" is not an amount; write atomic units ("1000") or dollars ("$0.001")',
    ),
    (
        with_route(f"path: /x\naccepts: [{{amount: 5, asset: '0x{'1' * 40}'}}] {MARK}"),
        "routes[1].accepts[0].extra",
        f"token 0x{'1' * 40} is not known on eip155:84532; give extra: {{name, version}} "
        "(its EIP-712 domain, which payers sign)",
    ),
    (
        with_route(
            f"path: /x\naccepts: [{{amount: '$1', asset: '0x{'1' * 40}', extra: {{name: T}}}}] "
            f"{MARK}"
        ),
        "routes[1].accepts[0].amount",
        f'cannot convert "$1": the decimals of token 0x{"1" * 40} are unknown; give the amount '
        "in atomic units",
    ),
    (
        with_route(f"path: /x\naccepts: [{{amount: 5, network: eip155:999999}}] {MARK}"),
        "routes[1].accepts[0].asset",
        "required: no default stablecoin is known for eip155:999999",
    ),
    (
        with_route(f"path: /x\naccepts: [{{amount: 5, extra: [1]}}] {MARK}"),
        "routes[1].accepts[0].extra",
        "must be a mapping, e.g. {name: USD Coin, version: '2'}",
    ),
    (
        with_route(f"path: /x\naccepts: [{{amount: 5, scheme: upto}}] {MARK}"),
        "routes[1].accepts[0].scheme",
        '"upto" is not allowed; expected one of: exact',
    ),
    (
        with_route(f"path: /x\naccepts: [{{amount: 5, max_timeout_seconds: 0}}] {MARK}"),
        "routes[1].accepts[0].max_timeout_seconds",
        "0 must be 1 or more",
    ),
    (
        with_route(f"path: /x\naccepts: [{{amount: 5, amont: 5}}] {MARK}"),
        "routes[1].accepts[0].amont",
        'unknown key; did you mean "amount"?',
    ),
    (
        text_with(
            pay_to=None, routes=f"routes:\n  - {{path: /x, accepts: [{{amount: 5}}]}} {MARK}\n"
        ),
        "routes[0].accepts[0].pay_to",
        "required (here, or pay_to at the top level)",
    ),
    (
        with_route(f"path: /x\nprice: free\nmime_type: json {MARK}"),
        "routes[1].mime_type",
        '"json" is not a media type; write e.g. application/json',
    ),
    (
        with_route(f"path: /x\nprice: free\nsettle: later {MARK}"),
        "routes[1].settle",
        '"later" is not allowed; did you mean "after"?',
    ),
    (
        with_route(f"path: /x\nprice: free\nupstream: http://o:1/v1 {MARK}"),
        "routes[1].upstream",
        '"http://o:1/v1" has a path (/v1); the gateway forwards the exact request path, so give '
        "only scheme://host:port (route the prefix in the origin instead)",
    ),
    (
        with_route(f"path: /x\nprice: free\nprize: free {MARK}"),
        "routes[1].prize",
        'unknown key; did you mean "price"?',
    ),
    (
        text_with(routes=f"routes: [5] {MARK}\n"),
        "routes[0]",
        "must be a mapping (key: value lines)",
    ),
    (
        with_route(f"path: /x\naccepts: [{{amount: 5, extra: &x {{a: *x}}}}] {MARK}"),
        "routes[1].accepts[0].extra" + ".a" * 17,
        "nested more than 16 levels deep",
    ),
    (
        with_route(f'path: /x\nprice: "$1,000" {MARK}'),
        "routes[1].price",
        '"$1,000" is not a price; write "$1000"',
    ),
]


def _case_id(case: tuple[str, str, str]) -> str:
    return f"{case[1]}: {case[2][:40]}"


@pytest.mark.parametrize("case", TOP_LEVEL_CASES + ROUTE_CASES, ids=_case_id)
def test_each_error_message(case: tuple[str, str, str]) -> None:
    text, path, message = case
    assert errors(text) == [f"gateway.yaml:{marked_line(text)} {path}: {message}"]


def test_a_missing_facilitator_is_reported_on_the_first_line() -> None:
    text = text_with(facilitator=None)
    assert errors(text) == [
        "gateway.yaml:1 facilitator: priced routes need a facilitator; add e.g. "
        "facilitator: {url: https://x402.org/facilitator}"
    ]


def test_free_routes_need_no_facilitator() -> None:
    settings = loads(text_with(facilitator=None, routes="routes: [{path: /, price: free}]\n"))
    assert settings.facilitators == ()


def test_yaml_syntax_error_is_one_error_with_its_line() -> None:
    text = text_with(timeouts="{connect: 1s") + "listen: x\n"
    found = errors(text)
    assert len(found) == 1
    assert found[0].startswith("gateway.yaml:")
    assert "YAML syntax error" in found[0]
    line = int(found[0].split(":")[1])
    assert line >= 4


def test_yaml_syntax_error_does_not_quote_the_line() -> None:
    text = (
        f'upstream: http://o\nfacilitator: {{url: http://f, headers: {{A: "{SECRET_TOKEN}"}}}}}}\n'
    )
    found = errors(text)
    assert len(found) == 1
    assert SECRET_TOKEN not in found[0]


def test_control_character_is_a_syntax_error_with_its_line() -> None:
    text = text_with(listen="a\x07b")
    assert errors(text) == [
        "gateway.yaml:4: YAML syntax error: a control character is not allowed here"
    ]


def test_empty_file() -> None:
    assert errors("# nothing\n") == [
        "gateway.yaml:1: the file is empty; upstream and routes are required"
    ]


# --- many errors at once -----------------------------------------------------------------


def test_every_error_is_reported_together_in_file_order() -> None:
    text = textwrap.dedent(
        """\
        upstream: ftp://origin
        facilitator: {url: http://f}
        pay_to: "0x209693bc6afc0c5328ba36faf03c514ef312287c"
        timeouts: {conect: 1s, read: soon}
        workers: 0
        routes:
          - path: nope
            price: "0.5$"
          - path: /ok
            price: free
            settle: sometime
        """
    )
    found = errors(text)
    assert [e.split(" ")[0] for e in found] == [
        "gateway.yaml:1",
        "gateway.yaml:4",
        "gateway.yaml:4",
        "gateway.yaml:5",
        "gateway.yaml:7",
        "gateway.yaml:8",
        "gateway.yaml:11",
    ]
    joined = "\n".join(found)
    for path in (
        "upstream:",
        "timeouts.conect:",
        "timeouts.read:",
        "workers:",
        "routes[0].path:",
        "routes[0].price:",
        "routes[1].settle:",
    ):
        assert f" {path} " in joined
    with pytest.raises(ConfigError) as caught:
        loads(text)
    assert str(caught.value) == joined


def test_a_bad_top_level_pay_to_is_not_reported_again_for_every_route() -> None:
    text = text_with(pay_to='"0xnope"')
    assert len(errors(text)) == 1


# --- line numbers --------------------------------------------------------------------------


def test_route_source_and_index() -> None:
    text = text_with(
        routes='routes:\n  - path: /a\n    price: free\n\n  - {path: /b, price: "$1"}\n'
    )
    routes = loads(text).routes
    assert [(r.index, r.path, r.source.line if r.source else 0) for r in routes] == [
        (0, "/a", 5),
        (1, "/b", 8),
    ]
    assert routes[0].source is not None and routes[0].source.file == "gateway.yaml"


def test_errors_in_block_style_point_at_the_value_line() -> None:
    text = textwrap.dedent(
        """\
        upstream: http://o
        timeouts:
          connect: 1s

          read: forever
        routes: [{path: /, price: free}]
        """
    )
    assert errors(text) == [
        'gateway.yaml:5 timeouts.read: "forever" is not a duration; '
        "write e.g. 10s, 250ms, 1m or 1.5"
    ]


# --- ${ENV} interpolation ---------------------------------------------------------------


def test_env_values_are_typed_after_expansion() -> None:
    text = text_with(workers="${WORKERS:-2}", store="${STORE}", server_timing="${TIMING:-true}")
    settings = loads(text, {"STORE": "redis://127.0.0.1:6379/0"})
    assert settings.workers == 2
    assert settings.store == "redis://127.0.0.1:6379/0"
    assert settings.server_timing is True


def test_env_default_is_used_when_unset_or_empty() -> None:
    text = text_with(listen="${HOST:-127.0.0.1}:${PORT:-8000}")
    assert loads(text, {"HOST": ""}).listen == Address("127.0.0.1", 8000)
    assert loads(text, {"PORT": "9"}).listen == Address("127.0.0.1", 9)


def test_env_set_but_empty_without_default_is_empty() -> None:
    text = text_with(listen='"${HOST}:80"')
    assert errors(text, {"HOST": ""}) == [
        'gateway.yaml:4 listen: ":80" is not an address; write host:port, e.g. 0.0.0.0:8402 '
        "or [::1]:8402"
    ]


def test_dollar_dollar_is_a_literal_dollar_and_prices_are_not_variables() -> None:
    text = text_with(
        facilitator='{url: http://f, headers: {A: "p$$w${X:-d}$${Y}"}}',
        routes='routes: [{path: /a, price: "$0.25", description: "costs $1 or $${more}"}]\n',
    )
    settings = loads(text)
    remote = settings.facilitators[0]
    assert isinstance(remote, RemoteFacilitatorSettings)
    assert dict(remote.headers) == {"A": "p$wd${Y}"}
    assert settings.routes[0].description == "costs $1 or ${more}"
    assert settings.routes[0].accepts[0].amount == 250_000


def test_env_defaults_to_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("X402_TEST_ORIGIN", "http://10.1.2.3:81")
    settings = config.loads(text_with(upstream="${X402_TEST_ORIGIN}"))
    assert settings.upstream == "http://10.1.2.3:81"


def test_quoted_env_values_stay_strings() -> None:
    text = text_with(routes='routes: [{path: /a, price: free, description: "${D}"}]\n')
    assert loads(text, {"D": "123"}).routes[0].description == "123"


def test_unset_variable_names_the_key_path() -> None:
    text = text_with(routes="routes:\n  - path: /a\n    price: free\n    upstream: ${ORIGIN_B}\n")
    assert errors(text) == [
        "gateway.yaml:7 routes[0].upstream: environment variable ORIGIN_B is not set "
        "(set it, or give a default: ${ORIGIN_B:-...})"
    ]


# --- durations, sizes, simple values ---------------------------------------------------------


@pytest.mark.parametrize(
    ("written", "seconds"),
    [
        ("10s", 10.0),
        ("250ms", 0.25),
        ("1m", 60.0),
        ("1.5s", 1.5),
        ("1m30s", 90.0),
        ("2h", 7200.0),
        ("2", 2.0),
        ("0.5", 0.5),
    ],
)
def test_durations(written: str, seconds: float) -> None:
    settings = loads(text_with(timeouts=f"{{connect: {written}, shutdown_grace: 0}}"))
    assert settings.timeouts.connect == seconds
    assert settings.timeouts.shutdown_grace == 0.0


@pytest.mark.parametrize(
    ("written", "size"),
    [
        ("10MiB", 10 * 1024 * 1024),
        ("512KiB", 512 * 1024),
        ("1GB", 10**9),
        ("1.5KiB", 1536),
        ("4096", 4096),
        ("10 mb", 10**7),
        ("7b", 7),
    ],
)
def test_sizes(written: str, size: int) -> None:
    settings = loads(text_with(limits=f"{{request_body: {written}, payment_header: {written}}}"))
    assert settings.limits.request_body == size
    assert settings.limits.payment_header == size


@pytest.mark.parametrize("written", ["null", "unlimited", "~"])
def test_unlimited_request_body(written: str) -> None:
    assert loads(text_with(limits=f"{{request_body: {written}}}")).limits.request_body is None


def test_defaults() -> None:
    settings = loads(text_with())
    assert settings.listen == Address("0.0.0.0", 8402)
    assert settings.admin == Address("127.0.0.1", 9402)
    assert settings.network == "eip155:84532"
    assert settings.store == "memory"
    assert settings.payer_header == "X-Payer"
    assert settings.timeouts == Timeouts()
    assert settings.limits == Limits()
    assert (settings.workers, settings.log_level, settings.public_url) == (1, "info", None)
    route = settings.routes[0]
    assert (route.methods, route.settle, route.mime_type, route.upstream) == (
        None,
        "after",
        "application/json",
        None,
    )


@pytest.mark.parametrize("written", ["off", "null", "false", "~", "OFF"])
def test_admin_can_be_disabled(written: str) -> None:
    assert loads(text_with(admin=written)).admin is None


def test_listen_forms_and_other_top_level_values() -> None:
    settings = loads(
        text_with(
            listen='"[::1]:0"',
            admin="localhost:9000",
            upstream="https://origin.internal:8443/",
            store="rediss://cache:6380/1",
            workers="3",
            payer_header="X-Paid-By",
            trusted_proxies='[10.0.0.0/8, "::1", 192.168.1.7]',
            public_url="https://api.example.com/base/",
            case_insensitive_paths="true",
            log_level="DEBUG",
        )
    )
    assert settings.listen == Address("::1", 0)
    assert str(settings.listen) == "[::1]:0"
    assert settings.admin == Address("localhost", 9000)
    assert settings.upstream == "https://origin.internal:8443"
    assert settings.store == "rediss://cache:6380/1"
    assert settings.workers == 3
    assert settings.payer_header == "X-Paid-By"
    assert settings.trusted_proxies == (
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("::1/128"),
        ipaddress.ip_network("192.168.1.7/32"),
    )
    assert settings.public_url == "https://api.example.com/base"
    assert settings.case_insensitive_paths is True
    assert settings.log_level == "debug"


def test_methods_are_uppercased_and_a_single_method_is_allowed() -> None:
    text = text_with(
        routes="routes:\n  - {path: /a, methods: [get, Post], price: free}\n"
        "  - {path: /b, methods: DELETE, price: free}\n"
    )
    routes = loads(text).routes
    assert routes[0].methods == frozenset({"GET", "POST"})
    assert routes[1].methods == frozenset({"DELETE"})


def test_same_path_with_other_methods_is_not_a_duplicate() -> None:
    text = text_with(
        routes="routes:\n  - {path: /a, methods: [GET], price: free}\n"
        '  - {path: /a, methods: [POST], price: "$1"}\n'
    )
    assert len(loads(text).routes) == 2


# --- prices ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("price", "atomic"),
    [
        ("$0.000001", 1),
        ("$1.1", 1_100_000),
        ("$0.001", 1000),
        ("$1", 1_000_000),
        ("$0.10", 100_000),
        ("$123456789.123456", 123_456_789_123_456),
    ],
)
def test_dollar_prices_are_exact(price: str, atomic: int) -> None:
    settings = loads(text_with(routes=f'routes: [{{path: /a, price: "{price}"}}]\n'))
    route = settings.routes[0]
    (req,) = route.accepts
    assert req.amount == atomic
    assert route.price_text == price
    assert Decimal(req.amount).scaleb(-6) == Decimal(price[1:])


def test_dollar_price_uses_the_networks_usdc_and_its_eip712_domain() -> None:
    (req,) = loads(text_with()).routes[0].accepts
    assert req.scheme == "exact"
    assert req.network == "eip155:84532"
    assert req.asset == BASE_SEPOLIA_USDC
    assert req.pay_to == PAY_TO
    assert req.max_timeout_seconds == 300
    assert dict(req.extra) == {"name": "USDC", "version": "2"}
    assert (req.decimals, req.symbol) == (6, "USDC")

    (main,) = loads(text_with(network="base")).routes[0].accepts
    assert main.network == "eip155:8453"
    assert main.asset == "0x833589fCD6eDb6E08f4c7C32D4f71b54bdA02913"
    assert dict(main.extra) == {"name": "USD Coin", "version": "2"}


def test_dollar_price_on_an_18_decimal_permit2_token() -> None:
    (req,) = loads(text_with(network="eip155:4326")).routes[0].accepts
    assert req.amount == 10**15
    assert (req.decimals, req.symbol) == (18, "MegaUSD")
    assert dict(req.extra) == {
        "name": "MegaUSD",
        "version": "1",
        "assetTransferMethod": "permit2",
    }


def test_configured_asset_is_used_for_dollar_prices() -> None:
    token = "0x5FbDB2315678afecb367f032d93F642f64180aa3"
    text = text_with(
        network="eip155:31337",
        asset=f'{{address: "{token.lower()}", name: Test Dollar, version: 3, decimals: 2, '
        "symbol: TD}",
        routes='routes: [{path: /a, price: "$1.25"}]\n',
    )
    settings = loads(text)
    assert settings.asset == AssetSpec(token, "Test Dollar", "3", 2, "TD")
    (req,) = settings.routes[0].accepts
    assert (req.asset, req.amount, req.decimals, req.symbol) == (token, 125, 2, "TD")
    assert dict(req.extra) == {"name": "Test Dollar", "version": "3"}
    assert errors(text.replace("$1.25", "$1.255")) == [
        'gateway.yaml:6 routes[0].price: "$1.255" is finer than TD allows (2 decimals; the '
        "smallest price is $0.01)"
    ]


def test_accepts_defaults_and_overrides() -> None:
    other = "0x70997970c51812dc3a010c7d01b886e0e0c6c30e"
    text = text_with(
        routes=textwrap.dedent(
            f"""\
            routes:
              - path: /a
                accepts:
                  - amount: 2500
                  - amount: "$0.02"
                    network: base
                    pay_to: "{other}"
                    max_timeout_seconds: 60
                    extra: {{memo: hi, version: "9"}}
                  - amount: "7"
                    asset: "0x{"2" * 40}"
                    extra: {{name: Other, version: "1"}}
            """
        )
    )
    route = loads(text).routes[0]
    first, second, third = route.accepts
    assert (first.scheme, first.network, first.asset, first.amount, first.pay_to) == (
        "exact",
        "eip155:84532",
        BASE_SEPOLIA_USDC,
        2500,
        PAY_TO,
    )
    assert first.max_timeout_seconds == 300
    assert dict(first.extra) == {"name": "USDC", "version": "2"}
    assert (second.network, second.amount, second.max_timeout_seconds) == ("eip155:8453", 20000, 60)
    assert second.pay_to == to_checksum_address(other)
    assert dict(second.extra) == {"name": "USD Coin", "version": "9", "memo": "hi"}
    assert (third.asset, third.amount) == ("0x" + "2" * 40, 7)
    assert dict(third.extra) == {"name": "Other", "version": "1"}
    assert route.price_text == "2500 or $0.02 or 7"
    assert format_price(third) == f"7 atomic units of token 0x{'2' * 40}"


def test_format_price() -> None:
    settings = loads(
        text_with(routes='routes: [{path: /a, price: "$0.001"}, {path: /b, price: "$12"}]\n')
    )
    assert [format_price(r.accepts[0]) for r in settings.routes] == [
        "$0.001 (1000 atomic units of USDC)",
        "$12 (12000000 atomic units of USDC)",
    ]


# --- networks, addresses, facilitators --------------------------------------------------------


@pytest.mark.parametrize(
    ("written", "caip2"),
    [
        ("base-sepolia", "eip155:84532"),
        ("base", "eip155:8453"),
        ("polygon", "eip155:137"),
        ("eip155:31337", "eip155:31337"),
    ],
)
def test_networks(written: str, caip2: str) -> None:
    routes = "routes: [{path: /a, price: free}]\n"
    assert loads(text_with(network=written, routes=routes)).network == caip2


def test_pay_to_is_checksummed() -> None:
    assert loads(text_with(pay_to=f'"{PAY_TO.upper().replace("0X", "0x")}"')).pay_to == PAY_TO
    assert loads(text_with(pay_to=f'"{PAY_TO}"')).pay_to == PAY_TO


def test_facilitator_list_remote_and_local() -> None:
    text = text_with(
        facilitator=(
            "\n  - {url: https://f.example/x402/, timeout: 2.5s,"
            " headers: {Authorization: Bearer t}}"
            f"\n  - {{local: {{rpc_url: http://127.0.0.1:8545, private_key: {SECRET_KEY}}}}}"
        )
    )
    remote, local = loads(text).facilitators
    assert remote == RemoteFacilitatorSettings(
        "https://f.example/x402", {"Authorization": "Bearer t"}, 2.5
    )
    assert local == LocalFacilitatorSettings("http://127.0.0.1:8545", SECRET_KEY, 30.0)


def test_local_facilitator_engine_knobs() -> None:
    k2, k3, dk = ("0x" + c * 64 for c in "123")
    local = (
        f"{{local: {{rpc_url: http://127.0.0.1:8545, private_key: {SECRET_KEY}, keys: [{k2}, {k3}],"
        f" delegate_key: {dk}, batch_window: 20ms, max_batch: 10, confirmation_timeout: 12s,"
        " poll_interval: 0.1, min_gas_balance: 0.01 eth, max_fee_per_gas: 50 gwei,"
        " reorg_depth: 3, stuck_blocks: 2, stuck_seconds: 9s}}"
    )
    (got,) = loads(text_with(facilitator=local)).facilitators
    assert isinstance(got, LocalFacilitatorSettings)
    assert got.keys == (SECRET_KEY, k2, k3) and got.delegate_key == dk
    assert (got.batch_window, got.max_batch, got.timeout, got.poll_interval) == (0.02, 10, 12, 0.1)
    assert (got.min_gas_balance, got.max_fee_per_gas) == (10**16, 50 * 10**9)
    assert (got.reorg_depth, got.stuck_blocks, got.stuck_seconds) == (3, 2, 9.0)
    assert all(key[2:] not in repr(got) for key in (SECRET_KEY, k2, k3, dk))
    only_keys = f"{{local: {{rpc_url: http://n, keys: [{k2}], batch_window: 0}}}}"
    (got,) = loads(text_with(facilitator=only_keys)).facilitators
    assert isinstance(got, LocalFacilitatorSettings)
    assert got.keys == (k2,) and got.batch_window == 0.0 and got.delegate_key is None


def test_local_facilitator_key_errors() -> None:
    twice = f"{{local: {{rpc_url: http://n, private_key: {SECRET_KEY}, keys: [{SECRET_KEY}]}}}}"
    assert errors(text_with(facilitator=twice)) == [
        "gateway.yaml:2 facilitator.local.keys[0]: the same key twice would race on its own nonces"
    ]
    shared = (
        f"{{local: {{rpc_url: http://n, private_key: {SECRET_KEY}, delegate_key: {SECRET_KEY}}}}}"
    )
    (problem,) = errors(text_with(facilitator=shared))
    assert "facilitator.local.delegate_key: must differ from the settler keys" in problem
    wei = f"{{local: {{rpc_url: http://n, private_key: {SECRET_KEY}, min_gas_balance: 1 bitcoin}}}}"
    (problem,) = errors(text_with(facilitator=wei))
    assert "facilitator.local.min_gas_balance:" in problem and "not an amount of wei" in problem
    for problem in (*errors(text_with(facilitator=twice)), *errors(text_with(facilitator=shared))):
        assert SECRET_KEY[2:] not in problem


# --- secrets -------------------------------------------------------------------------------


def test_secrets_are_absent_from_errors_and_reprs() -> None:
    good = text_with(
        facilitator=(
            f'\n  - {{url: http://f, headers: {{Authorization: "Bearer {SECRET_TOKEN}"}}}}'
            f"\n  - {{local: {{rpc_url: http://n, private_key: '{SECRET_KEY}'}}}}"
        )
    )
    settings = loads(good)
    assert SECRET_TOKEN not in repr(settings) and SECRET_TOKEN not in str(settings)
    assert SECRET_KEY not in repr(settings)

    bad_key = SECRET_KEY[:-1] + "Z"
    broken = text_with(
        facilitator=(
            f'\n  - {{url: http://f, headers: {{Authorization: "Bearer {SECRET_TOKEN}\\n"}}}}'
            f"\n  - {{local: {{rpc_url: 'ftp://n/{SECRET_TOKEN}', private_key: '{bad_key}'}}}}"
        ),
        store=f"mysql://:{SECRET_TOKEN}@db",
    ).replace("routes:", f"privat_key: {SECRET_KEY}\nroutes:")
    with pytest.raises(ConfigError) as caught:
        loads(broken)
    message = str(caught.value)
    assert len(caught.value.errors) == 5, message
    for secret in (SECRET_TOKEN, SECRET_KEY, bad_key):
        assert secret not in message
        assert secret not in repr(caught.value)


# --- files ---------------------------------------------------------------------------------


def test_load_reads_a_file_and_names_it_in_errors(tmp_path: Path) -> None:
    path = tmp_path / "gw.yaml"
    path.write_text(text_with(), encoding="utf-8")
    settings = config.load(path, env={})
    assert settings.source == str(path)
    path.write_text(text_with(workers="0"), encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        config.load(str(path), env={})
    assert caught.value.errors == [f"{path}:4 workers: 0 must be 1 or more"]


def test_load_missing_or_binary_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as caught:
        config.load(missing)
    assert caught.value.errors == [
        f"{missing}: cannot read the config file: No such file or directory"
    ]
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(ConfigError) as caught:
        config.load(binary)
    assert caught.value.errors == [f"{binary}: the config file is not UTF-8 text"]


# --- assets: named tokens, transfer: permit2 ---------------------------------------------

USDT = "0x5FbDB2315678afecb367f032d93F642f64180aa3"
NAMED_ASSETS = (
    f'{{usdt: {{address: "{USDT.lower()}", name: Tether USD, version: "1", decimals: 6, '
    "transfer: permit2, symbol: USDT}}"
)


def test_a_route_names_a_permit2_asset_for_its_dollar_price() -> None:
    routes = 'routes:\n  - {path: /r, price: "$0.01", asset: usdt}\n'
    routes += '  - {path: /u, price: "$0.01"}\n'
    settings = loads(text_with(routes, network="eip155:84532", assets=NAMED_ASSETS))
    assert settings.assets["usdt"] == AssetSpec(USDT, "Tether USD", "1", 6, "USDT", "permit2")
    (req,) = settings.routes[0].accepts
    assert (req.asset, req.amount, req.symbol) == (USDT, 10_000, "USDT")
    # As the SDK's server states a Permit2-only token: the method, no EIP-712 domain.
    assert dict(req.extra) == {"assetTransferMethod": "permit2"}
    (other,) = settings.routes[1].accepts
    assert other.asset != USDT and "assetTransferMethod" not in other.extra


def test_asset_transfer_defaults_to_eip3009_and_names_must_exist() -> None:
    plain = NAMED_ASSETS.replace("transfer: permit2, ", "")
    routes = 'routes:\n  - {path: /r, price: "$0.01", asset: usdt}\n'
    (req,) = loads(text_with(routes, assets=plain)).routes[0].accepts
    assert dict(req.extra) == {"name": "Tether USD", "version": "1"}
    assert errors(text_with(routes.replace("usdt}", "usdc}"), assets=NAMED_ASSETS)) == [
        'gateway.yaml:6 routes[0].asset: "usdc" is not a named asset (usdt)'
    ]
    wrong = NAMED_ASSETS.replace("permit2", "permit3")
    (problem,) = errors(text_with(routes, assets=wrong))
    assert "assets.usdt.transfer" in problem and "permit3" in problem


# --- price: {upto, default}: metered routes ----------------------------------------------


def test_an_upto_price_offers_the_maximum_through_permit2_and_keeps_the_default() -> None:
    routes = 'routes:\n  - path: /chat/*\n    price: {upto: "$0.10", default: "$0.01"}\n'
    routes += "    stream_usage: {sse_event: usage}\n"
    (route,) = loads(text_with(routes)).routes
    (req,) = route.accepts
    assert (req.scheme, req.amount, dict(req.extra)) == (
        "upto",
        100_000,
        {"assetTransferMethod": "permit2"},
    )
    assert route.metered is not None
    assert (route.metered.default, route.metered.sse_event) == (10_000, "usage")
    assert route.price_text == "upto $0.10"


def test_an_upto_price_without_default_charges_the_maximum_and_is_checked() -> None:
    routes = 'routes:\n  - {path: /chat, price: {upto: "$0.10"}}\n'
    (route,) = loads(text_with(routes)).routes
    assert route.metered is not None and route.metered.default == 100_000
    assert route.metered.sse_event is None
    too_much = routes.replace('"$0.10"}', '"$0.10", default: "$0.20"}')
    assert "routes[0].price.default: is more than upto" in errors(text_with(too_much))[0]
    before = routes.replace("}}", "}, settle: before}")
    assert "routes[0].settle: a metered (upto) price" in errors(text_with(before))[0]
    stream = 'routes:\n  - {path: /chat, price: "$0.01", stream_usage: {sse_event: u}}\n'
    assert "routes[0].stream_usage: needs a metered price" in errors(text_with(stream))[0]


def test_networks_name_an_rpc_per_network_and_a_local_facilitators_counts() -> None:
    from gateway.facilitators.chain import rpc_urls

    s = loads(text_with(networks='{base-sepolia: {rpc_url: "https://rpc.test/KEY123"}}'))
    assert rpc_urls(s) == {"eip155:84532": "https://rpc.test/KEY123"}
    assert "KEY123" not in repr(s)
    local = "{local: {rpc_url: http://127.0.0.1:8545, private_key: " + SECRET_KEY + "}}"
    assert rpc_urls(loads(text_with(facilitator=local))) == {
        "eip155:84532": "http://127.0.0.1:8545"
    }
    assert rpc_urls(loads(text_with())) == {}
    found = errors(text_with(networks="{solana:x: {rpc_url: http://a}, eip155:1: {}}"))
    assert any("networks.solana:x" in e for e in found), found
    assert any("networks.eip155:1" in e and "rpc_url" in e for e in found), found


def test_paths_match_without_case_by_default_issue_12() -> None:
    assert loads(text_with()).case_insensitive_paths is True
    assert loads(text_with(case_insensitive_paths="false")).case_insensitive_paths is False
