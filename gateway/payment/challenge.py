"""The 402 challenge, built from configuration alone (it must work while the facilitator is down).

One answer serves both protocol versions: the v2 `PAYMENT-REQUIRED` header and a v1-shaped
JSON body. Browsers get the SDK's paywall page instead of the JSON. Everything that does not
depend on the request is prepared once per route by `PreparedChallenges`; the encoded answer for a
(route, resource URL, error) is kept in a small LRU, because unpaid requests are the hot path
of a paywall and bots repeat them.
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from cachetools import LRUCache
from x402.extensions.erc20_approval_gas_sponsoring import (
    declare_erc20_approval_gas_sponsoring_extension,
)
from x402.http.constants import PAYMENT_REQUIRED_HEADER
from x402.http.utils import encode_payment_required_header, htmlsafe_json_dumps
from x402.schemas import PaymentRequired, PaymentRequirements, ResourceInfo, SupportedResponse
from x402.schemas.v1 import PaymentRequiredV1

from gateway.config.settings import Requirement, RouteSettings, Settings
from gateway.payment.discovery import bazaar_extension, declaration
from gateway.payment.networks import is_testnet
from gateway.payment.requirements import (
    completed,
    incomplete,
    requirements_v1,
    requirements_v2,
)
from gateway.payment.terms import is_permit2
from gateway.proxy.headers import X402_EXPOSED, is_trusted

# The SDK's `x402HTTPResourceServer` puts exactly this in `error` when no payment was sent;
# every other challenge carries the failure's reason slug (`GatewayError.reason`).
ERROR_PAYMENT_REQUIRED = "Payment required"

# Response headers a browser client must be allowed to read (Access-Control-Expose-Headers).
EXPOSE_HEADERS = X402_EXPOSED
EXPOSE_HEADERS_VALUE = ", ".join(EXPOSE_HEADERS)

CACHE_CONTROL = "no-store"  # a challenge is per request; never let a cache replay it
JSON_TYPE = "application/json"
HTML_TYPE = "text/html; charset=utf-8"

# What a forwarded scheme or host may be before it goes into a URL.
_SCHEME = re.compile(r"https?", re.IGNORECASE)
_HOST = re.compile(r"[A-Za-z0-9.\-]+(?::[0-9]{1,5})?|\[[0-9A-Fa-f:.]+\](?::[0-9]{1,5})?")


class Addressed(Protocol):
    """What a challenge's resource URL is built from: how the client addressed the gateway
    (an aiohttp request is one)."""

    @property
    def scheme(self) -> str: ...

    @property
    def host(self) -> str: ...

    @property
    def remote(self) -> str | None: ...

    @property
    def headers(self) -> Mapping[str, str]: ...


def _first(value: str | None, pattern: re.Pattern[str]) -> str | None:
    """The first element of a comma-separated forwarded header, if it is well-formed."""
    first = (value or "").split(",", 1)[0].strip()
    return first if pattern.fullmatch(first) else None


def _resource(route: RouteSettings, resource_url: str) -> ResourceInfo:
    return ResourceInfo(url=resource_url, description=route.description, mime_type=route.mime_type)


def extensions_for(route: RouteSettings) -> dict[str, Any] | None:
    """The extensions a route's 402 declares: `erc20ApprovalGasSponsoring` where a payer may
    pay through Permit2, so one holding no gas for `approve(Permit2)` can sign that approval
    for the facilitator to broadcast. A facilitator that does not sponsor ignores it, and the
    payer without an allowance is then answered 412 `permit2_allowance_required`."""
    if any(is_permit2(req) for req in route.accepts):
        return declare_erc20_approval_gas_sponsoring_extension()
    return None


def _encode(
    route: RouteSettings,
    v2: list[PaymentRequirements],
    resource_url: str,
    error: str,
    extensions: dict[str, Any] | None = None,
) -> tuple[dict[str, str], bytes]:
    header = encode_payment_required_header(
        PaymentRequired(
            error=error,
            resource=_resource(route, resource_url),
            accepts=v2,
            extensions=extensions,
        )
    )
    body = PaymentRequiredV1(error=error, accepts=requirements_v1(route, resource_url))
    headers = {
        PAYMENT_REQUIRED_HEADER: header,
        "Content-Type": JSON_TYPE,
        "Cache-Control": CACHE_CONTROL,
    }
    return headers, body.model_dump_json(by_alias=True, exclude_none=True).encode()


def payment_required(
    route: RouteSettings, resource_url: str, error: str
) -> tuple[dict[str, str], bytes]:
    """The 402's headers (v2 challenge in `PAYMENT-REQUIRED`) and its v1 JSON body."""
    extensions = {**(bazaar_extension(route) or {}), **(extensions_for(route) or {})} or None
    return _encode(route, requirements_v2(route), resource_url, error, extensions)


