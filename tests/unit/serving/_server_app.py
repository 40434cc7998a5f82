"""A tiny app served through `gateway.serving.runner.run`, for the server tests' subprocesses.

Usage: python tests/unit/serving/_server_app.py '{"grace": 5, "header": 10, "connections": 64}'
Logs (JSON lines on stdout) say where it listens; the tests read them.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import sys
from collections.abc import AsyncIterator

from aiohttp import web
from aiohttp.typedefs import Handler

from gateway.config.settings import Address, Limits, Settings, Timeouts
from gateway.observe.logs import get_logger
from gateway.serving.admin import FunctionCheck, make_admin_app
from gateway.serving.runner import run
from gateway.serving.state import ServerState, attach_state

log = get_logger("tests.app")


def make_app(settings: Settings, startup_delay: float = 0.0) -> web.Application:
    state_box: list[ServerState] = []

    @web.middleware
    async def connection_states(request: web.Request, handler: Handler) -> web.StreamResponse:
        # What gateway/app.py's entry() does: busy while handled, idle once sent in full.
        state_box[0].request_started(request.transport)
        response = await handler(request)
        await response.prepare(request)
        await response.write_eof()
        state_box[0].request_done(request.transport)
        return response

    app = web.Application(middlewares=[connection_states])
    state = attach_state(app)
    state_box.append(state)

    async def ok(request: web.Request) -> web.Response:
        return web.Response(text=f"ok {os.getpid()}")

    async def sleep(request: web.Request) -> web.Response:
        seconds = float(request.query.get("s", "1.5"))
        async with state.in_flight.track():
            log.info("handler_started", path=request.path, seconds=seconds)
            try:
                await asyncio.sleep(seconds)
            except asyncio.CancelledError:
                log.info("handler_cancelled", path=request.path)
                raise
            log.info("handler_finished", path=request.path)
        return web.Response(text="slept")

    async def lifespan(_app: web.Application) -> AsyncIterator[None]:
        yield
        log.info("app_cleanup")

    async def frozen(request: web.Request) -> web.Response:
        return web.Response(text=f"{gc.get_freeze_count()} {gc.get_threshold()[0]}")

    app.router.add_get("/ok", ok)
    app.router.add_get("/frozen", frozen)
    app.router.add_get("/sleep", sleep)
    app.cleanup_ctx.append(lifespan)
    if startup_delay:

        async def slow_start(_app: web.Application) -> None:
            log.info("startup_begun")
            await asyncio.sleep(startup_delay)

        app.on_startup.append(slow_start)
    return app


async def _always_ok() -> None:
    return None


def make_admin(app: web.Application) -> web.Application:
    return make_admin_app(app, [FunctionCheck("always", _always_ok)])


def main() -> int:
    opts = json.loads(sys.argv[1]) if len(sys.argv) > 1 else {}
    settings = Settings(
        source="<test>",
        listen=Address("127.0.0.1", int(opts.get("port", 0))),
        upstream="http://127.0.0.1:9",
        routes=(),
        admin=Address("127.0.0.1", 0) if opts.get("admin", True) else None,
        timeouts=Timeouts(
            shutdown_grace=float(opts.get("grace", 5.0)),
            request_header=float(opts.get("header", 10.0)),
            keepalive=float(opts.get("keepalive", 75.0)),
        ),
        limits=Limits(connections=int(opts.get("connections", 64))),
        workers=int(opts.get("workers", 1)),
        log_level=opts.get("log_level", "info"),
    )
    delay = float(opts.get("startup_delay", 0))
    return run(settings, lambda s: make_app(s, delay), make_admin)


if __name__ == "__main__":
    sys.exit(main())
