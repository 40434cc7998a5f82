"""The CORS headers of the answers the gateway writes itself (issue 12 item 4): pure, no I/O.

An x402 challenge is useless to a page on another site unless the browser lets the page read
it: the 402 (and the gateway's problem+json errors) need `Access-Control-Allow-Origin`, the
x402 headers must be exposed, and the preflight of the paid retry (it carries
`PAYMENT-SIGNATURE`) must be answered by the gateway, since a priced path's OPTIONS never
reaches the origin (item 1). The origin never sees the unpaid request, so its own CORS setup
cannot help. Relayed answers keep the origin's CORS headers; a paid answer that has none gets
the gateway's (the gateway answered that path's preflight, so it owns that path's CORS).

Every answer says `Vary: Origin` (a cache must not hand one site's answer to another);
`origins: ["*"]` answers `*` (no credentials); an explicit list echoes an allowed `Origin`
and leaves the header off for any other.
"""

from __future__ import annotations

from collections.abc import Mapping

from x402.http.constants import (
    PAYMENT_REQUIRED_HEADER,
    PAYMENT_RESPONSE_HEADER,
    PAYMENT_SIGNATURE_HEADER,
    X_PAYMENT_HEADER,
    X_PAYMENT_RESPONSE_HEADER,
)

from gateway.config.settings import Cors
from gateway.formats import is_token

ALLOW_ORIGIN = "Access-Control-Allow-Origin"
EXPOSED = (PAYMENT_REQUIRED_HEADER, PAYMENT_RESPONSE_HEADER, X_PAYMENT_RESPONSE_HEADER)
# What a paying page sends: the payment headers, a JSON body, and (from @x402/fetch 2.27 on
# the paid retry) a request header named Access-Control-Expose-Headers.
REQUEST_HEADERS = (
    PAYMENT_SIGNATURE_HEADER,
    X_PAYMENT_HEADER,
    "Content-Type",
    "Access-Control-Expose-Headers",
)
PREFLIGHT_VARY = "Origin, Access-Control-Request-Method, Access-Control-Request-Headers"
_MAX_REQUESTED = 50  # names echoed from Access-Control-Request-Headers, at most


def is_preflight(headers: Mapping[str, str]) -> bool:
    return "Origin" in headers and "Access-Control-Request-Method" in headers


class CorsPolicy:
    """`Cors` settings compiled into the header sets they produce (built once per generation)."""

    __slots__ = ("_any", "_credentials", "_exposed", "_max_age", "_origins")

    def __init__(self, cors: Cors) -> None:
        self._any = cors.any_origin
        self._origins = frozenset(cors.origins)
        self._credentials = cors.credentials
        self._max_age = str(int(cors.max_age))
        self._exposed = {
            "Access-Control-Expose-Headers": ", ".join(EXPOSED),
            "Vary": "Origin",
            **({ALLOW_ORIGIN: "*"} if self._any else {}),
        }

    def allow_origin(self, origin: str | None) -> dict[str, str]:
        """`Access-Control-Allow-Origin` (and `-Credentials`) for a page at `origin`."""
        if self._any:
            return {ALLOW_ORIGIN: "*"}
        if origin is None or origin.lower() not in self._origins:
            return {}
        allowed = {ALLOW_ORIGIN: origin}
        if self._credentials:
            allowed["Access-Control-Allow-Credentials"] = "true"
        return allowed

    def answer(self, origin: str | None) -> dict[str, str]:
        """The headers of a 402 or problem+json answer to a request from `origin`."""
        if self._any:
            return self._exposed
        return {**self._exposed, **self.allow_origin(origin)}

    def preflight(self, request: Mapping[str, str], allow: str) -> dict[str, str]:
        """The headers of the gateway's 204 to a preflight; `allow`: the path's methods."""
        requested = [
            name.strip()
            for name in request.get("Access-Control-Request-Headers", "").split(",")[
                :_MAX_REQUESTED
            ]
            if is_token(name.strip())
        ]
        names = list(dict.fromkeys([*REQUEST_HEADERS, *requested]))
        return {
            **self.allow_origin(request.get("Origin")),
            "Access-Control-Allow-Methods": allow,
            "Access-Control-Allow-Headers": ", ".join(names),
            "Access-Control-Max-Age": self._max_age,
            "Vary": PREFLIGHT_VARY,
        }
