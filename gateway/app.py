"""The request flow, top to bottom: match -> challenge or decode -> claim -> verify -> forward
-> settle -> stream. Each step is a call into its own module; this file only orders them."""

from __future__ import annotations

import asyncio
import functools
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

from aiohttp import web

from . import answers
from .admin import FunctionCheck, make_admin_app
from .challenge import ERROR_PAYMENT_REQUIRED, Challenges, settlement_header
from .errors import GatewayError, MethodNotAllowed
from .facilitators import open_facilitator
from .headers import is_trusted
from .logs import get_logger
from .metrics import Metrics
from .paths import canonicalize
from .payment_wire import decode_payment, match_requirement
from .payments import Claim, Payments
from .proxy import Upstream, relay
from .routes import RouteTable
from .server import SERVER_STATE, attach_state
from .settings import RouteSettings, Settings
from .store import open_store

PAYMENT_HEADERS = ("PAYMENT-SIGNATURE", "X-PAYMENT")
PRIVATE = {"Cache-Control": "private"}
access = get_logger("gateway.access")
log = get_logger("gateway")


@dataclass(frozen=True, slots=True)
class Gateway:
    """Everything one app's requests share, built once at start-up."""

    settings: Settings
    routes: RouteTable
    challenges: Challenges
    upstream: Upstream
    payments: Payments
    metrics: Metrics
    drop_headers: tuple[str, ...]


GATEWAY = web.AppKey("gateway", Gateway)
METRICS = web.AppKey("metrics", Metrics)


async def handle(request: web.Request, gw: Gateway, request_id: str) -> web.StreamResponse:
    route: RouteSettings | None = None
    resource_url = ""
    try:
        path, query = canonicalize(request.raw_path)
        route = request["route"] = find_route(gw, request.method, path)
        resource_url = gw.challenges.resource_url(request, path, query)
        forward = functools.partial(
            gw.upstream.send,
            request,
            base_url=(route and route.upstream) or gw.settings.upstream,
            path=path,
            query=query,
            drop_headers=gw.drop_headers,
        )
        if route is None or route.free:
            upstream = await forward(add_headers={"X-Request-Id": request_id})
            return await relay(request, upstream)
        payment = decode_payment(request.headers, gw.settings.limits.payment_header)
        if payment is None:
            return answers.challenge(
                request, gw.challenges, route, resource_url, ERROR_PAYMENT_REQUIRED
            )
        matched = match_requirement(route, payment, resource_url)
        async with gw.payments.claimed(matched, route, request_id) as claim:
            await gw.payments.verify(claim)
            if route.settle == "before":
                await gw.payments.settle(claim)
            started = time.perf_counter()
            upstream = await forward(
                add_headers={gw.settings.payer_header: matched.payer, "X-Request-Id": request_id}
            )
            claim.timings["origin"] = time.perf_counter() - started
            if upstream.status >= 400 or request.method == "HEAD":
                # Nothing is charged for an origin failure, nor for a HEAD (it has no body).
                await gw.payments.abandon(claim, f"origin answered {upstream.status}")
                return await relay(request, upstream, PRIVATE, expose_x402=True)
            if claim.settled is None:
                try:
                    await gw.payments.settle(claim)
                except GatewayError:
                    await gw.upstream.discard(upstream)  # settlement failed: serve nothing
                    raise
            assert claim.settled is not None
            receipt = dict([settlement_header(claim.settled, matched.version)])
            account(gw, claim, route)
            return await relay(
                request, upstream, {**receipt, **PRIVATE, **timing(gw, claim)}, expose_x402=True
            )
    except GatewayError as exc:
        if route is not None and not route.free:
            gw.metrics.payments.labels("refused", exc.reason).inc()
        return answers.error_response(request, exc, gw.challenges, route, resource_url, request_id)


def find_route(gw: Gateway, method: str, path: str) -> RouteSettings | None:
    found = gw.routes.match(method, path)
    if found.route is None and found.allowed:
        allow = ", ".join(sorted(found.allowed | {"OPTIONS"}))
        raise MethodNotAllowed(
            f"{method} is not routed here; use {allow}", headers={"Allow": allow}
        )
    return found.route


