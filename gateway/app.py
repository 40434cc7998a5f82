"""The request flow, top to bottom: match -> challenge or decode -> claim -> verify -> forward
-> settle -> stream. Each step is a call into its own package; this file only orders them.

The map of the package, in the order a request meets it:

- `gateway.serving`: the process (runner phases, listener, workers, admin) and its shared
  state (`serving.state`: requests in flight, draining, the reload hook);
- `gateway.app` (here): `entry()` -> `handle()` -> `finish()`, one `RequestRecord` per request;
  `gateway.paid`: a verified payment forwarded, settled and relayed (or answered by its
  scheme); `gateway.sign_in`: Sign-In-With-X, pay once then sign in; `gateway.voucher_road`:
  a plain channel voucher on memory state, with only what it needs;
- `gateway.composition`: one generation's parts built from settings (`Parts` is the seam);
  `gateway.reload`: swapping generations on SIGHUP or `--watch`;
- `gateway.proxy`: canonical paths, the route table, header hygiene, the streaming relay;
- `gateway.payment`: decode, match, challenge, receipts, outcome (pure); `engine` (claim,
  verify, settle) on `gateway.store` and `gateway.facilitators`;
- `gateway.answers`: every `GatewayError` as HTTP; `gateway.errors`: the one exception tree;
- `gateway.observe`: the record, the access line, metrics, logs;
- `gateway.config`: YAML to frozen settings, at start-up only; `gateway.formats`: one
  validator per format, shared by config and request-time code.
"""

from __future__ import annotations

import functools
import itertools
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import ClientResponse, web

from gateway import answers, mcp_tools, wellknown
from gateway.composition import Parts
from gateway.config.settings import RouteSettings, Settings
from gateway.errors import GatewayError, MethodNotAllowed, PaymentError
from gateway.generation import Generation
from gateway.observe import access
from gateway.observe.metrics import Metrics
from gateway.observe.record import RequestRecord
from gateway.paid import answered_by_scheme, forward_paid, paid_headers
from gateway.payment.challenge import ERROR_PAYMENT_REQUIRED
from gateway.payment.decode import decode_payment
from gateway.payment.limits import client_ip
from gateway.payment.match import MatchedPayment, match_requirement
from gateway.payment.retries import Ticket
from gateway.proxy.headers import is_trusted
from gateway.proxy.paths import canonicalize
from gateway.proxy.routes import route_rows
from gateway.proxy.upstream import relay
from gateway.reload import LiveGateway
from gateway.serving.admin import FunctionCheck, make_admin_app
from gateway.serving.state import RELOAD, SERVER_STATE, attach_state
from gateway.sign_in import signed_in, with_sign_in
from gateway.voucher_road import voucher_road

LIVE = web.AppKey("gateway_live", LiveGateway)  # the current generation: LIVE.current
METRICS = web.AppKey("metrics", Metrics)


async def handle(request: web.Request, gw: Generation, record: RequestRecord) -> web.StreamResponse:
    started = time.perf_counter()
    resource: answers.PricedResource | None = None  # set once the request is for a price
    try:
        path, query = canonicalize(request.raw_path)
        if request.method == "OPTIONS" and (allow := gw.routes.priced_allow(path)) is not None:
            return answers.options_response(request, allow, gw.cors)
        ip = client_ip(request.remote, request.headers.getall("X-Forwarded-For", []), gw.settings)
        route = await route_at_price(request, gw, record, (path, query), ip)
        forward = functools.partial(
            gw.upstream.send,
            request,
            base_url=(route and route.upstream) or gw.settings.upstream,
            path=path,
            query=query,
            drop_headers=gw.drop_headers,
        )
        if route is None or route.free:  # an MCP endpoint too: priced per tool, if at all
            return await not_priced(request, gw, route, forward, record.request_id)
        url = gw.challenges.resource_url(request, path, query)
        resource = answers.PricedResource(gw.challenges, route, url)
        step = await sign_in_or_pay(request, gw, record, resource, forward, path=path, ip=ip)
        # A plain voucher on a channel in memory takes its own road (gateway/voucher_road.py).
        step = await voucher_road(request, gw, record, step, forward=forward, started=started)
        if isinstance(step, web.StreamResponse):
            return step  # signed in (SIWX), a challenge, a named payment's kept response,
            # or a voucher served on its road
        matched, ticket = step
        async with gw.payments.claimed(matched, route, record.request_id) as claim:
            record.claim = claim
            await gw.payments.verify(claim)
            gw.metrics.verified()
            if claim.skip is not None:  # the scheme answers itself (a channel's refund)
                return await answered_by_scheme(request, gw, claim)
            return await forward_paid(
                request, gw, claim, forward=forward, ticket=ticket, record=record, started=started
            )
    except GatewayError as exc:
        record.error = exc
        if resource is not None and isinstance(exc, PaymentError):
            resource = await with_sign_in(gw, resource)
        return answers.error_response(request, exc, resource, record.request_id, gw.cors)


