"""The request flow, top to bottom: match -> challenge or decode -> claim -> verify -> forward
-> settle -> stream. Each step is a call into its own module; this file only orders them."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

from aiohttp import web

from . import answers
from .challenge import ERROR_PAYMENT_REQUIRED, Challenges, settlement_header
from .errors import GatewayError, MethodNotAllowed
from .facilitators import open_facilitator
from .logs import get_logger
from .paths import canonicalize, match_key
from .payment_wire import decode_payment, match_requirement
from .payments import Claim, Payments
from .proxy import Upstream, relay
from .routes import RouteTable
from .server import InFlight
from .settings import RouteSettings, Settings
from .store import open_store

PAYMENT_HEADERS = ("PAYMENT-SIGNATURE", "X-PAYMENT")
access = get_logger("gateway.access")


@dataclass(frozen=True, slots=True)
class Gateway:
    """Everything one app's requests share, built once at start-up."""

    settings: Settings
    routes: RouteTable
    challenges: Challenges
    upstream: Upstream
    payments: Payments
    in_flight: InFlight
    drop_headers: tuple[str, ...]


GATEWAY = web.AppKey("gateway", Gateway)


async def handle(request: web.Request) -> web.StreamResponse:
    gw = request.app[GATEWAY]
    request_id = request.headers.get("X-Request-Id") or uuid.uuid4().hex
    route: RouteSettings | None = None
    resource_url = ""
    claim: Claim | None = None
    try:
        path, query = canonicalize(request.raw_path)
        route = find_route(gw, request.method, path)
        resource_url = gw.challenges.resource_url(request, path, query)
        if route is None or route.free:
            upstream = await gw.upstream.send(
                request,
                base_url=route_upstream(gw, route),
                path=path,
                query=query,
                add_headers={"X-Request-Id": request_id},
                drop_headers=gw.drop_headers,
            )
            return await relay(request, upstream, extra_headers={})
        payment = decode_payment(request.headers, gw.settings.limits.payment_header)
        if payment is None:
            return answers.challenge(
                request, gw.challenges, route, resource_url, "payment_required"
            )
        matched = match_requirement(route, payment, resource_url)
        claim = await gw.payments.claim(matched, route, request_id)
        await gw.payments.verify(claim)
        if route.settle == "before":
            await gw.payments.settle(claim)
        upstream = await gw.upstream.send(
            request,
            base_url=route_upstream(gw, route),
            path=path,
            query=query,
            add_headers={gw.settings.payer_header: matched.payer, "X-Request-Id": request_id},
            drop_headers=gw.drop_headers,
        )
        if upstream.status >= 400 or request.method == "HEAD":
            # Nothing is charged for an origin failure, nor for a HEAD that carries no body.
            await settle_missed(gw, claim, f"origin answered {upstream.status}")
            return await relay(request, upstream, extra_headers={"Cache-Control": "private"})
        if claim.settled is None:
            try:
                await gw.payments.settle(claim)
            except GatewayError:
                await gw.upstream.discard(upstream)
                raise
        assert claim.settled is not None
        receipt = dict([settlement_header(claim.settled, matched.version)])
        return await relay(
            request,
            upstream,
            extra_headers={**receipt, "Cache-Control": "private", **server_timing(gw, claim)},
        )
    except GatewayError as exc:
        if claim is not None:
            await settle_missed(gw, claim, exc.reason)
        return answers.error_response(request, exc, gw.challenges, route, resource_url, request_id)


def find_route(gw: Gateway, method: str, path: str) -> RouteSettings | None:
    found = gw.routes.match(method, match_key(path, gw.settings.case_insensitive_paths))
    if found.route is None and found.allowed:
        allow = ", ".join(sorted(found.allowed))
        raise MethodNotAllowed(
            f"{method} is not routed here; use {allow}", headers={"Allow": allow}
        )
    return found.route


def route_upstream(gw: Gateway, route: RouteSettings | None) -> str:
    return (route.upstream if route is not None else None) or gw.settings.upstream


async def settle_missed(gw: Gateway, claim: Claim, why: str) -> None:
    """The request will not be served: release the claim, or, if the payment was already
    settled up front, record the refund the operator owes."""
    if claim.settled is not None and claim.settled.success:
        await gw.payments.refund_due(claim, why)
    else:
        await gw.payments.release(claim)


def server_timing(gw: Gateway, claim: Claim) -> dict[str, str]:
    if not gw.settings.server_timing:
        return {}
    parts = [f"{name};dur={secs * 1000:.2f}" for name, secs in claim.timings.items()]
    return {"Server-Timing": ", ".join(parts)}


async def logged(request: web.Request) -> web.StreamResponse:
    """One access line per request, whatever happened."""
    gw = request.app[GATEWAY]
    started = time.perf_counter()
    status = 500
    response: web.StreamResponse | None = None
    async with gw.in_flight.track():
        try:
            response = await handle(request)
            status = response.status
            return response
        finally:
            access.info(
                "request",
                method=request.method,
                path=request.raw_path,
                status=status,
                bytes=getattr(response, "body_length", 0),
                duration_ms=round((time.perf_counter() - started) * 1000, 3),
            )


def create_app(settings: Settings) -> web.Application:
    app = web.Application(
        client_max_size=0, handler_args={"max_field_size": settings.limits.header_size}
    )
    app.cleanup_ctx.append(lambda a: _lifespan(a, settings))
    app.router.add_route("*", "/{tail:.*}", logged)
    return app


async def _lifespan(app: web.Application, settings: Settings) -> AsyncIterator[None]:
    store = open_store(settings.store)
    payments = Payments(open_facilitator(settings), store)
    upstream = Upstream(settings)
    await upstream.start()
    problems = await payments.start()
    app[GATEWAY] = Gateway(
        settings=settings,
        routes=RouteTable(settings.routes, settings.case_insensitive_paths),
        challenges=Challenges(settings),
        upstream=upstream,
        payments=payments,
        in_flight=InFlight(),
        drop_headers=(*PAYMENT_HEADERS, settings.payer_header),
    )
    yield
    await upstream.close()
    await payments.close()
    await store.close()
