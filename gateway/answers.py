"""Every answer the gateway makes up itself (not the origin's), in one place: the 402
challenge, and each `GatewayError` as HTTP: x402 failures as 402 with a reason and a fresh
challenge, the rest as RFC 9457 `application/problem+json`; and OPTIONS on a priced path
(`Allow`, or a CORS preflight). Each carries the `cors:` policy's headers
(gateway/proxy/cors.py), so a page on another site can read it and pay."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from gateway.config.settings import RouteSettings
from gateway.errors import GatewayError, PaymentError
from gateway.payment.challenge import EXPOSE_HEADERS_VALUE, PreparedChallenges
from gateway.proxy.cors import CorsPolicy, is_preflight

_EXPOSE = EXPOSE_HEADERS_VALUE


@dataclass(frozen=True, slots=True)
class PricedResource:
    """What a 402 for this request is built from: the prepared challenges, the priced route,
    and the resource URL the challenge names."""

    challenges: PreparedChallenges
    route: RouteSettings
    url: str
    extensions: dict[str, Any] | None = None  # fresh per answer (a SIWX challenge)


def challenge_response(  # noqa: PLR0913  keyword-only extras, named at call sites
    request: web.Request,
    resource: PricedResource,
    error: str,
    *,
    headers: dict[str, str] | None = None,
    status: int = 402,
    cors: CorsPolicy | None = None,
) -> web.Response:
    """402 with the v2 `PAYMENT-REQUIRED` header and the v1 JSON body (or the paywall page
    for a browser). Built from config alone: works while the facilitator is down."""
    challenges, route, url = resource.challenges, resource.route, resource.url
    extensions = resource.extensions
    if status == 402 and challenges.wants_html(request.headers):
        head, body = challenges.paywall(route, url, error, extensions)
    else:
        head, body = challenges.payment_required(route, url, error, extensions)
    head = {**head, "Access-Control-Expose-Headers": _EXPOSE, **(headers or {})}
    if cors is not None:
        head.update(cors.answer(request.headers.get("Origin")))
    return web.Response(status=status, body=body, headers=head)


def options_response(request: web.Request, allow: frozenset[str], cors: CorsPolicy) -> web.Response:
    """OPTIONS on a priced path: answered here, never forwarded (issue 12 item 1). A CORS
    preflight gets the policy's answer; a plain OPTIONS gets `Allow` from the route table."""
    methods = ", ".join(sorted(allow))
    if is_preflight(request.headers):
        return web.Response(status=204, headers=cors.preflight(request.headers, methods))
    return web.Response(status=204, headers={"Allow": methods})


def problem(
    exc: GatewayError, instance: str = "", cors_headers: dict[str, str] | None = None
) -> web.Response:
    body = {
        "type": f"https://x402-gateway.dev/problems/{exc.reason}",
        "title": exc.title,
        "status": exc.status,
        "detail": exc.detail,
        "reason": exc.reason,
    }
    if instance:
        body["instance"] = instance
    headers = {
        "Content-Type": "application/problem+json",
        "Cache-Control": "no-store",
        "Access-Control-Expose-Headers": _EXPOSE,
        **exc.headers,
    }
    if exc.retry_after is not None:
        headers["Retry-After"] = str(exc.retry_after)
    if cors_headers:
        headers.update(cors_headers)
    return web.Response(status=exc.status, body=json.dumps(body).encode(), headers=headers)


def error_response(
    request: web.Request,
    exc: GatewayError,
    resource: PricedResource | None,
    request_id: str,
    cors: CorsPolicy | None = None,
) -> web.Response:
    """The one mapping from the exception tree to HTTP. `resource`: the priced resource the
    request was for (None for a free or unrouted one)."""
    if isinstance(exc, PaymentError) and resource is not None:
        # A wrong or refused payment gets a fresh challenge naming what was wrong, so the
        # client can pay again correctly; a malformed header keeps its 400.
        return challenge_response(
            request, resource, exc.reason, headers=exc.headers, status=exc.status, cors=cors
        )
    origin = request.headers.get("Origin")
    return problem(exc, request_id, cors.answer(origin) if cors is not None else None)