async def payment_step(
    request: web.Request, gw: Generation, resource: answers.PricedResource, ip: str
) -> tuple[MatchedPayment, Ticket | None] | web.StreamResponse:
    """The payment, matched against the route's own terms and let past the limits (before
    the claim: a flood, or a payer over its daily cap, costs no facilitator call); or the
    answer without one: a challenge, or the kept response of a payment already served."""
    route = resource.route
    payment = decode_payment(request.headers, gw.settings.limits.payment_header)
    if payment is None:
        await gw.limiter.check(route, ip)
        resource = await with_sign_in(gw, resource)  # a route with `access` offers SIWX too
        return answers.challenge_response(request, resource, ERROR_PAYMENT_REQUIRED, cors=gw.cors)
    matched = match_requirement(
        route, payment, resource.url, gw.payments.channel_ids, gw.payments.signatures
    )
    ticket = await gw.retries.start(matched)
    if isinstance(ticket, web.Response):
        return ticket
    await gw.limiter.check(route, ip, matched.payer, matched.requirement)
    return matched, ticket


async def not_priced(
    request: web.Request,
    gw: Generation,
    route: RouteSettings | None,
    forward: mcp_tools.Forward,
    request_id: str,
) -> web.StreamResponse:
    """A free route, or an MCP endpoint (whose priced tool calls are in the JSON-RPC)."""
    if route is not None and route.mcp is not None:
        return await mcp_tools.handle(request, gw, route, forward, request_id)
    return await relay(request, await forward(add_headers={"X-Request-Id": request_id}))


async def route_at_price(
    request: web.Request, gw: Generation, record: RequestRecord, target: tuple[str, str], ip: str
) -> RouteSettings | None:
    """The request's route at this request's price (a dynamic one resolved first: the hook
    or the rules), a free one counted against its own rates."""
    path, query = target
    route = record.route = find_route(gw, request.method, path)
    if route is not None and route.dynamic:
        route = record.route = await gw.prices.resolve(
            route, request.method, path, query, request.headers
        )
    if route is not None and route.free:
        await gw.limiter.check(route, ip)
    return route


async def sign_in_or_pay(  # noqa: PLR0913  the request's parts; `path`, `ip` keyword-only
    request: web.Request,
    gw: Generation,
    record: RequestRecord,
    resource: answers.PricedResource,
    forward: Callable[..., Awaitable[ClientResponse]],
    *,
    path: str,
    ip: str,
) -> tuple[MatchedPayment, Ticket | None] | web.StreamResponse:
    """The origin's answer for a payer signed in with SIWX (it paid for this route within its
    access window: `X-Payer` as for a paid call, nothing settled); else `payment_step()`."""
    payer = await signed_in(gw, resource.route, path, request.headers, ip)
    if payer is None:
        return await payment_step(request, gw, resource, ip)
    record.signed_in = payer  # counted and logged as a sign-in (gateway.observe)
    upstream = await forward(
        add_headers={gw.settings.payer_header: payer, "X-Request-Id": record.request_id}
    )
    return await relay(request, upstream, paid_headers(gw, request, upstream), paid=True)


def find_route(gw: Generation, method: str, path: str) -> RouteSettings | None:
    found = gw.routes.match(method, path)
    if found.route is None and found.allowed:
        allow = ", ".join(sorted(found.allowed | {"OPTIONS"}))
        raise MethodNotAllowed(
            f"{method} is not routed here; use {allow}", headers={"Allow": allow}
        )
    return found.route


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
    record = RequestRecord(
        request_id=request.app[REQUEST_IDS].of(request, gw.settings),
        method=request.method,
        path=request.rel_url.raw_path,  # never the query: it may carry an origin's API key
        generation=gw.generation,
    )
    started = time.perf_counter()
    state = request.app[SERVER_STATE]
    state.request_started(request.transport)
    async with state.in_flight.track(), gw.users.track():
        try:
            if wellknown.serves(gw.settings, request.method, request.rel_url.raw_path):
                response: web.StreamResponse = wellknown.response(
                    request, gw.settings, gw.challenges
                )
            else:
                response = await handle(request, gw, record)
            await finish(request, response)
            state.request_done(request.transport)  # idle until its next request
            record.status, record.sent = response.status, response.body_length
            return response
        finally:
            record.seconds = time.perf_counter() - started
            gw.metrics.observe(record)
            access.write(record)


async def finish(request: web.Request, response: web.StreamResponse) -> None:
    """Send the response's end now rather than after the handler (aiohttp's way), so the
    access line has the bytes really sent and the total time covers the whole body."""
    try:
        await response.prepare(request)
        await response.write_eof()
    except ConnectionError:
        pass  # the client has gone (or the relay cut it off): the line says how far it got


def create_app(
    settings: Settings, *, parts: Parts | None = None, watch: bool = False
) -> web.Application:
    """The gateway app. `parts`: how each generation's parts are made (fakes in tests);
    `watch`: reload the config file whenever it changes."""
    app = web.Application(client_max_size=0)
    app[METRICS] = metrics = Metrics()
    app[LIVE] = live = LiveGateway(metrics, parts)
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
