"""Paid MCP tools in front of an unchanged MCP server (streamable HTTP), as x402's MCP binding
has it (the SDK's `x402.mcp`): a priced `tools/call` without a payment is answered by the
gateway with a tool result `isError: true` whose `structuredContent` is the `PaymentRequired`
(the origin is not called); the payment travels in the call's `params._meta["x402/payment"]`
and is matched, claimed and verified as any other, then removed before the call is forwarded;
a successful result (not `isError`) is settled and carries the receipt in
`result._meta["x402/payment-response"]`; a failed one is not charged. Every other JSON-RPC
method, a free tool, GET (the server's event stream) and DELETE pass through untouched.

The request body is read whole (bounded) to price it. The origin may answer with JSON or with
an event stream: events are passed on as they come, except the one carrying this call's
response, which is held until it is settled.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from aiohttp import web
from x402.schemas import PaymentPayload, PaymentRequired, ResourceInfo

from gateway.config.settings import RateLimits, Requirement, RouteSettings
from gateway.errors import BadRequest, GatewayError, PayloadTooLarge, PaymentError
from gateway.generation import Generation
from gateway.payment.decode import DecodedPayment, nesting_exceeds
from gateway.payment.limits import client_ip
from gateway.payment.match import match_requirement
from gateway.payment.paid_claim import Claim
from gateway.payment.requirements import requirements_v2
from gateway.proxy.upstream import relay

MAX_BODY = 1 << 20  # a JSON-RPC request to price; larger is 413
MAX_ANSWER = 16 << 20  # a JSON (not streamed) tool result held for settlement
PAYMENT_META = "x402/payment"
RECEIPT_META = "x402/payment-response"
Forward = Callable[..., Awaitable[aiohttp.ClientResponse]]


def price_of(route: RouteSettings, message: Any) -> tuple[str, Requirement] | None:
    """(tool name, its requirement) when `message` is a priced `tools/call`."""
    pricing = route.mcp
    if pricing is None or not isinstance(message, dict) or message.get("method") != "tools/call":
        return None
    params = message.get("params")
    name = params.get("name") if isinstance(params, dict) else None
    if not isinstance(name, str):
        return None
    req = pricing.tools.get(name, pricing.default) if name in pricing.tools else pricing.default
    return (name, req) if req is not None else None


def tool_route(route: RouteSettings, name: str, req: Requirement) -> RouteSettings:
    """The endpoint as a route priced for one tool. Its own per-IP rate was counted when the
    request arrived (as for any request to the endpoint): only its per-payer one is left."""
    own = RateLimits(per_payer=route.rate_limits.per_payer)
    return dataclasses.replace(
        route,
        accepts=(req,),
        mcp=None,
        description=route.description or f"MCP tool {name}",
        rate_limits=own,
    )


def payment_required_result(route: RouteSettings, name: str, error: str) -> dict[str, Any]:
    """The binding's answer to an unpaid (or wrongly paid) priced call: a tool error result."""
    challenge = PaymentRequired(
        error=error,
        resource=ResourceInfo(url=f"mcp://tool/{name}", description=route.description),
        accepts=requirements_v2(route),
    ).model_dump(by_alias=True, exclude_none=True)
    return {
        "content": [{"type": "text", "text": json.dumps(challenge)}],
        "structuredContent": challenge,
        "isError": True,
    }


def _rpc(message: dict[str, Any], result: dict[str, Any]) -> web.Response:
    return web.json_response({"jsonrpc": "2.0", "id": message.get("id"), "result": result})


async def read_message(request: web.Request) -> tuple[bytes, Any]:
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise PayloadTooLarge(f"an MCP request over {MAX_BODY} bytes")
    body = await request.content.read(MAX_BODY + 1)
    while len(body) <= MAX_BODY and not request.content.at_eof():
        more = await request.content.read(MAX_BODY + 1 - len(body))
        if not more:
            break
        body += more
    if len(body) > MAX_BODY:
        raise PayloadTooLarge(f"an MCP request over {MAX_BODY} bytes")
    text = body.decode("utf-8", errors="replace")
    if nesting_exceeds(text):
        raise BadRequest("the JSON-RPC request is nested too deeply", reason="invalid_jsonrpc")
    try:
        return body, json.loads(text)
    except ValueError:
        raise BadRequest("the request is not JSON-RPC", reason="invalid_jsonrpc") from None


