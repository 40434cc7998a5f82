"""Path, method and header tricks that a lenient origin (tests/e2e/_lenient_origin.py) treats
as its paid resource or as the payer, for issue 12. Data only: tests/e2e/test_edge_probes.py
sends each one raw, through a real gateway and straight to the origin.

Every probe is a real threat: straight to the origin it gets paid content, a believed payer
or a payment/hop-by-hop header through (test_every_probe_is_a_threat_without_the_gateway).
Through the gateway (routes below, shipped defaults) none may: since issue 12's fixes, none
does. A new probe that gets through may carry `xfail` (strict) naming the fix it waits for.

The gateway's routes (tests/e2e/test_edge_probes.py): /free/* free; /paid/* priced for GET and
POST (HEAD comes with GET); /paid-archive/* priced for every method. `{payment}` in a header
line is replaced by a valid payment for GET /paid/x, fresh for each probe; FORGED is the payer
a client pretends to be.
"""

from __future__ import annotations

from dataclasses import dataclass

FORGED = "0x000000000000000000000000000000000000f0e9"
PREFLIGHT = ("Origin: https://shop.example", "Access-Control-Request-Method: GET")


@dataclass(frozen=True)
class Probe:
    name: str  # also its X-Probe-Id, so the origin's log can be matched to it
    item: int  # the issue 12 item it belongs to
    method: str
    target: str  # the request target, sent as written
    lines: tuple[str, ...] = ()  # header lines, sent as written
    body: bytes = b""
    version: str = "HTTP/1.1"
    pays: bool = False  # carries a valid payment ({payment} in `lines`)
    xfail: str | None = None  # why it gets through today (see the module docstring)


def _p(name: str, item: int, method: str, target: str, *lines: str, **kw: object) -> Probe:
    return Probe(name, item, method, target, tuple(lines), **kw)  # type: ignore[arg-type]


