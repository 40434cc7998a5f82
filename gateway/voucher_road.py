"""The voucher road (issue 14): a plain channel voucher on a channel this process holds in
memory, its match remembered (`gateway.payment.voucher_memo`), served with only what that
voucher needs: checked, claimed and its channel reserved in one step
(`gateway.payment.voucher_road.VoucherRoad.take`, in place of the claim's context manager
and the engine's verify), then forwarded, charged and relayed by `gateway.paid` as every
paid call is, the charge being the road's one plain call (`VoucherRoad.settle`). It takes
no voucher that needs what the road leaves out (settle first, metering, a named payment's
kept response). Whatever it declines goes the full path in `handle()`, untouched.

What the payer sees is the full path's: the same statuses, receipt and headers; a copy of a
voucher in flight or used is declined here (its claim is held) and answered there (409, or
the corrective 402); an origin failure or a hang-up releases the claim and the reservation
(`Payments.end_early`, as the claim's context manager does).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from aiohttp import ClientResponse, web

from gateway.generation import Generation
from gateway.observe.record import RequestRecord
from gateway.paid import forward_paid
from gateway.payment.match import MatchedPayment
from gateway.payment.retries import Ticket

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
        # `forward_paid` as for every paid call: not settled first, not metered, no payment
        # identifier (all checked above); only the charge is the road's.
        return await forward_paid(
            request,
            gw,
            claim,
            forward=forward,
            ticket=None,
            record=record,
            started=started,
            charge=road.settle,
        )
    except BaseException as exc:
        await asyncio.shield(gw.payments.end_early(claim, exc))
        raise
