"""A facilitator over HTTP (`POST /verify`, `POST /settle`, `GET /supported`) on a local chain.

The wire format is the one the SDK's `HTTPFacilitatorClient` speaks: requests
{x402Version, paymentPayload, paymentRequirements}; answers are the SDK's response models
dumped by alias without nulls, HTTP 200 whether the payment is valid or not. A request that
cannot be read is a 400; a node that cannot be reached is a 503.

    FACILITATOR_KEY=0x... python -m gateway.demo.facilitator_server \\
        --rpc-url http://127.0.0.1:8545 --private-key-env FACILITATOR_KEY --port 0

prints one line, `{"listening": "http://127.0.0.1:PORT"}`, once it accepts connections.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from typing import Any

from aiohttp import web
from pydantic import BaseModel
from x402.extensions.erc20_approval_gas_sponsoring import Erc20ApprovalFacilitatorExtension
from x402.mechanisms.evm import FacilitatorWeb3Signer

from ..errors import FacilitatorUnavailable
from ..facilitators.engine.service import MAX_REQUEST, BadRequest, read_request
from ..facilitators.local import LocalFacilitator
from .x402_sdk import SponsoringSigner

FACILITATOR_KEY: web.AppKey[LocalFacilitator] = web.AppKey("facilitator", LocalFacilitator)


def _answer(model: BaseModel) -> web.Response:
    return web.json_response(model.model_dump(mode="json", by_alias=True, exclude_none=True))


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


async def verify(request: web.Request) -> web.Response:
    try:
        payload, requirements = await read_request(request)
        return _answer(await request.app[FACILITATOR_KEY].verify(payload, requirements))
    except BadRequest as exc:
        return _error(400, str(exc))
    except FacilitatorUnavailable as exc:
        return _error(503, exc.detail)


async def settle(request: web.Request) -> web.Response:
    try:
        payload, requirements = await read_request(request)
        return _answer(await request.app[FACILITATOR_KEY].settle(payload, requirements))
    except BadRequest as exc:
        return _error(400, str(exc))
    except FacilitatorUnavailable as exc:
        return _error(503, exc.detail)


async def supported(request: web.Request) -> web.Response:
    return _answer(request.app[FACILITATOR_KEY].get_supported())


def make_app(facilitator: LocalFacilitator) -> web.Application:
    """The HTTP API over `facilitator` (started by the caller; closed with the app)."""
    app = web.Application(client_max_size=MAX_REQUEST)
    app[FACILITATOR_KEY] = facilitator
    app.router.add_post("/verify", verify)
    app.router.add_post("/settle", settle)
    app.router.add_get("/supported", supported)

    async def close_facilitator(app: web.Application) -> None:
        await app[FACILITATOR_KEY].close()

    app.on_cleanup.append(close_facilitator)
    return app


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m gateway.demo.facilitator_server")
    parser.add_argument("--rpc-url", required=True)
    parser.add_argument(
        "--private-key-env",
        default="FACILITATOR_PRIVATE_KEY",
        help="name of the environment variable holding the settlement key (never argv)",
    )
    parser.add_argument(
        "--authorizer-key-env",
        default="FACILITATOR_AUTHORIZER_KEY",
        help="variable holding the batch-settlement receiver authorizer's key (signs claims "
        "and refunds; advertised in /supported); unset: the settlement key signs them",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0: any free port")
    parser.add_argument(
        "--network", action="append", help="CAIP-2 network served (repeatable; eip155:84532)"
    )
    parser.add_argument("--ready-timeout", type=float, default=30.0)
    return parser.parse_args(argv)


async def serve(args: argparse.Namespace, key: str) -> None:
    authorizer = os.environ.get(args.authorizer_key_env) or key
    facilitator = LocalFacilitator(
        args.rpc_url, key, args.network or ["eip155:84532"], authorizer_key=authorizer
    )
    facilitator.register_extension(lambda signer: sponsor_approvals(signer, key, args.rpc_url))
    await facilitator.start()
    await asyncio.wait_for(_wait_for_node(facilitator), args.ready_timeout)
    runner = web.AppRunner(make_app(facilitator), access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, args.host, args.port)
        await site.start()
        host, port = _bound(runner)
        print(json.dumps({"listening": f"http://{host}:{port}"}), flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
    finally:
        await runner.cleanup()


def sponsor_approvals(signer: FacilitatorWeb3Signer, key: str, rpc_url: str) -> Any:
    """`erc20ApprovalGasSponsoring`: broadcast a payer's signed `approve(Permit2)` (sending it
    the gas first) before settling, so a payer holding only the token can pay through Permit2."""
    return Erc20ApprovalFacilitatorExtension(signer=SponsoringSigner(signer, key, rpc_url))


async def _wait_for_node(facilitator: LocalFacilitator) -> None:
    while True:
        try:
            await facilitator.ping()
            return
        except FacilitatorUnavailable:
            await asyncio.sleep(0.1)


def _bound(runner: web.AppRunner) -> tuple[str, int]:
    address: Any = runner.addresses[0]
    host, port = address[0], address[1]
    return (f"[{host}]" if ":" in host else host), int(port)


def main(argv: list[str] | None = None) -> int:
    args = _arguments(argv)
    key = os.environ.get(args.private_key_env, "")
    if not key:
        print(f"set the settlement key in ${args.private_key_env}", file=sys.stderr)
        return 2
    try:
        asyncio.run(serve(args, key))
    except TimeoutError:
        print(f"no chain answered at {args.rpc_url}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