PROBES: tuple[Probe, ...] = (
    # --- 1: methods ----------------------------------------------------------------------
    _p("options-plain", 1, "OPTIONS", "/paid/x"),
    _p("options-preflight", 1, "OPTIONS", "/paid/x", *PREFLIGHT),
    _p(
        "options-preflight-payment-header",
        1,
        "OPTIONS",
        "/paid/x",
        "Origin: https://shop.example",
        "Access-Control-Request-Method: GET",
        "Access-Control-Request-Headers: payment-signature",
    ),
    _p("options-method-override", 1, "OPTIONS", "/paid/x", "X-HTTP-Method-Override: GET"),
    _p("options-with-body", 1, "OPTIONS", "/paid/x", body=b"{}"),
    _p("options-prefix-itself", 1, "OPTIONS", "/paid"),
    _p("options-all-methods-route", 1, "OPTIONS", "/paid-archive/x", *PREFLIGHT),
    _p("options-asterisk-override", 1, "OPTIONS", "*", "X-Original-URL: /paid/x"),
    _p("head-unpaid", 1, "HEAD", "/paid/x"),
    _p("head-paid", 1, "HEAD", "/paid/x", "PAYMENT-SIGNATURE: {payment}", pays=True),
    _p("get-unpaid", 1, "GET", "/paid/x"),
    _p("post-unpaid", 1, "POST", "/paid/x", body=b"{}"),
    _p("put", 1, "PUT", "/paid/x", body=b"{}"),
    _p("delete", 1, "DELETE", "/paid/x"),
    _p("patch", 1, "PATCH", "/paid/x", body=b"{}"),
    _p("propfind", 1, "PROPFIND", "/paid/x", "Depth: 1"),
    _p("trace", 1, "TRACE", "/paid/x"),
    _p("search", 1, "SEARCH", "/paid/x"),
    _p("made-up-method", 1, "BREW", "/paid/x"),
    _p("lower-case-method", 1, "get", "/paid/x"),
    _p("post-method-override-get", 1, "POST", "/paid/x", "X-HTTP-Method-Override: GET"),
    # --- 2: case -------------------------------------------------------------------------
    _p("upper", 2, "GET", "/PAID/x"),
    _p("title", 2, "GET", "/Paid/x"),
    _p("mixed", 2, "GET", "/pAiD/x"),
    _p("escaped-upper-p", 2, "GET", "/%50AID/x"),
    _p("escaped-upper-p-lower-rest", 2, "GET", "/%50aid/x"),
    _p("escapes-mixed-case", 2, "GET", "/%70%41%49%44/x"),
    _p("escapes-lower-case-hex", 2, "GET", "/%70%61%69%64/x"),
    _p("dotdot-into-upper", 2, "GET", "/free/../PAID/x"),
    _p("encoded-dotdot-into-upper", 2, "GET", "/free/%2e%2e/PAID/x"),
    _p("double-slash-upper", 2, "GET", "//PAID/x"),
    _p("dot-segment-upper", 2, "GET", "/./PAID/x"),
    _p("upper-prefix-itself", 2, "GET", "/PAID"),
    _p("upper-path-parameter", 2, "GET", "/PAID;jsessionid=1/x"),
    _p("upper-second-route", 2, "GET", "/PAID-ARCHIVE/x"),
    _p("head-upper", 2, "HEAD", "/PAID/x"),
    _p("post-upper", 2, "POST", "/PAID/x", body=b"{}"),
    _p("options-upper", 2, "OPTIONS", "/Paid/x", *PREFLIGHT),
    _p("http10-upper", 2, "GET", "/PAID/x", version="HTTP/1.0"),
    _p("path-parameter-lower", 2, "GET", "/paid;jsessionid=1/x"),
    # --- 3: IIS equivalences and path-override headers -------------------------------------
    _p("trailing-dot", 3, "GET", "/paid./x"),
    _p("trailing-dots", 3, "GET", "/paid../x"),
    _p("trailing-space-escaped", 3, "GET", "/paid%20/x"),
    _p("trailing-dot-escaped", 3, "GET", "/paid%2e/x"),
    _p("trailing-dot-space-escaped", 3, "GET", "/paid%2E%20/x"),
    _p("trailing-dot-space-dot", 3, "GET", "/paid.%20./x"),
    _p("trailing-dot-upper", 3, "GET", "/PAID./x"),
    _p("trailing-dot-second-route", 3, "GET", "/paid-archive./x"),
    _p("trailing-dot-prefix-itself", 3, "GET", "/paid."),
    _p("ntfs-index-allocation", 3, "GET", "/paid::$INDEX_ALLOCATION/x"),
    _p("ntfs-i30", 3, "GET", "/paid:$i30:$INDEX_ALLOCATION/x"),
    _p("ntfs-data-stream", 3, "GET", "/paid::$DATA/x"),
    _p("short-name-8.3", 3, "GET", "/PAID-A~1/x"),
    _p("short-name-8.3-lower", 3, "GET", "/paid-a~1/x"),
    _p("iis-percent-u", 3, "GET", "/%u0070aid/x"),
    _p("full-width-letter", 3, "GET", "/%EF%BD%90aid/x"),
    _p("backslash", 3, "GET", "/paid\\x"),
    _p("backslash-escaped", 3, "GET", "/free/..%5cpaid/x"),
    _p("raw-space-in-target", 3, "GET", "/paid /x"),
    _p("x-original-url", 3, "GET", "/free/x", "X-Original-URL: /paid/x"),
    _p("x-rewrite-url", 3, "GET", "/free/x", "X-Rewrite-URL: /paid/x"),
    _p("x-original-url-unrouted", 3, "GET", "/nothing", "X-Original-URL: /paid/x"),
    _p("x-original-url-lower", 3, "GET", "/free/x", "x-original-url: /paid/x"),
    _p("x-original-url-underscore", 3, "GET", "/free/x", "X_Original_URL: /paid/x"),
    _p("x-rewrite-url-underscore", 3, "GET", "/free/x", "X_Rewrite_URL: /paid/x"),
    _p(
        "x-original-url-absolute",
        3,
        "GET",
        "/free/x",
        "X-Original-URL: http://a.example/paid/x",
    ),
    _p("x-original-url-upper", 3, "GET", "/free/x", "X-Original-URL: /PAID/x"),
    _p("x-override-url", 3, "GET", "/free/x", "X-Override-URL: /paid/x"),
    _p("x-forwarded-path", 3, "GET", "/free/x", "X-Forwarded-Path: /paid/x"),
    _p(
        "x-original-url-post",
        3,
        "POST",
        "/free/x",
        "X-Original-URL: /paid/x",
        body=b"{}",
    ),
    _p("x-original-url-on-priced", 3, "GET", "/paid/x", "X-Original-URL: /paid/x"),
    # --- odd targets -----------------------------------------------------------------------
    _p("absolute-form", 3, "GET", "http://api.example/paid/x"),
    _p("absolute-form-upper", 2, "GET", "http://api.example/PAID/x"),
    _p("absolute-form-upper-scheme", 3, "GET", "HTTP://api.example/paid/x"),
    _p("no-leading-slash", 3, "GET", "paid/x"),
    _p("fragment", 3, "GET", "/paid/x#frag"),
    _p("dotdot-back-into-priced", 3, "GET", "/free/x/../../paid/x"),
    # --- 6: payer and payment header spoofing ----------------------------------------------
    _p("x-payer-underscore-free", 6, "GET", "/free/x", f"X_Payer: {FORGED}"),
    _p("x-payer-underscore-unrouted", 6, "GET", "/nothing", f"X_Payer: {FORGED}"),
    _p("x-payer-underscore-lower", 6, "GET", "/free/x", f"x_payer: {FORGED}"),
    _p("x-payer-underscore-upper", 6, "GET", "/free/x", f"X_PAYER: {FORGED}"),
    _p("x-payer-underscore-options", 6, "OPTIONS", "/free/x", f"X_Payer: {FORGED}"),
    _p(
        "x-payer-underscore-paid",
        6,
        "GET",
        "/paid/x",
        f"X_Payer: {FORGED}",
        "PAYMENT-SIGNATURE: {payment}",
        pays=True,
    ),
    _p("x-payer-free", 6, "GET", "/free/x", f"X-Payer: {FORGED}"),
    _p("x-payer-lower-unrouted", 6, "GET", "/nothing", f"x-payer: {FORGED}"),
    _p("x-payer-upper-free", 6, "GET", "/free/x", f"X-PAYER: {FORGED}"),
    _p("x-payer-space-before-colon", 6, "GET", "/free/x", f"X-Payer : {FORGED}"),
    _p("x-payer-tabs", 6, "GET", "/free/x", f"X-Payer:\t{FORGED}\t"),
    _p("x-payer-twice", 6, "GET", "/free/x", f"X-Payer: {FORGED}", f"X-Payer: {FORGED}"),
    _p("x-payer-obs-fold", 6, "GET", "/free/x", "X-Payer:", f" {FORGED}"),
    _p("payment-signature-underscore", 6, "GET", "/free/x", "Payment_Signature: e30="),
    _p("x-payment-underscore", 6, "GET", "/free/x", "X_Payment: e30="),
    _p(
        "payment-signature-underscore-unrouted",
        6,
        "GET",
        "/nothing",
        "payment_signature: e30=",
    ),
    _p("payment-signature-free", 6, "GET", "/free/x", "PAYMENT-SIGNATURE: e30="),
    _p("x-payment-free", 6, "GET", "/free/x", "X-PAYMENT: e30="),
    _p("transfer-encoding-underscore", 6, "GET", "/free/x", "Transfer_Encoding: chunked"),
    _p("keep-alive-underscore", 6, "GET", "/free/x", "Keep_Alive: timeout=600"),
    _p(
        "proxy-authorization-underscore",
        6,
        "GET",
        "/free/x",
        "Proxy_Authorization: Basic dTpw",
    ),
)