def wants_html(accept: str, user_agent: str) -> bool:
    """The SDK's browser test (`x402HTTPServerBase`): a browser asks for HTML and says Mozilla."""
    return "text/html" in accept and "Mozilla" in user_agent


def _display_amount(req: Requirement) -> float:
    # The SDK's handler divides by 10**6 whatever the token; we know the real decimals.
    return req.amount / 10.0**req.decimals


def _fallback_html(route: RouteSettings, req: Requirement, payment: PaymentRequired) -> str:
    data = html.escape(payment.model_dump_json(by_alias=True, exclude_none=True))
    what = html.escape(route.description or (payment.resource.url if payment.resource else ""))
    amount = f"{_display_amount(req):.{min(req.decimals, 6)}f} {html.escape(req.symbol)}"
    return (
        '<!DOCTYPE html>\n<html>\n<head>\n<meta charset="UTF-8">\n<title>Payment Required</title>'
        "\n</head>\n<body>\n<h1>Payment Required</h1>\n"
        f"<p><strong>Resource:</strong> {what}</p>\n<p><strong>Amount:</strong> {amount}</p>\n"
        f"<div id=\"payment-widget\" data-requirements='{data}'>"
        "<p>Use an x402-compatible client to pay.</p></div>\n</body>\n</html>"
    )


def paywall_for(route: RouteSettings, payment: PaymentRequired) -> str:
    """The SDK's EVM paywall page for an already built challenge.

    It injects `window.x402` exactly as the SDK's `EvmPaywallHandler` does, with the display
    amount in the token's own decimals (the SDK assumes 6)."""
    req = route.accepts[0]
    if not req.network.startswith("eip155:"):
        return _fallback_html(route, req, payment)
    try:
        # Imported on first use: the page is 2 MB of text most gateways never serve.
        from x402.http.paywall.evm_paywall_template import EVM_PAYWALL_TEMPLATE
    except ImportError:  # the SDK ships it, but it is generated; never fail a 402 over it
        return _fallback_html(route, req, payment)
    config = {
        "amount": _display_amount(req),
        "paymentRequired": payment.model_dump(by_alias=True, exclude_none=True),
        "testnet": is_testnet(req.network),
        "currentUrl": payment.resource.url if payment.resource else "",
        "appName": "",
        "appLogo": "",
    }
    script = f"\n  <script>\n    window.x402 = {htmlsafe_json_dumps(config)};\n  </script>"
    return EVM_PAYWALL_TEMPLATE.replace("</head>", f"{script}\n</head>", 1)


def paywall_html(route: RouteSettings, resource_url: str, error: str) -> str:
    """The paywall page a browser gets instead of the JSON challenge."""
    payment = PaymentRequired(
        error=error, resource=_resource(route, resource_url), accepts=requirements_v2(route)
    )
    return paywall_for(route, payment)


# (route index, resource URL, error, the route's amounts, a metered route's settler)
_Key = tuple[int, str, str, tuple[int, ...], str]


