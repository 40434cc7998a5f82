"""Idempotent retries: the payment-identifier extension (`idempotency:` in the config).

A payer that names its payment (`extensions["payment-identifier"].info.id`) and loses the
200 can send the same payment again and get the same response, with no new charge. The
identifier is reserved before anything else happens (set-if-absent in the store, so two
requests racing with one id cannot both go ahead); once the origin's response is settled, a
response up to `keep_body` is read whole, kept for `keep_for`, then sent, so it is kept even
when the client is gone before it arrives. A larger one is streamed and not kept: its retry
gets 409 with the receipt. The same id with another payment is 409; an identifier the
extension's schema refuses, or none when `required`, is 400.

Keys are per payer (`x402:pid:<payer>:<id>`) and entries carry the payment's fingerprint
(its identity and signed payload), so an id never answers anyone else's payment.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from x402.extensions.payment_identifier import extract_and_validate_payment_identifier
from x402.schemas import PaymentPayload

from gateway.config.settings import Idempotency
from gateway.errors import BadRequest, GatewayError, PaymentConflict, UpstreamError
from gateway.payment.match import MatchedPayment
from gateway.proxy.headers import (
    add_vary,
    expose_x402_headers,
    response_headers,
    strip_cdn_directives,
)
from gateway.proxy.upstream import relay
from gateway.store.kept import KeptResponses

PREFIX = "x402:pid"
PENDING_FOR = 600.0  # a reservation whose request never finished frees its id after this
_NOT_STORED = frozenset({"content-length", "transfer-encoding", "date", "server"})


class IdentifierConflict(GatewayError):
    status = 409
    title = "Payment identifier already used for another payment"
    reason = "payment_identifier_conflict"


def fingerprint(matched: MatchedPayment) -> str:
    signed = json.dumps(matched.payload.payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(f"{matched.identity.key}|{signed}".encode()).hexdigest()


def identifier(matched: MatchedPayment, required: bool) -> str | None:
    """The payment's identifier; 400 when it is malformed, or missing but required."""
    payload = matched.payload
    found: str | None = None
    if isinstance(payload, PaymentPayload):
        found, valid = extract_and_validate_payment_identifier(payload)
        if not valid.valid:
            raise BadRequest("; ".join(valid.errors), reason="invalid_payment_identifier")
    if found is None and required:
        raise BadRequest(
            "this gateway requires a payment identifier (extensions.payment-identifier.info.id)",
            reason="payment_identifier_required",
        )
    return found


@dataclass(frozen=True, slots=True)
class Ticket:
    """A named payment going through: where its response is kept."""

    key: str
    fingerprint: str


@dataclass(frozen=True, slots=True)
class Kept:
    """A stored answer: `pending`, `done` (status, headers, body) or `large` (receipt only)."""

    fingerprint: str
    state: str
    status: int = 0
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""

    def dumps(self) -> bytes:
        return json.dumps(
            {
                "fp": self.fingerprint,
                "state": self.state,
                "status": self.status,
                "headers": self.headers,
                "body": base64.b64encode(self.body).decode(),
            }
        ).encode()

    @classmethod
    def loads(cls, raw: bytes) -> Kept:
        data = json.loads(raw)
        headers = tuple((str(k), str(v)) for k, v in data["headers"])
        body = base64.b64decode(data["body"])
        return cls(data["fp"], data["state"], int(data["status"]), headers, body)


class Retries:
    def __init__(self, config: Idempotency | None, store: KeptResponses | None) -> None:
        self.config = config
        self.store = store if config is not None else None

    async def start(self, matched: MatchedPayment) -> Ticket | web.Response | None:
        """A ticket for a named payment, a kept response to answer with, or None (unnamed)."""
        if self.config is None or self.store is None:
            return None
        found = identifier(matched, self.config.required)
        if found is None:
            return None
        ticket = Ticket(f"{PREFIX}:{matched.payer.lower()}:{found}", fingerprint(matched))
        pending = Kept(ticket.fingerprint, "pending").dumps()
        held = await self.store.reserve(ticket.key, pending, min(PENDING_FOR, self.config.keep_for))
        if held is None:
            return ticket
        kept = Kept.loads(held)
        if kept.fingerprint != ticket.fingerprint:
            raise IdentifierConflict(f"payment identifier {found} names another payment")
        if kept.state == "done":
            return web.Response(
                status=kept.status, headers=CIMultiDict(kept.headers), body=kept.body
            )
        if kept.state == "large":
            raise PaymentConflict(
                "this payment bought a response too large to keep; it was sent once",
                reason="response_not_kept",
                headers=dict(kept.headers),
            )
        return ticket  # in flight: the claim answers it (409, do not pay again)

    async def relay(
        self,
        ticket: Ticket | None,
        request: web.Request,
        upstream: aiohttp.ClientResponse,
        extra: Mapping[str, str],
        receipt: Mapping[str, str],
    ) -> web.StreamResponse:
        """Send the paid response; for a ticket, keep it first when it is small enough."""
        if ticket is None or self.store is None or self.config is None:
            return await relay(request, upstream, extra, paid=True)
        large = Kept(ticket.fingerprint, "large", headers=tuple(receipt.items()))
        size = upstream.content_length
        if request.method == "HEAD" or (size is not None and size > self.config.keep_body):
            await self.store.keep(ticket.key, large.dumps(), self.config.keep_for)
            return await relay(request, upstream, extra, paid=True)
        try:
            body = await upstream.content.read(self.config.keep_body + 1)
            while len(body) <= self.config.keep_body and not upstream.content.at_eof():
                more = await upstream.content.read(self.config.keep_body + 1 - len(body))
                if not more:
                    break
                body += more
        except (aiohttp.ClientError, TimeoutError) as exc:
            upstream.close()
            raise UpstreamError(f"origin failed mid-body: {type(exc).__name__}") from None
        headers = response_headers(upstream.headers)
        for name, value in extra.items():
            headers[name] = value
        # As relay(paid=True) does for any paid answer: no CDN caching, Vary, exposed x402.
        strip_cdn_directives(headers)
        if headers.get("Access-Control-Allow-Origin", "*") != "*":
            add_vary(headers, "Origin")
        expose_x402_headers(headers)
        if len(body) > self.config.keep_body:
            await self.store.keep(ticket.key, large.dumps(), self.config.keep_for)
            return await _stream_rest(request, upstream, headers, body)
        upstream.release()
        kept_headers = tuple((k, v) for k, v in headers.items() if k.lower() not in _NOT_STORED)
        done = Kept(ticket.fingerprint, "done", upstream.status, kept_headers, body)
        await self.store.keep(ticket.key, done.dumps(), self.config.keep_for)
        return web.Response(status=upstream.status, headers=CIMultiDict(kept_headers), body=body)


async def _stream_rest(
    request: web.Request, upstream: aiohttp.ClientResponse, headers: CIMultiDict[str], head: bytes
) -> web.StreamResponse:
    """A response too large to keep: what was read, then the rest as it comes."""
    out = web.StreamResponse(status=upstream.status, headers=headers)
    complete = False
    try:
        await out.prepare(request)
        await out.write(head)
        async for chunk in upstream.content.iter_any():
            await out.write(chunk)
        complete = True
    except (aiohttp.ClientError, TimeoutError, ConnectionResetError):
        if request.transport is not None:
            request.transport.close()  # never let a truncated body look complete
    finally:
        if complete:
            upstream.release()
        else:
            upstream.close()
    return out