async def handle(
    request: web.Request, gw: Generation, route: RouteSettings, forward: Forward, request_id: str
) -> web.StreamResponse:
    """An MCP endpoint's request: free unless it is a priced `tools/call`."""
    if request.method != "POST":
        return await relay(request, await forward(add_headers={"X-Request-Id": request_id}))
    body, message = await read_message(request)
    batch = message if isinstance(message, list) else [message]
    priced = [(m, found) for m in batch if (found := price_of(route, m)) is not None]
    if not priced:
        upstream = await forward(add_headers={"X-Request-Id": request_id}, body=body)
        return await relay(request, upstream)
    if isinstance(message, list):
        raise BadRequest("send a priced tools/call on its own, not in a batch", reason="mcp_batch")
    (_, (name, req)) = priced[0]
    priced_route = tool_route(route, name, req)
    return await _paid_call(
        request,
        gw,
        priced_route,
        name=name,
        message=message,
        forward=forward,
        request_id=request_id,
    )


async def _paid_call(  # noqa: PLR0913  one call's parts
    request: web.Request,
    gw: Generation,
    route: RouteSettings,
    *,
    name: str,
    message: dict[str, Any],
    forward: Forward,
    request_id: str,
) -> web.StreamResponse:
    params = message["params"]
    meta = params.get("_meta") if isinstance(params.get("_meta"), dict) else {}
    sent = meta.get(PAYMENT_META)
    if sent is None:
        return _rpc(message, payment_required_result(route, name, "Payment required"))
    try:
        payload = PaymentPayload.model_validate(sent)
        matched = match_requirement(
            route, DecodedPayment(2, payload, "_meta"), f"mcp://tool/{name}"
        )
    except (ValueError, PaymentError) as exc:
        reason = exc.reason if isinstance(exc, GatewayError) else "invalid_payload"
        return _rpc(message, payment_required_result(route, name, reason))
    ip = client_ip(request.remote, request.headers.getall("X-Forwarded-For", []), gw.settings)
    await gw.limiter.check(route, ip, matched.payer, matched.requirement)
    rest = {k: v for k, v in meta.items() if k != PAYMENT_META}
    clean = {**message, "params": {**params, "_meta": rest} if rest else _without_meta(params)}
    async with gw.payments.claimed(matched, route, request_id) as claim:
        try:
            await gw.payments.verify(claim)
        except PaymentError as exc:
            return _rpc(message, payment_required_result(route, name, exc.reason))
        upstream = await forward(
            add_headers={gw.settings.payer_header: matched.payer, "X-Request-Id": request_id},
            body=json.dumps(clean).encode(),
        )
        if upstream.status >= 400:
            await gw.payments.abandon(claim, f"origin answered {upstream.status}")
            return await relay(request, upstream, paid=True)
        call = _Call(gw, claim, message, route, name)
        if upstream.content_type == "text/event-stream":
            return await call.stream(request, upstream)
        return await call.json(upstream)


def _without_meta(params: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in params.items() if k != "_meta"}


