"""The request flow, top to bottom: match -> challenge or decode -> claim -> verify -> forward
-> settle -> stream. Each step is a call into its own module; this file only orders them."""

from __future__ import annotations

import functools
import itertools
import os
import time
from collections.abc import AsyncIterator

from aiohttp import web

from gateway import answers
from gateway.config.settings import RouteSettings, Settings
from gateway.errors import GatewayError, MethodNotAllowed
from gateway.observe.logs import get_logger
from gateway.observe.metrics import VERIFIED, Metrics
from gateway.payment import decode_payment, match_requirement
from gateway.payment.challenge import ERROR_PAYMENT_REQUIRED, settlement_header
from gateway.payment.engine import Claim
from gateway.proxy.headers import is_trusted
from gateway.proxy.paths import canonicalize
from gateway.proxy.upstream import relay
from gateway.reload import Gateway, LiveGateway, route_rows
from gateway.serving.admin import FunctionCheck, make_admin_app
from gateway.serving.runner import RELOAD, SERVER_STATE, attach_state

PRIVATE = {"Cache-Control": "private"}
access = get_logger("gateway.access")
log = get_logger("gateway")

LIVE = web.AppKey("gateway_live", LiveGateway)  # the current generation: LIVE.current
METRICS = web.AppKey("metrics", Metrics)
# What handle() learned, for entry()'s metrics and access line.
ROUTE = web.RequestKey("route", RouteSettings)
CLAIM = web.RequestKey("claim", Claim)
ERROR = web.RequestKey("error", GatewayError)


async def handle(request: web.Request, gw: Gateway, request_id: str) -> web.StreamResponse:
    started = time.perf_counter()
    route: RouteSettings | None = None
    resource_url = ""
    try:
        path, query = canonicalize(request.raw_path)
        route = find_route(gw, request.method, path)
        if route is not None:
            request[ROUTE] = route
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
        resource_url = gw.challenges.resource_url(request, path, query)
        payment = decode_payment(request.headers, gw.settings.limits.payment_header)
        if payment is None:
            return answers.challenge(
                request, gw.challenges, route, resource_url, ERROR_PAYMENT_REQUIRED
            )
        matched = match_requirement(route, payment, resource_url)
        async with gw.payments.claimed(matched, route, request_id) as claim:
            request[CLAIM] = claim
            await gw.payments.verify(claim)
            gw.metrics.payments.labels(VERIFIED, "").inc()
            if route.settle == "before":
                await gw.payments.settle(claim)
            sent = time.perf_counter()
            upstream = await forward(
                add_headers={gw.settings.payer_header: matched.payer, "X-Request-Id": request_id}
            )
            claim.timings["origin"] = time.perf_counter() - sent
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
            return await relay(
                request,
                upstream,
                {**receipt, **PRIVATE, **timing(gw, claim, started)},
                expose_x402=True,
            )
    except GatewayError as exc:
        request[ERROR] = exc
        return answers.error_response(request, exc, gw.challenges, route, resource_url, request_id)


def find_route(gw: Gateway, method: str, path: str) -> RouteSettings | None:
    found = gw.routes.match(method, path)
    if found.route is None and found.allowed:
        allow = ", ".join(sorted(found.allowed | {"OPTIONS"}))
        raise MethodNotAllowed(
            f"{method} is not routed here; use {allow}", headers={"Allow": allow}
        )
    return found.route


def timing(gw: Gateway, claim: Claim, started: float) -> dict[str, str]:
    """The opt-in `Server-Timing` header: where a paid request's time went up to the response
    head (verify, origin, settle), and `gw`, the gateway's own share of it."""
    if not gw.settings.server_timing:
        return {}
    total = time.perf_counter() - started
    spans = {**claim.timings, "gw": total - sum(claim.timings.values()), "total": total}
    return {"Server-Timing": ", ".join(f"{k};dur={v * 1000:.3f}" for k, v in spans.items())}


class RequestIds:
    """Fresh request ids: a random prefix per process and a counter, unique across replicas
    and restarts without a syscall per request (as uuid4 would cost)."""

    def __init__(self) -> None:
        self._prefix = os.urandom(8).hex()
        self._counter = itertools.count(1)

    def of(self, request: web.Request, settings: Settings) -> str:
        """A proxy we trust may hand us the id to keep; anyone else gets a fresh one."""
        given = request.headers.get("X-Request-Id")
        if given and len(given) <= 128 and is_trusted(request.remote, settings.trusted_proxies):
            return given
        return f"{self._prefix}{next(self._counter):08x}"


