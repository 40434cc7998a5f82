"""The engine served as a standard x402 facilitator over HTTP, so several gateway replicas
(or any x402 server: the SDK's `HTTPFacilitatorClient`, its middlewares) share one settler
and its nonce order.

    POST /verify, POST /settle  {x402Version, paymentPayload, paymentRequirements}
    GET  /supported             {kinds, extensions, signers}
    GET  /readyz                200 when the node answers and the settlers hold their gas

Answers are the SDK's response models (by alias, no nulls), HTTP 200 whether the payment is
valid or not (what the SDK's client expects); 400 for a request that cannot be read, 401
without the bearer token (when one is set; compared in constant time), 503 when the node
cannot be used. Bodies are bounded, and so is JSON nesting before decoding.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import signal
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ValidationError
from x402.schemas import PaymentPayload, PaymentRequirements
from x402.schemas.v1 import PaymentPayloadV1, PaymentRequirementsV1

from ...errors import FacilitatorUnavailable
from ...payment.decode import nesting_exceeds
from .facilitator import EngineFacilitator

MAX_REQUEST = 64 * 1024  # a verify/settle request is a few KB
# The SDK's py_ecc import lifts the recursion limit, so deep JSON would overflow the C stack
# inside json.loads instead of raising RecursionError: nesting is counted first.
MAX_DEPTH = 32
ENGINE: web.AppKey[EngineFacilitator] = web.AppKey("engine", EngineFacilitator)
TOKEN: web.AppKey[bytes | None] = web.AppKey("token")
Parsed = tuple[PaymentPayload | PaymentPayloadV1, PaymentRequirements | PaymentRequirementsV1]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class BadRequest(ValueError):
    """The body is not a verify/settle request."""


def parse_request(body: bytes) -> Parsed:
    """{x402Version, paymentPayload, paymentRequirements} into the SDK's models."""
    try:
        text = body.decode()
        if nesting_exceeds(text, MAX_DEPTH):
            raise ValueError(f"nested deeper than {MAX_DEPTH} levels")
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise BadRequest(f"body is not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise BadRequest("body must be a JSON object")
    version = data.get("x402Version")
    payload, requirements = data.get("paymentPayload"), data.get("paymentRequirements")
    if version not in (1, 2) or isinstance(version, bool):
        raise BadRequest(f"unsupported x402Version: {version!r}")
    if not isinstance(payload, dict) or not isinstance(requirements, dict):
        raise BadRequest("paymentPayload and paymentRequirements must be objects")
    if payload.get("x402Version", version) != version:
        raise BadRequest("paymentPayload.x402Version differs from x402Version")
    try:
        if version == 1:
            return (
                PaymentPayloadV1.model_validate(payload),
                PaymentRequirementsV1.model_validate(requirements),
            )
        return (
            PaymentPayload.model_validate(payload),
            PaymentRequirements.model_validate(requirements),
        )
    except ValidationError as exc:
        raise BadRequest(f"invalid request: {exc.error_count()} error(s)") from exc


def _answer(model: BaseModel) -> web.Response:
    return web.json_response(model.model_dump(mode="json", by_alias=True, exclude_none=True))


def _error(status: int, message: str, **headers: str) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers)


async def read_request(request: web.Request) -> Parsed:
    """The request's body, bounded, as `parse_request` reads it."""
    if request.content_length is not None and request.content_length > MAX_REQUEST:
        raise BadRequest("request too large")
    body = await request.content.read(MAX_REQUEST + 1)
    if len(body) > MAX_REQUEST:
        raise BadRequest("request too large")
    return parse_request(body)


async def verify(request: web.Request) -> web.Response:
    try:
        payload, requirements = await read_request(request)
        return _answer(await request.app[ENGINE].verify(payload, requirements))
    except BadRequest as exc:
        return _error(400, str(exc))
    except FacilitatorUnavailable as exc:
        return _error(503, exc.detail, **{"Retry-After": "5"})


async def settle(request: web.Request) -> web.Response:
    try:
        payload, requirements = await read_request(request)
        # Shielded: a client hanging up must not cut a settlement short.
        engine = request.app[ENGINE]
        return _answer(await asyncio.shield(engine.settle(payload, requirements)))
    except BadRequest as exc:
        return _error(400, str(exc))
    except FacilitatorUnavailable as exc:
        return _error(503, exc.detail, **{"Retry-After": "5"})


async def supported(request: web.Request) -> web.Response:
    return _answer(request.app[ENGINE].get_supported())


async def readyz(request: web.Request) -> web.Response:
    try:
        await request.app[ENGINE].ping()
    except FacilitatorUnavailable:
        return web.json_response({"ready": False}, status=503)
    return web.json_response({"ready": True})


@web.middleware
async def bearer_auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    expected = request.app[TOKEN]
    if expected is None or request.path == "/readyz":
        return await handler(request)
    given = request.headers.get("Authorization", "")
    scheme, _, credential = given.partition(" ")
    ok = scheme.lower() == "bearer" and hmac.compare_digest(credential.strip().encode(), expected)
    if not ok:
        return _error(401, "a bearer token is required", **{"WWW-Authenticate": "Bearer"})
    return await handler(request)


def make_app(engine: EngineFacilitator, *, token: str | None = None) -> web.Application:
    """The HTTP API over `engine` (the caller starts and closes the engine)."""
    app = web.Application(client_max_size=MAX_REQUEST, middlewares=[bearer_auth])
    app[ENGINE] = engine
    app[TOKEN] = token.encode() if token else None
    app.router.add_post("/verify", verify)
    app.router.add_post("/settle", settle)
    app.router.add_get("/supported", supported)
    app.router.add_get("/readyz", readyz)
    return app


async def run(  # noqa: PLR0913  where to listen, then keyword-only options
    engine: EngineFacilitator,
    host: str = "127.0.0.1",
    port: int = 4021,
    *,
    token: str | None = None,
    on_listening: Callable[[str], None] | None = None,
    stop: asyncio.Event | None = None,
    handle_signals: bool = True,
) -> None:
    """Start the engine, serve until SIGTERM/SIGINT (or `stop` is set), then stop taking
    requests, let those in flight finish, and close the engine. `on_listening(url)` is told
    the bound address (port 0 picks a free one)."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    signals = (signal.SIGTERM, signal.SIGINT) if handle_signals else ()
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)
    runner = web.AppRunner(make_app(engine, token=token), access_log=None)
    try:
        await engine.start()
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        await site.start()
        if on_listening is not None:
            on_listening(_url(runner))
        await stop.wait()
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
        await runner.cleanup()
        await engine.close()


def _url(runner: web.AppRunner) -> str:
    address: Any = runner.addresses[0]
    host, port = str(address[0]), int(address[1])
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