@dataclasses.dataclass(frozen=True, slots=True)
class _Call:
    """One paid tool call whose answer is on its way from the origin."""

    gw: Generation
    claim: Claim
    message: dict[str, Any]
    route: RouteSettings
    name: str

    async def settled(self, answer: Any) -> Any:
        """The origin's JSON-RPC response to the call, settled (with the receipt) when it is a
        successful result, or passed on uncharged when it is not."""
        result = answer.get("result") if isinstance(answer, dict) else None
        if not isinstance(answer, dict) or not isinstance(result, dict) or result.get("isError"):
            await self.gw.payments.abandon(self.claim, "the tool failed")
            return answer
        try:
            settled = await self.gw.payments.settle(self.claim)
        except GatewayError as exc:
            # Answered inside the JSON-RPC (an event stream's head is already sent): a refused
            # settlement asks for a new payment; anything else (pending: do not pay again;
            # facilitator down) is an error that never asks to pay again.
            await self.gw.payments.abandon(self.claim, exc.reason)
            if isinstance(exc, PaymentError):
                refused = payment_required_result(self.route, self.name, exc.reason)
                return {"jsonrpc": "2.0", "id": self.message.get("id"), "result": refused}
            error = {"reason": exc.reason, "retryAfter": exc.retry_after}
            failure = {"code": -32000, "message": exc.detail, "data": error}
            return {"jsonrpc": "2.0", "id": self.message.get("id"), "error": failure}
        matched = self.claim.matched
        await self.gw.limiter.count_spend(matched.payer, matched.requirement, time.time())
        meta = result.get("_meta")
        receipt = settled.model_dump(by_alias=True, exclude_none=True)
        meta = {**(meta if isinstance(meta, dict) else {}), RECEIPT_META: receipt}
        return {**answer, "result": {**result, "_meta": meta}}

    async def json(self, upstream: aiohttp.ClientResponse) -> web.StreamResponse:
        try:
            raw = await upstream.content.read(MAX_ANSWER + 1)
            while len(raw) <= MAX_ANSWER and not upstream.content.at_eof():
                more = await upstream.content.read(MAX_ANSWER + 1 - len(raw))
                if not more:
                    break
                raw += more
        finally:
            upstream.release()
        try:
            answer = json.loads(raw) if len(raw) <= MAX_ANSWER else None
        except ValueError:
            answer = None
        answer = await self.settled(answer)
        if answer is None:
            return web.Response(status=502, text="the MCP server's answer is not JSON-RPC")
        return web.json_response(answer, headers=_session(upstream))

    async def stream(
        self, request: web.Request, upstream: aiohttp.ClientResponse
    ) -> web.StreamResponse:
        """Pass the origin's events on as they come; hold the one answering this call until
        it is settled. Events end with a blank line (SSE); `data:` lines carry JSON-RPC."""
        headers = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        out = web.StreamResponse(status=200, headers={**headers, **_session(upstream)})
        await out.prepare(request)
        try:
            await self._events(out, upstream)
        except ConnectionResetError:
            return out  # the client went away: nothing to answer, nobody to tell
        finally:
            upstream.release()
        await out.write_eof()
        return out

    async def _events(self, out: web.StreamResponse, upstream: aiohttp.ClientResponse) -> None:
        pending, answered = b"", False
        async for chunk in upstream.content.iter_any():
            pending = (pending + chunk).replace(b"\r\n", b"\n")
            while b"\n\n" in pending:
                event, pending = pending.split(b"\n\n", 1)
                event, done = await self.event(event, answered)
                answered = answered or done
                await out.write(event + b"\n\n")
        if pending.strip():
            event, done = await self.event(pending, answered)
            answered = answered or done
            await out.write(event)
        if not answered:
            await self.gw.payments.abandon(self.claim, "the MCP server sent no answer")

    async def event(self, event: bytes, answered: bool) -> tuple[bytes, bool]:
        lines = event.split(b"\n")
        data = b"\n".join(line[5:].lstrip() for line in lines if line.startswith(b"data:"))
        if answered or not data:
            return event, False
        try:
            answer = json.loads(data)
        except ValueError:
            return event, False
        if not isinstance(answer, dict) or "method" in answer:
            return event, False  # a request or notification from the server, not the answer
        if answer.get("id") != self.message.get("id"):
            return event, False
        settled = await self.settled(answer)
        kept = [line for line in lines if not line.startswith(b"data:")]
        return b"\n".join([*kept, b"data: " + json.dumps(settled).encode()]), True


def _session(upstream: aiohttp.ClientResponse) -> dict[str, str]:
    return {k: v for k, v in upstream.headers.items() if k.lower() == "mcp-session-id"}
