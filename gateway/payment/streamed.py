"""Metered streams: an `upto` route whose origin answers with server-sent events and states
its usage in the stream's last event of the name the route configures
(`stream_usage: {sse_event: usage}`, data `{"amount": ...}` as in `Settlement-Overrides`).

The amount is known only at the end, so the order differs from every other paid response:
status and headers go out at once (no `PAYMENT-RESPONSE` yet), the body streams through as
it comes (never buffered: the watcher keeps one line), the payment settles after the last
byte, and the receipt reaches the client as a final SSE event, `payment-response`, whose data
is the settlement (the `PAYMENT-RESPONSE` JSON). HTTP trailers cannot carry it: aiohttp
neither exposes an origin's trailers (its parser drops them) nor sends any.

Decisions:
- The origin states nothing in the stream: its `Settlement-Overrides` header if it sent one
  with the head, else the route's `default` (the maximum unless configured).
- The client leaves early: the origin's stream is cut, and what the origin stated before that
  moment is settled (else the route's `default`): the payer authorized up to the maximum and
  the origin did the work until the client left.
- The origin fails mid-stream (reset, idle timeout): nothing is settled and the claim is
  released; the client's connection is cut so its body never looks complete.
- The settlement fails after the stream was served: logged as an error
  (`settlement_failed_after_stream`: served, not paid; the verify before forwarding makes it
  rare), and the final event says so; the record keeps the failure.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping

import aiohttp
from aiohttp import web
from x402.schemas import SettleResponse

from gateway.config.settings import RouteSettings
from gateway.errors import GatewayError
from gateway.observe.logs import get_logger
from gateway.payment.engine import Payments
from gateway.payment.metering import OVERRIDES_HEADER, Usage, logged, stated_amount, usage
from gateway.payment.paid_claim import Claim
from gateway.proxy.sse import LastEvent, event, is_event_stream
from gateway.proxy.upstream import relay_watched

log = get_logger("gateway.payments")

RECEIPT_EVENT = "payment-response"


def streams_usage(route: RouteSettings, headers: Mapping[str, str]) -> bool:
    """Whether this response is a metered stream whose amount comes at its end."""
    metered = route.metered
    return (
        metered is not None
        and metered.sse_event is not None
        and is_event_stream(headers.get("Content-Type", ""))
    )


def _used(route: RouteSettings, claim: Claim, found: str | None, head: str | None) -> Usage:
    assert route.metered is not None
    stated, problem = stated_amount(found if found is not None else head)
    return usage(stated, problem, claim.matched.requirement, route.metered)


async def _settle(payments: Payments, claim: Claim, amount: int) -> SettleResponse:
    try:
        return await payments.settle(claim, amount)
    except GatewayError as exc:
        # Served, not paid: the operator must know (the record says "failed" or "pending").
        log.error(
            "settlement_failed_after_stream",
            route=claim.record.route,
            request_id=claim.record.request_id,
            payer=claim.matched.payer,
            amount=str(amount),
            reason=exc.reason,
        )
        return SettleResponse(
            success=False,
            error_reason=exc.reason,
            transaction="",
            network=claim.record.network,
            payer=claim.matched.payer,
        )


async def relay_metered_stream(  # noqa: PLR0913  the request, its payment and its origin answer
    request: web.BaseRequest,
    upstream: aiohttp.ClientResponse,
    *,
    payments: Payments,
    claim: Claim,
    route: RouteSettings,
    extra_headers: Mapping[str, str],
) -> web.StreamResponse:
    """Stream the origin's events to the client, then settle what the last usage event
    stated and send the receipt as a final event."""
    assert route.metered is not None and route.metered.sse_event is not None
    watch = LastEvent(route.metered.sse_event)
    head = upstream.headers.get(OVERRIDES_HEADER)
    out, ending = await relay_watched(
        request, upstream, extra_headers, paid=True, tap=watch.feed, open_ended=True
    )
    if ending == "origin_failed":
        await payments.abandon(claim, "origin failed mid-stream")
        return out
    amount = logged(_used(route, claim, watch.found, head), route, claim.record.request_id)
    if ending == "client_gone":
        log.info(
            "stream_client_gone",
            route=route.name,
            request_id=claim.record.request_id,
            settled=amount,
        )
    result = await _settle(payments, claim, amount)
    if ending == "complete":
        receipt = result.model_dump_json(by_alias=True, exclude_none=True)
        with contextlib.suppress(ConnectionResetError):
            await out.write(event(RECEIPT_EVENT, receipt))
    return out
