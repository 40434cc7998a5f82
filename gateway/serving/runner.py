"""How the gateway runs as a server: start, serve, drain on SIGTERM, stop.

Lifecycle of one serving process:

1. bind the client sockets first (a busy port fails before any dependency is touched);
2. `AppRunner.setup()`: the app's on_startup and cleanup contexts run;
3. the admin listener starts (if configured), then client connections are accepted;
4. first SIGTERM/SIGINT: `/healthz` turns 503, the client sockets close (new connections
   are refused), idle keep-alive connections close, in-flight requests get
   `timeouts.shutdown_grace` seconds to finish, then are cancelled; the app's on_shutdown
   and cleanup contexts run; the admin listener closes last; exit code 0;
   Responses finished during the drain carry `Connection: close`;
5. a second signal forces it: every client connection is closed at once (which cancels its
   handler), cleanup gets a few seconds, exit code 1.

SIGHUP (any time while serving) calls the app's `RELOAD` hook: the config is read again
(gateway/reload.py); connections and requests in flight are not touched.

The connection cap and the request-head timeout (slowloris) live in gateway/serving/listener.py.

Note for app code: aiohttp runs `on_shutdown` *before* in-flight requests have finished;
close pools and clients in `cleanup_ctx`, which runs after them.

Handler cancellation is on (`HANDLER_CANCELLATION`): when a client disconnects, its handler
is cancelled, as nginx aborts the upstream request when the client goes away. For a paid
request that means no settlement for a response nobody will receive, and the origin stops
working for nobody. Work that must finish once begun (settlement and recording it,
releasing a claim) must be shielded (`asyncio.shield` of a task) by the caller.

With `workers: N > 1`, see gateway/serving/workers.py: N forked workers share the port through
SO_REUSEPORT. The admin listener runs in worker 0 only, so its `/healthz`, `/readyz` and
metrics describe worker 0. `limits.connections` applies to each worker (file descriptors
are per process).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import signal
import socket
from collections.abc import Callable

import uvloop
from aiohttp import http_parser, web, web_protocol

from gateway.config.settings import Settings
from gateway.observe.logs import configure_logging, get_logger
from gateway.serving import listener as listener_mod
from gateway.serving.signals import Signals
from gateway.serving.state import RELOAD, ServerState, attach_state
from gateway.serving.workers import supervise

log = get_logger("gateway.server")

HANDLER_CANCELLATION = True
BACKLOG = 1024
FORCED_CLEANUP_TIMEOUT = 5.0  # after a second signal, app cleanup gets this long
ADMIN_SHUTDOWN_TIMEOUT = 1.0
GC_YOUNG_THRESHOLD = 20_000  # allocations between young-generation collections (default 700)

AppFactory = Callable[[Settings], web.Application]
AdminFactory = Callable[[web.Application], web.Application]


def require_c_parser() -> None:
    """Refuse to run on aiohttp's pure-Python HTTP parser (slower and laxer than llhttp)."""
    if os.environ.get("AIOHTTP_NO_EXTENSIONS"):
        raise RuntimeError(
            "AIOHTTP_NO_EXTENSIONS is set: the gateway needs aiohttp's C HTTP parser; "
            "unset it and restart"
        )
    c_parser = getattr(http_parser, "HttpRequestParserC", None)
    in_use = getattr(web_protocol, "HttpRequestParser", None)  # what RequestHandler builds
    if c_parser is None or in_use is not c_parser:
        raise RuntimeError(
            "aiohttp's C HTTP parser (aiohttp._http_parser) is not available: install an "
            "aiohttp wheel built with its C extensions for this platform"
        )


def run(settings: Settings, make_app: AppFactory, make_admin: AdminFactory | None = None) -> int:
    """Serve until SIGTERM/SIGINT; return the process exit code.

    Configures logging (JSON lines at `settings.log_level`) first, so every line the
    server and its libraries write is structured.
    """
    require_c_parser()
    # SIGHUP's default action ends the process. Until its handler is in place (and in forked
    # workers, which inherit this mask) it is held back, then delivered: never lost, never fatal.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})
    configure_logging(settings.log_level)
    if settings.workers > 1:
        if settings.listen.port == 0:
            raise ValueError("workers > 1 needs a fixed listen port, not 0")
        return supervise(
            settings.workers,
            lambda index, parent_fd: _run_worker(
                settings, make_app, make_admin, index=index, parent_fd=parent_fd
            ),
        )
    return _run_worker(settings, make_app, make_admin, index=0, parent_fd=None)


def _run_worker(
    settings: Settings,
    make_app: AppFactory,
    make_admin: AdminFactory | None,
    *,
    index: int,
    parent_fd: int | None,
) -> int:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        try:
            return runner.run(Worker(settings, make_app, make_admin, index, parent_fd).run())
        except Exception:
            log.exception("server_failed", worker=index)
            return 1


