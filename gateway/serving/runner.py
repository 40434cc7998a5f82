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
import os
import signal
from collections.abc import Awaitable, Callable
from types import TracebackType

import uvloop
from aiohttp import hdrs, http_parser, web, web_protocol

from gateway.config.settings import Settings
from gateway.observe.logs import configure_logging, get_logger
from gateway.serving import listener as listener_mod
from gateway.serving.workers import supervise

log = get_logger("gateway.server")

HANDLER_CANCELLATION = True
BACKLOG = 1024
FORCED_CLEANUP_TIMEOUT = 5.0  # after a second signal, app cleanup gets this long
ADMIN_SHUTDOWN_TIMEOUT = 1.0

AppFactory = Callable[[Settings], web.Application]
AdminFactory = Callable[[web.Application], web.Application]
# An app that can reload its config puts this coroutine function under RELOAD; SIGHUP calls it.
ReloadHook = Callable[[], Awaitable[bool]]


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


class InFlight:
    """Requests being handled now; `async with in_flight.track():` around a handler's work."""

    __slots__ = ("_idle", "count")

    def __init__(self) -> None:
        self.count = 0
        self._idle: asyncio.Event | None = None

    def track(self) -> InFlight:
        # The object is its own context manager: no generator or allocation per request.
        return self

    async def __aenter__(self) -> None:
        self.count += 1

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.count -= 1
        if self.count == 0 and self._idle is not None:
            self._idle.set()
            self._idle = None

    async def wait_idle(self) -> None:
        """Return once no request is in flight."""
        while self.count:
            if self._idle is None:
                self._idle = asyncio.Event()
            await self._idle.wait()


class ServerState:
    """What the admin endpoints and metrics read about the serving process."""

    __slots__ = ("_listener", "draining", "in_flight")

    def __init__(self) -> None:
        self.draining = False
        self.in_flight = InFlight()
        self._listener: listener_mod.Listener | None = None

    @property
    def connections(self) -> int:
        """Open client connections (0 before the listener starts)."""
        return self._listener.active if self._listener is not None else 0


SERVER_STATE = web.AppKey("gateway_server_state", ServerState)
RELOAD: web.AppKey[ReloadHook] = web.AppKey("gateway_reload")


def attach_state(app: web.Application) -> ServerState:
    """The app's ServerState, created on first call; call it before the app starts."""
    state = app.get(SERVER_STATE)
    if state is None:
        state = ServerState()
        app[SERVER_STATE] = state
        app.on_response_prepare.append(_close_when_draining)
    return state


async def _close_when_draining(request: web.Request, response: web.StreamResponse) -> None:
    # A response finished during the drain says `Connection: close`, so the client does
    # not send its next request on a connection the server is about to close.
    # (aiohttp has chosen the Connection header by the time this hook runs: set it here.)
    if request.app[SERVER_STATE].draining:
        response.force_close()
        response.headers[hdrs.CONNECTION] = "close"


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
            return runner.run(_serve(settings, make_app, make_admin, index, parent_fd))
        except Exception:
            log.exception("server_failed", worker=index)
            return 1


class _Signals:
    """First SIGTERM/SIGINT: drain. Second: force. Also stops when the parent has gone.
    SIGHUP: the app's config reload (`RELOAD`), if it has one; never a stop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, parent_fd: int | None) -> None:
        self.stop = asyncio.Event()
        self.force = asyncio.Event()
        self.reload: ReloadHook | None = None
        self._reloads: set[asyncio.Future[bool]] = set()
        self._loop = loop
        self._count = 0
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)
        loop.add_signal_handler(signal.SIGHUP, self._on_hangup)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})  # held back by run()
        self._parent_fd = parent_fd
        if parent_fd is not None:
            # The parent holds the pipe's write end: EOF here means it died without
            # forwarding a signal (SIGKILL, OOM); drain rather than linger as an orphan.
            loop.add_reader(parent_fd, self._on_parent_gone)

    def _on_signal(self, sig: signal.Signals) -> None:
        self._count += 1
        if self._count == 1:
            log.info("signal_received", signal=sig.name, action="drain")
            self.stop.set()
        else:
            log.warning("signal_received", signal=sig.name, action="force")
            self.force.set()

    def _on_hangup(self) -> None:
        if self.reload is None or self.stop.is_set():
            log.warning("signal_received", signal="SIGHUP", action="ignored")
            return
        log.info("signal_received", signal="SIGHUP", action="reload")
        task = asyncio.ensure_future(self.reload())
        self._reloads.add(task)  # a reference, or the task may be collected mid-way
        task.add_done_callback(self._reloads.discard)

    def _on_parent_gone(self) -> None:
        assert self._parent_fd is not None
        self._loop.remove_reader(self._parent_fd)
        log.warning("supervisor_gone", action="drain")
        self.stop.set()

    def close(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            self._loop.remove_signal_handler(sig)


async def _serve(
    settings: Settings,
    make_app: AppFactory,
    make_admin: AdminFactory | None,
    index: int,
    parent_fd: int | None,
) -> int:
    loop = asyncio.get_running_loop()
    signals = _Signals(loop, parent_fd)
    timeouts, limits = settings.timeouts, settings.limits
    socks = listener_mod.bind(settings.listen, backlog=BACKLOG, reuse_port=settings.workers > 1)
    try:
        app = make_app(settings)
        state = attach_state(app)
        signals.reload = app.get(RELOAD)
    except BaseException:
        for sock in socks:
            sock.close()
        raise
    runner = web.AppRunner(
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
    admin_runner: web.AppRunner | None = None
    accept: listener_mod.Listener | None = None
    try:
        if not await _start(runner, signals.stop):
            log.info("startup_interrupted", worker=index)
            return 0
        assert runner.server is not None
        accept = listener_mod.Listener(
            loop,
            socks,
            runner.server,
            limit=limits.connections,
            header_timeout=timeouts.request_header,
            backlog=BACKLOG,
        )
        state._listener = accept
        if settings.admin is not None and make_admin is not None and index == 0:
            admin_runner = web.AppRunner(
                make_admin(app), access_log=None, shutdown_timeout=ADMIN_SHUTDOWN_TIMEOUT
            )
            await admin_runner.setup()
            site = web.TCPSite(admin_runner, settings.admin.host, settings.admin.port)
            await site.start()
            log.info("admin_listening", host=settings.admin.host, port=site.port)
        accept.start()
        for host, port in accept.addresses:
            log.info("listening", host=host, port=port, worker=index, pid=os.getpid())
        await signals.stop.wait()
    finally:
        state.draining = True
        if accept is not None:
            accept.close()
        else:
            for sock in socks:
                sock.close()
        log.info(
            "draining",
            in_flight=state.in_flight.count,
            connections=state.connections,
            grace=timeouts.shutdown_grace,
        )
        forced = await _drain(runner, signals.force)
        if admin_runner is not None:
            await admin_runner.cleanup()
        signals.close()
        log.info("stopped", forced=forced, worker=index)
    return 1 if forced else 0


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