def account(gw: Gateway, claim: Claim, route: RouteSettings) -> None:
    """Metrics for a settled payment."""
    m, req = gw.metrics, claim.matched.requirement
    m.payments.labels("settled", "").inc()
    m.revenue.labels(req.asset, req.network, route.name).inc(req.amount)
    for name, hist in (
        ("verify", m.verify_seconds),
        ("settle", m.settle_seconds),
        ("origin", m.origin_seconds),
    ):
        if name in claim.timings:
            hist.observe(claim.timings[name])


def timing(gw: Gateway, claim: Claim) -> dict[str, str]:
    """The opt-in `Server-Timing` header: where a paid request's time went."""
    if not gw.settings.server_timing:
        return {}
    parts = [f"{name};dur={secs * 1000:.2f}" for name, secs in claim.timings.items()]
    return {"Server-Timing": ", ".join(parts)}


def request_id_of(request: web.Request, settings: Settings) -> str:
    """A proxy we trust may hand us the id to keep; anyone else gets a fresh one."""
    given = request.headers.get("X-Request-Id")
    if given and len(given) <= 128 and is_trusted(request.remote, settings.trusted_proxies):
        return given
    return uuid.uuid4().hex


async def entry(request: web.Request) -> web.StreamResponse:
    """One access line and the request metrics, whatever happened."""
    gw = request.app[GATEWAY]
    request_id = request_id_of(request, gw.settings)
    started = time.perf_counter()
    response: web.StreamResponse | None = None
    async with request.app[SERVER_STATE].in_flight.track():
        try:
            response = await handle(request, gw, request_id)
            return response
        finally:
            status = response.status if response is not None else 499
            route: RouteSettings | None = request.get("route")
            label = route.name if route is not None else "-"
            elapsed = time.perf_counter() - started
            gw.metrics.requests.labels(label, request.method, str(status)).inc()
            access.info(
                "request",
                request_id=request_id,
                method=request.method,
                path=request.raw_path,
                route=label,
                status=status,
                bytes=response.body_length if response is not None else 0,
                duration_ms=round(elapsed * 1000, 3),
            )


def create_app(settings: Settings) -> web.Application:
    app = web.Application(client_max_size=0)
    app[METRICS] = metrics = Metrics()
    state = attach_state(app)
    metrics.in_flight.set_function(lambda: state.in_flight.count)
    app.cleanup_ctx.append(lambda a: lifespan(a, settings))
    app.router.add_route("*", "/{tail:.*}", entry)
    return app


def create_admin_app(main_app: web.Application) -> web.Application:
    # The gateway's parts exist only once the main app has started: look them up per probe.
    async def store() -> None:
        await main_app[GATEWAY].payments.store.ping()

    async def facilitator() -> None:
        await main_app[GATEWAY].payments.facilitator.ping()

    async def metrics(_: web.Request) -> web.Response:
        body, content_type = main_app[METRICS].render()
        return web.Response(body=body, headers={"Content-Type": content_type})

    checks = [FunctionCheck("store", store), FunctionCheck("facilitator", facilitator)]
    return make_admin_app(main_app, checks, metrics_handler=metrics)


async def lifespan(app: web.Application, settings: Settings) -> AsyncIterator[None]:
    store = open_store(settings.store)
    payments = Payments(open_facilitator(settings), store)
    upstream = Upstream(settings)
    await upstream.start()
    for problem in await payments.start():
        log.warning("facilitator_unavailable_at_start", problem=problem)
    for problem in payments.unsupported(settings.routes):
        log.error("route_unsupported", problem=problem)
    refresher = asyncio.create_task(payments.keep_refreshing())
    app[GATEWAY] = Gateway(
        settings=settings,
        routes=RouteTable(settings.routes, settings.case_insensitive_paths),
        challenges=Challenges(settings),
        upstream=upstream,
        payments=payments,
        metrics=app[METRICS],
        drop_headers=(*PAYMENT_HEADERS, settings.payer_header),
    )
    yield
    refresher.cancel()
    await upstream.close()
    await payments.close()
    await store.close()
