"""A verified payment's answer: settled first if the route says so, forwarded to the origin,
settled for what it answered and relayed with its receipt; or answered by its scheme itself.
What `handle()` (gateway/app.py) calls once a claim is verified.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable

from aiohttp import ClientResponse, web
from x402.schemas import SettleResponse

from gateway.config.settings import RouteSettings
from gateway.errors import GatewayError, StoreUnavailable
from gateway.generation import Generation
from gateway.observe.logs import get_logger
from gateway.observe.record import RequestRecord
from gateway.payment.metering import settle_amount
from gateway.payment.paid_claim import Claim
from gateway.payment.receipts import receipt_headers
from gateway.payment.retries import Ticket
from gateway.payment.streamed import relay_metered_stream, streams_usage
from gateway.proxy.upstream import relay

# How a claim is charged: `Payments.settle` (claim, metered amount or None), unless a road of
# its own charges it (gateway/voucher_road.py; a metered stream settles through `gw.payments`).
Charge = Callable[[Claim, int | None], Awaitable[SettleResponse]]

# A paid answer is for its payer alone: no shared cache (nor a CDN, whose own directives
# the relay strips) may keep it and hand it to someone who did not pay (issue 12 item 7).
PRIVATE = {"Cache-Control": "private, no-store"}
log = get_logger("gateway.sessions")  # the access record is the sessions' (remember_payment)


async def forward_paid(  # noqa: PLR0913  the request, its payment and its origin's answer
    request: web.Request,
    gw: Generation,
    claim: Claim,
    *,
    forward: Callable[..., Awaitable[ClientResponse]],
    ticket: Ticket | None,
    record: RequestRecord,
    started: float,
    charge: Charge | None = None,
) -> web.StreamResponse:
    """A verified payment: settled first if the route says so, then forwarded to the origin;
    its answer relayed (an origin failure charges nothing) and settled (`settle_and_relay`);
    `charge`: how (None: `gw.payments.settle`)."""
    route, matched = record.route, claim.matched
    assert route is not None
    if route.settle == "before":
        await (charge or gw.payments.settle)(claim, None)
    sent = time.perf_counter()
    upstream = await forward(
        add_headers={
            gw.settings.payer_header: matched.payer,
            "X-Request-Id": record.request_id,
        }
    )
    claim.timings.origin = time.perf_counter() - sent
    if upstream.status >= 400:
        # Nothing is charged for an origin failure. A paid HEAD is charged as a GET:
        # the origin ran its GET handler for it (Express does), so it bought a response.
        await gw.payments.abandon(claim, f"origin answered {upstream.status}")
        return await relay(request, upstream, paid_headers(gw, request, upstream), paid=True)
    return await settle_and_relay(
        request,
        gw,
        upstream,
        claim=claim,
        ticket=ticket,
        record=record,
        started=started,
        charge=charge,
    )


async def settle_and_relay(  # noqa: PLR0913  the request, its payment and its origin's answer
    request: web.Request,
    gw: Generation,
    upstream: ClientResponse,
    *,
    claim: Claim,
    ticket: Ticket | None,
    record: RequestRecord,
    started: float,
    charge: Charge | None = None,
) -> web.StreamResponse:
    """The origin answered < 400: settle (what a metered route's origin stated), then relay;
    a metered stream is relayed first and settled after its last byte."""
    route, matched = record.route, claim.matched
    assert route is not None
    if streams_usage(route, upstream.headers):
        # The amount comes with the stream's end: settled after the last byte.
        return await relay_metered_stream(
            request,
            upstream,
            payments=gw.payments,
            claim=claim,
            route=route,
            extra_headers=paid_headers(gw, request, upstream),
        )
    amount: int | None = None  # settled before forwarding: the requirement's
    if claim.settled is None:
        try:
            amount = settle_amount(route, matched.requirement, upstream.headers, record.request_id)
            await (charge or gw.payments.settle)(claim, amount)
        except GatewayError:
            await gw.upstream.discard(upstream)  # settlement failed: serve nothing
            raise
    assert claim.settled is not None
    await gw.limiter.count_spend(matched.payer, matched.requirement, time.time())
    if amount != 0:  # a metered call that used nothing paid nothing: it opens no access window
        await remember_payment(gw, route, matched.payer)
    receipt = receipt_headers(claim.settled, matched.version)
    extra = {**paid_headers(gw, request, upstream), **receipt, **timing(gw, claim, started)}
    return await gw.retries.relay(ticket, request, upstream, extra, receipt)


async def answered_by_scheme(
    request: web.Request, gw: Generation, claim: Claim
) -> web.StreamResponse:
    """A verified payment its scheme answers itself (a batch-settlement cooperative refund:
    the payer closes its channel): settled (the refund, through the facilitator), never
    forwarded to the origin; the scheme's body with the receipt, as the SDK's server does."""
    settled = await gw.payments.settle(claim)
    assert claim.skip is not None
    body = claim.skip.body if claim.skip.body is not None else {}
    headers = {
        "Content-Type": claim.skip.content_type or "application/json",
        **PRIVATE,
        **gw.cors.allow_origin(request.headers.get("Origin")),
        **receipt_headers(settled, claim.matched.version),
    }
    data = body if isinstance(body, str | bytes) else json.dumps(body)
    return web.Response(status=200, body=data, headers=headers)


async def remember_payment(gw: Generation, route: RouteSettings, payer: str) -> None:
    """Settled: the payer may sign in to `route` for its access window. The payer is served
    whatever happens here; without the record it pays again next time, never the reverse."""
    if gw.sessions is None or route.access is None:
        return
    try:
        await gw.sessions.paid(route, payer)
    except StoreUnavailable as exc:
        log.error("access_record_failed", route=route.name, payer=payer, error=exc.detail)


def paid_headers(gw: Generation, request: web.Request, upstream: ClientResponse) -> dict[str, str]:
    """What a relayed answer on a priced path gets on top of the origin's: `private,
    no-store`, and the gateway's CORS headers when the origin sent none (the gateway
    answered this path's preflight, so a page that paid must be let to read the answer)."""
    if "Access-Control-Allow-Origin" in upstream.headers:
        return PRIVATE
    return {**PRIVATE, **gw.cors.allow_origin(request.headers.get("Origin"))}


def timing(gw: Generation, claim: Claim, started: float) -> dict[str, str]:
    """The opt-in `Server-Timing` header: where a paid request's time went up to the response
    head (verify, origin, settle), and `gw`, the gateway's own share of it."""
    if not gw.settings.server_timing:
        return {}
    total = time.perf_counter() - started
    spans = claim.timings.spans()
    spans["gw"] = total - sum(spans.values())
    spans["total"] = total
    # A list, not a generator: one call instead of one per span.
    return {"Server-Timing": ", ".join([f"{k};dur={v * 1000:.3f}" for k, v in spans.items()])}
