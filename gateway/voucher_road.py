"""The voucher road (issue 14): a plain channel voucher on a channel this process holds in
memory, its match remembered (`gateway.payment.voucher_memo`), served with only what that
voucher needs: checked, claimed and its channel reserved in one step
(`gateway.payment.voucher_road.VoucherRoad.take`, in place of the claim's context manager
and the engine's verify), forwarded, charged in one plain call (`VoucherRoad.settle`) and
relayed as `gateway.paid` relays every paid answer (its helpers), without the branches a
voucher has no use for (settle first, metering, a named payment's kept response). Whatever
it declines goes the full path in `handle()`, untouched.

What the payer sees is the full path's: the same statuses, receipt and headers; a copy of a
voucher in flight or used is declined here (its claim is held) and answered there (409, or
the corrective 402); an origin failure or a hang-up releases the claim and the reservation
(`Payments.end_early`, as the claim's context manager does).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from aiohttp import ClientResponse, web

from gateway.errors import GatewayError
from gateway.generation import Generation
from gateway.observe.record import RequestRecord
from gateway.paid import paid_headers, remember_payment, timing
from gateway.payment.match import MatchedPayment
from gateway.payment.receipts import receipt_headers
from gateway.payment.retries import Ticket
from gateway.payment.voucher_road import VoucherRoad
from gateway.proxy.upstream import relay

# What `sign_in_or_pay` gives `handle()`: a payment to claim and serve, or the answer.
Step = tuple[MatchedPayment, Ticket | None] | web.StreamResponse


async def voucher_road(  # noqa: PLR0913  the request, its payment and its origin
    request: web.Request,
    gw: Generation,
    record: RequestRecord,
    step: Step,
    *,
    forward: Callable[..., Awaitable[ClientResponse]],
    started: float,
) -> Step:
    """The paid answer for a voucher the road takes; else `step` as it came (nothing done:
    a response already, a named payment, or the full path's to serve)."""
    road, route = gw.payments.road, record.route
    if road is None or route is None or route.settle != "after" or route.metered is not None:
        return step
    if isinstance(step, web.StreamResponse) or step[1] is not None:
        return step
    claim = await road.take(step[0], route, record.request_id)
    if claim is None:
        return step
    record.claim = claim
    gw.metrics.verified()
    try:
        return await _served(request, gw, record, road, forward=forward, started=started)
    except BaseException as exc:
        await asyncio.shield(gw.payments.end_early(claim, exc))
        raise


async def _served(  # noqa: PLR0913  the request, its claim and its origin
    request: web.Request,
    gw: Generation,
    record: RequestRecord,
    road: VoucherRoad,
    *,
    forward: Callable[..., Awaitable[ClientResponse]],
    started: float,
) -> web.StreamResponse:
    """`forward_paid` and `settle_and_relay` (gateway/paid.py) for this voucher: not settled
    first, not metered, no payment identifier; the charge is the road's."""
    claim, route = record.claim, record.route
    assert claim is not None and route is not None
    matched = claim.matched
    sent = time.perf_counter()
    upstream = await forward(
        add_headers={gw.settings.payer_header: matched.payer, "X-Request-Id": record.request_id}
    )
    claim.timings.origin = time.perf_counter() - sent
    if upstream.status >= 400:
        # Nothing is charged for an origin failure (`forward_paid`).
        await gw.payments.abandon(claim, f"origin answered {upstream.status}")
        return await relay(request, upstream, paid_headers(gw, request, upstream), paid=True)
    try:
        settled = await road.settle(claim)
    except GatewayError:
        await gw.upstream.discard(upstream)  # settlement failed: serve nothing
        raise
    await gw.limiter.count_spend(matched.payer, matched.requirement, time.time())
    await remember_payment(gw, route, matched.payer)
    receipt = receipt_headers(settled, matched.version)
    extra = {**paid_headers(gw, request, upstream), **receipt, **timing(gw, claim, started)}
    return await relay(request, upstream, extra, paid=True)
