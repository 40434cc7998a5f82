"""What the serving process shares with the app it serves: requests in flight, whether it is
draining, the open connections, and the app's reload hook (called on SIGHUP).

The app (gateway/app.py) and the admin endpoints read this state; the runner
(gateway/serving/runner.py) writes it. It lives on the aiohttp app under `SERVER_STATE`, so
there is no process-wide state and a test can build as many apps as it likes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from types import TracebackType

from aiohttp import hdrs, web

from gateway.serving.listener import Listener

# An app that can reload its config puts this coroutine function under RELOAD; SIGHUP calls it.
ReloadHook = Callable[[], Awaitable[bool]]


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
        self._listener: Listener | None = None

    def attach_listener(self, listener: Listener) -> None:
        """The listener whose open connections `connections` reports."""
        self._listener = listener

    def request_started(self, transport: object) -> None:
        """A request on this connection is being handled: it is not idle."""
        if self._listener is not None:
            self._listener.request_started(transport)

    def request_done(self, transport: object) -> None:
        """Its response is sent in full: the connection is idle (evictable at the cap) and
        its next request head is timed from its first byte."""
        if self._listener is not None:
            self._listener.request_done(transport)

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