REQUEST_IDS = web.AppKey("request_ids", RequestIds)


async def entry(request: web.Request) -> web.StreamResponse:
    """One access line and the request metrics, whatever happened."""
    gw = request.app[LIVE].current  # this request keeps this generation to its end
    request_id = request.app[REQUEST_IDS].of(request, gw.settings)
    started = time.perf_counter()
    response: web.StreamResponse | None = None
    async with request.app[SERVER_STATE].in_flight.track(), gw.users.track():
        try:
            response = await handle(request, gw, request_id)
            await finish(request, response)
            return response
        finally:
            observe(gw, request, request_id, response, time.perf_counter() - started)


async def finish(request: web.Request, response: web.StreamResponse) -> None:
    """Send the response's end now rather than after the handler (aiohttp's way), so the
    access line has the bytes really sent and the total time covers the whole body."""
    try:
        await response.prepare(request)
        await response.write_eof()
    except ConnectionError:
        pass  # the client has gone (or the relay cut it off): the line says how far it got


def observe(
    gw: Gateway,
    request: web.Request,
    request_id: str,
    response: web.StreamResponse | None,
    elapsed: float,
) -> None:
    status = response.status if response is not None else 499
    route = request.get(ROUTE)
    claim = request.get(CLAIM)
    error = request.get(ERROR)
    label = route.name if route is not None else "-"
    gw.metrics.observe_request(label, request.method, status, elapsed, error)
    paid: dict[str, object] = {}
    if route is not None and not route.free and (claim is not None or error is not None):
        paid = gw.metrics.observe_payment(label, claim, error, client_gone=response is None)
    access.info(
        "request",
        request_id=request_id,
        method=request.method,
        path=request.rel_url.raw_path,  # never the query: it may carry an origin's API key
        route=label,
        status=status,
        bytes=response.body_length if response is not None else 0,
        duration_ms=round(elapsed * 1000, 3),
        generation=gw.generation,
        **paid,
    )


def create_app(settings: Settings, *, watch: bool = False) -> web.Application:
    """The gateway app; `watch`: reload the config file whenever it changes."""
    app = web.Application(client_max_size=0)
    app[METRICS] = metrics = Metrics()
    app[LIVE] = live = LiveGateway(metrics)
    app[REQUEST_IDS] = RequestIds()
    app[RELOAD] = live.reload  # SIGHUP (gateway/serving/runner.py)
    state = attach_state(app)
    metrics.in_flight.set_function(lambda: state.in_flight.count)
    app.cleanup_ctx.append(lambda a: lifespan(a, settings, watch))
    app.router.add_route("*", "/{tail:.*}", entry)
    return app


def create_admin_app(main_app: web.Application) -> web.Application:
    # The gateway's parts exist only once the main app has started: look them up per probe.
    async def store() -> None:
        await main_app[LIVE].current.payments.store.ping()

    async def facilitator() -> None:
        await main_app[LIVE].current.payments.facilitator.ping()

    async def routes(_: web.Request) -> web.Response:
        gw = main_app[LIVE].current
        table = {
            "generation": gw.generation,
            "config": gw.settings.source,
            "routes": route_rows(gw.settings),
        }
        return web.json_response(table, headers={"Cache-Control": "no-store"})

    async def metrics(_: web.Request) -> web.Response:
        body, content_type = main_app[METRICS].render()
        return web.Response(body=body, headers={"Content-Type": content_type})

    checks = [FunctionCheck("store", store), FunctionCheck("facilitator", facilitator)]
    admin = make_admin_app(main_app, checks, metrics_handler=metrics)
    admin.router.add_get("/routes", routes)  # the live table (`x402-gateway routes`)
    return admin


async def lifespan(app: web.Application, settings: Settings, watch: bool) -> AsyncIterator[None]:
    live = app[LIVE]
    await live.start(settings, watch=watch)
    yield
    await live.close()  # after the requests in flight (see gateway/serving/runner.py)