class Worker:
    """One serving process, in named phases: `start` (bind, app start-up, listeners), `serve`
    (until the first signal), `drain` (stop accepting, let requests in flight finish within
    the grace, run the app's cleanup), `stop` (admin listener, signal handlers)."""

    def __init__(
        self,
        settings: Settings,
        make_app: AppFactory,
        make_admin: AdminFactory | None,
        index: int,
        parent_fd: int | None,
    ) -> None:
        self.settings = settings
        self.index = index
        self._make_app = make_app
        self._make_admin = make_admin if index == 0 and settings.admin is not None else None
        self._parent_fd = parent_fd
        self._socks: list[socket.socket] = []
        self._accept: listener_mod.Listener | None = None
        self._admin: web.AppRunner | None = None

    async def run(self) -> int:
        """The whole life: the exit code (0 after a drain, 1 when a second signal forced it)."""
        signals = Signals(asyncio.get_running_loop(), self._parent_fd)
        self._socks = listener_mod.bind(
            self.settings.listen, backlog=BACKLOG, reuse_port=self.settings.workers > 1
        )
        try:
            app = self._make_app(self.settings)
            state = attach_state(app)
            signals.reload = app.get(RELOAD)
        except BaseException:
            self._close_sockets()
            raise
        runner = self._app_runner(app)
        try:
            if not await self.start(runner, app, state, signals.stop):
                log.info("startup_interrupted", worker=self.index)
                return 0
            await self.serve(signals.stop)
        finally:
            forced = await self.drain(runner, state, signals.force)
            await self.stop(signals, forced)
        return 1 if forced else 0

    def _app_runner(self, app: web.Application) -> web.AppRunner:
        timeouts, limits = self.settings.timeouts, self.settings.limits
        return web.AppRunner(
            app,
            access_log=None,  # the app writes its own structured access line
            handler_cancellation=HANDLER_CANCELLATION,
            keepalive_timeout=timeouts.keepalive,
            max_line_size=limits.header_size,
            # A payment header may be longer than other headers; letting it through to the
            # decoder gets it a precise x402 reason (up to twice the limit) instead of the
            # parser's bare 400.
            max_field_size=max(limits.header_size, 2 * limits.payment_header),
            shutdown_timeout=timeouts.shutdown_grace,
            # After answering early (413, 504...) aiohttp drains the rest of an upload before
            # closing; 10 s by default, during which a gone client is not noticed.
            lingering_time=2.0,
        )

    async def start(
        self, runner: web.AppRunner, app: web.Application, state: ServerState, stop: asyncio.Event
    ) -> bool:
        """The app's start-up, then the admin listener, then client connections. False when a
        signal came first."""
        if not await _start(runner, stop):
            return False
        assert runner.server is not None
        self._accept = listener_mod.Listener(
            asyncio.get_running_loop(),
            self._socks,
            runner.server,
            limit=self.settings.limits.connections,
            header_timeout=self.settings.timeouts.request_header,
            backlog=BACKLOG,
        )
        state.attach_listener(self._accept)
        if self._make_admin is not None:
            await self._start_admin(self._make_admin(app))
        # What start-up built (modules, settings, the first generation's parts) lives as long
        # as the process: out of the collector's reach, a full collection scans only what
        # requests leave behind instead of ~120k objects (tens of ms each time, issue 13).
        # A reload unfreezes (gateway.reload): the retired generation stays collectable.
        gc.freeze()
        # A paid request allocates a few thousand container objects that mostly die young by
        # reference count: a young-generation pass every 700 allocations (the default) ran
        # several times per request for little; every 20,000 it finds the same cycles.
        gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])
        self._accept.start()
        for host, port in self._accept.addresses:
            log.info("listening", host=host, port=port, worker=self.index, pid=os.getpid())
        return True

    async def _start_admin(self, admin: web.Application) -> None:
        assert self.settings.admin is not None
        self._admin = web.AppRunner(admin, access_log=None, shutdown_timeout=ADMIN_SHUTDOWN_TIMEOUT)
        await self._admin.setup()
        site = web.TCPSite(self._admin, self.settings.admin.host, self.settings.admin.port)
        await site.start()
        log.info("admin_listening", host=self.settings.admin.host, port=site.port)

    async def serve(self, stop: asyncio.Event) -> None:
        """Serve until the first SIGTERM/SIGINT (or the supervisor's death)."""
        await stop.wait()

    async def drain(self, runner: web.AppRunner, state: ServerState, force: asyncio.Event) -> bool:
        """Refuse new connections, let requests in flight finish (within the grace), then the
        app's cleanup. True when a second signal cut it short."""
        state.draining = True
        if self._accept is not None:
            self._accept.close()
        else:
            self._close_sockets()
        log.info(
            "draining",
            in_flight=state.in_flight.count,
            connections=state.connections,
            grace=self.settings.timeouts.shutdown_grace,
        )
        return await _drain(runner, force)

    async def stop(self, signals: Signals, forced: bool) -> None:
        """The admin listener closes last (its /healthz said 503 through the drain)."""
        if self._admin is not None:
            await self._admin.cleanup()
        signals.close()
        log.info("stopped", forced=forced, worker=self.index)

    def _close_sockets(self) -> None:
        for sock in self._socks:
            sock.close()


async def _start(runner: web.AppRunner, stop: asyncio.Event) -> bool:
    """runner.setup(), unless a signal comes first: a start-up stuck on a dependency must
    not make the process ignore SIGTERM. False when interrupted."""
    setup = asyncio.ensure_future(runner.setup())
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({setup, stopped}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
        if not setup.done():
            setup.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await setup
    if setup.cancelled():
        return False
    setup.result()  # start-up failures propagate
    return True


async def _drain(runner: web.AppRunner, force: asyncio.Event) -> bool:
    """runner.cleanup(): wait for in-flight requests (up to the grace), then app cleanup.

    Returns True when a second signal cut the wait short.
    """
    cleanup = asyncio.ensure_future(runner.cleanup())
    forcing = asyncio.ensure_future(force.wait())
    try:
        await asyncio.wait({cleanup, forcing}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        forcing.cancel()
    if cleanup.done():
        cleanup.result()
        return False
    server = runner.server
    if server is not None:
        # Closing the transport makes aiohttp cancel the handler (handler_cancellation),
        # which ends the grace wait for that connection at once.
        for conn in server.connections:
            conn.force_close()
    try:
        await asyncio.wait_for(cleanup, FORCED_CLEANUP_TIMEOUT)
    except TimeoutError:
        log.error("cleanup_timeout", timeout=FORCED_CLEANUP_TIMEOUT)
    return True