class PreparedChallenges:
    """Every paid route's challenge, prepared once at start-up from the settings.

    With `public_url` set, a route's resource URL is fixed (`public_url` + path and query), so
    each distinct request target costs one encoding; without it the URL is the request's own.
    """

    def __init__(
        self,
        settings: Settings,
        cache_size: int = 1024,
        supported: Callable[[], SupportedResponse] | None = None,
    ) -> None:
        """`supported`: the facilitator's /supported (cached, non-blocking), whose `extra`
        completes `upto` requirements (the facilitator's address)."""
        self.supported = supported
        self.public_url = settings.public_url.rstrip("/") if settings.public_url else None
        self.trusted_proxies = settings.trusted_proxies
        self._v2 = {r.index: requirements_v2(r) for r in settings.routes if not r.free}
        # A dynamically priced route is resolved per request into a copy with its own
        # `accepts`: what was prepared from the configured one is used only for that one.
        self._accepts = {r.index: r.accepts for r in settings.routes if not r.free}
        declared = declaration(settings.idempotency)
        self._extensions = {
            r.index: {**(bazaar_extension(r) or {}), **declared, **(extensions_for(r) or {})}
            or None
            for r in settings.routes
            if not r.free or r.dynamic
        }
        self._cache: LRUCache[_Key, tuple[dict[str, str], bytes]] = LRUCache(maxsize=cache_size)

    def resource_url(self, request: Addressed, path: str, query: str) -> str:
        """The URL a challenge names for the canonical `path` and raw `query`: under
        `public_url` when configured, else as the client addressed it (scheme and host from
        `X-Forwarded-Proto`/`-Host` only when the direct peer is a trusted proxy)."""
        target = f"{path}?{query}" if query else path
        if self.public_url is not None:
            return self.public_url + target
        scheme, host = request.scheme, request.host
        if is_trusted(request.remote, self.trusted_proxies):
            proto = _first(request.headers.get("X-Forwarded-Proto"), _SCHEME)
            scheme = proto.lower() if proto else scheme
            host = _first(request.headers.get("X-Forwarded-Host"), _HOST) or host
        if not _HOST.fullmatch(host):
            host = "localhost"  # a Host header no URL can carry; the challenge is still valid
        return f"{scheme}://{host}{target}"

    @staticmethod
    def wants_html(headers: Mapping[str, str]) -> bool:
        """`wants_html()` on a request's headers."""
        return wants_html(headers.get("Accept", ""), headers.get("User-Agent", ""))

    def _requirements(self, route: RouteSettings) -> list[PaymentRequirements]:
        prepared = self._v2.get(route.index)
        if prepared is None or self._accepts.get(route.index) is not route.accepts:
            prepared = requirements_v2(route)
        if route.metered is None and route.channel is None:
            return prepared
        if self.supported is not None:
            supported = self.supported()
            prepared = [completed(req, supported) for req in prepared]
        return [req for req in prepared if not incomplete(req)]

    def payment_required(
        self,
        route: RouteSettings,
        resource_url: str,
        error: str,
        extensions: dict[str, Any] | None = None,
    ) -> tuple[dict[str, str], bytes]:
        """As `payment_required()`, cached; the headers are a fresh dict the caller may extend.
        With `extensions` (fresh per answer, e.g. a SIWX nonce) it is encoded anew, beside the
        route's own extensions."""
        reqs = self._requirements(route)
        if extensions:
            merged = {**(self._extensions.get(route.index) or {}), **extensions}
            return _encode(route, reqs, resource_url, error, merged)
        # A metered route's terms name the facilitator, which /supported may change.
        settler = str(reqs[0].extra.get("facilitatorAddress", "")) if route.metered else ""
        settler += str(reqs[-1].extra.get("receiverAuthorizer", "")) if route.channel else ""
        amounts = tuple(r.amount for r in route.accepts)
        key = (route.index, resource_url, error, amounts, settler)
        hit = self._cache.get(key)
        if hit is None:
            extensions = self._extensions.get(route.index)
            hit = _encode(route, reqs, resource_url, error, extensions)
            self._cache[key] = hit
        headers, body = hit
        return dict(headers), body

    def paywall_html(self, route: RouteSettings, resource_url: str, error: str) -> str:
        """As `paywall_html()`. Not cached: the page is megabytes, and browsers are rare next
        to API clients."""
        payment = PaymentRequired(
            error=error,
            resource=_resource(route, resource_url),
            accepts=self._requirements(route),
            extensions=self._extensions.get(route.index),
        )
        return paywall_for(route, payment)

    def paywall(
        self,
        route: RouteSettings,
        resource_url: str,
        error: str,
        extensions: dict[str, Any] | None = None,
    ) -> tuple[dict[str, str], bytes]:
        """The browser's 402: the paywall page, still carrying the v2 challenge header."""
        headers, _ = self.payment_required(route, resource_url, error, extensions)
        headers["Content-Type"] = HTML_TYPE
        return headers, self.paywall_html(route, resource_url, error).encode()
