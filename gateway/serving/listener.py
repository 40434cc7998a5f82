"""The client-facing socket layer under aiohttp: accepting, capping, and timing out heads.

aiohttp's sites accept every connection the kernel hands them and have no request-head
timeout (the first head is bounded only by `keepalive_timeout`, an hour by default). So the
gateway owns its listening sockets and its accept loop, and hands each accepted socket to
aiohttp through public asyncio API (`loop.connect_accepted_socket`), wrapped in a small
protocol that:

- counts connections: at `limit` live connections it closes the longest-idle one (a
  connection between requests, or accepted and not yet sending: nginx's "reusable"
  connections) to take the new one, so idle keep-alive connections can never lock fresh
  clients out (issue 12 item 5); when none is idle, the accept loop stops reading the
  listening sockets, so further clients wait in the kernel backlog (what nginx and HAProxy
  do at `worker_connections` / `maxconn`) instead of being served badly or refused;
- closes a connection that has not completed a request head within `header_timeout`
  seconds (slowloris): the first head from the connection's start, every later one from
  its first byte (the time in between is keep-alive, bounded by aiohttp's keep-alive timer).

A connection is between requests from the app's `request_done(transport)` (after its
response is complete) to the first byte or `request_started(transport)` of the next one: the
app says so (gateway/app.py, through gateway/serving/state.py), since only it knows when a
response has been sent in full.

Everything else (parsing, flow control, keep-alive) stays aiohttp's: the wrapper forwards
every `asyncio.Protocol` callback to aiohttp's `RequestHandler` unchanged.
"""

from __future__ import annotations

import asyncio
import errno
import socket
from collections.abc import Callable, Sequence
from typing import cast

from gateway.config.settings import Address
from gateway.observe.logs import get_logger

log = get_logger("gateway.listener")

# Errors that mean "no file descriptors or memory for now": asyncio's own accept loop
# backs off for a second on these rather than spinning.
_RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
_ACCEPT_RETRY_DELAY = 1.0
_LIMIT_WARNING_INTERVAL = 10.0

_TIMEOUT_408 = b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"


class HeadWatcher:
    """Decides, from the raw bytes, when the first request head is complete.

    A head ends at the first empty line after a non-empty one. Leading empty lines are
    skipped, as RFC 9112 section 2.2 lets servers do. Bare-LF line ends count too, so a
    head the parser accepts is never mistaken for an incomplete one (a false "complete"
    only stops this timer early; aiohttp's keep-alive timer still bounds the connection).
    """

    __slots__ = ("_started", "_tail", "received")

    def __init__(self) -> None:
        self._tail = b""
        self._started = False
        self.received = 0

    def feed(self, data: bytes) -> bool:
        self.received += len(data)
        buf = self._tail + data
        if not self._started:
            buf = buf.lstrip(b"\r\n")
            if not buf:
                self._tail = b""
                return False
            self._started = True
        if b"\n\r\n" in buf or b"\n\n" in buf:
            return True
        self._tail = buf[-2:]
        return False


class _Guard(asyncio.Protocol):
    """Wraps aiohttp's protocol for one connection: the head timer, whether it is idle, and
    the release of a slot."""

    __slots__ = ("_inner", "_listener", "_timer", "_transport", "_watcher", "idle", "released")

    def __init__(self, inner: asyncio.Protocol, listener: Listener) -> None:
        self._inner = inner
        self._listener = listener
        self._watcher: HeadWatcher | None = HeadWatcher()
        self._timer: asyncio.TimerHandle | None = None
        self._transport: asyncio.Transport | None = None
        self.idle = False  # between requests, nothing received since: may be evicted
        self.released = False  # its slot is free again (evicted or lost)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport: uvloop's does not subclass asyncio.Transport, so no isinstance.
        self._transport = cast(asyncio.Transport, transport)
        self._start_timer()
        self._listener.opened(self, transport)
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self.idle:
            self._listener.busy(self)
            self._start_timer()  # a later head: its time runs from its first byte
        watcher = self._watcher
        if watcher is not None and watcher.feed(data):
            self._watcher = None
            self._cancel_timer()
        self._inner.data_received(data)

    def request_started(self) -> None:
        """A request is being handled (also one pipelined before the last one ended)."""
        self._watcher = None
        self._cancel_timer()
        if self.idle:
            self._listener.busy(self)

    def request_done(self) -> None:
        """The response is sent in full: watch for the next head, and it may be evicted."""
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        self._watcher = HeadWatcher()
        self._listener.make_idle(self)

    def evict(self) -> None:
        """Closed to make room for a new connection (its client sees a keep-alive close)."""
        self._cancel_timer()
        if self._transport is not None:
            self._transport.close()

    def _start_timer(self) -> None:
        timeout = self._listener.header_timeout
        if timeout > 0 and self._timer is None and self._watcher is not None:
            self._timer = self._listener.loop.call_later(timeout, self._head_timed_out)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        self._listener.lost(self, self._transport)
        self._inner.connection_lost(exc)

    def _head_timed_out(self) -> None:
        self._timer = None
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        watcher = self._watcher
        received = watcher.received if watcher is not None else 0
        # A client that sent nothing (a browser's preconnect) just gets the close; one that
        # sent part of a head is told why. Nothing has been written on this connection yet.
        if received:
            transport.write(_TIMEOUT_408)
        peer = transport.get_extra_info("peername")
        log.info("request_head_timeout", peer=str(peer), received=received)
        transport.close()


def bind(address: Address, *, backlog: int, reuse_port: bool) -> list[socket.socket]:
    """Listening sockets for every address `address.host` resolves to (like asyncio does)."""
    infos = socket.getaddrinfo(
        address.host or None,
        address.port,
        type=socket.SOCK_STREAM,
        flags=socket.AI_PASSIVE,
    )
    socks: list[socket.socket] = []
    seen: set[tuple[int, object]] = set()
    try:
        for family, _, _, _, sockaddr in infos:
            if (family, sockaddr) in seen:
                continue
            seen.add((family, sockaddr))
            sock = socket.create_server(
                sockaddr, family=family, backlog=backlog, reuse_port=reuse_port
            )
            sock.setblocking(False)
            socks.append(sock)
    except BaseException:
        for sock in socks:
            sock.close()
        raise
    return socks


class Listener:
    """Accepts on `socks` while fewer than `limit` connections are open."""

    def __init__(  # noqa: PLR0913  the limits are keyword-only, named at the one call site
        self,
        loop: asyncio.AbstractEventLoop,
        socks: Sequence[socket.socket],
        protocol_factory: Callable[[], asyncio.Protocol],
        *,
        limit: int,
        header_timeout: float,
        backlog: int = 128,
    ) -> None:
        if limit < 1:
            raise ValueError("connection limit must be at least 1")
        self.loop = loop
        self.header_timeout = header_timeout
        self._socks = list(socks)
        self._factory = protocol_factory
        self._limit = limit
        self._batch = max(1, backlog)
        self._active = 0
        self._reading = False
        self._full = False  # paused at the cap (not for a resource error)
        self._closed = False
        self._pending: set[asyncio.Task[None]] = set()
        self._warned_at = -_LIMIT_WARNING_INTERVAL
        # Idle connections, longest-idle first (a dict keeps insertion order).
        self._idle: dict[_Guard, None] = {}
        self._guards: dict[object, _Guard] = {}  # by transport, for the app's calls
        self.evicted = 0

    @property
    def active(self) -> int:
        """Open client connections (accepted and not yet lost)."""
        return self._active

    @property
    def addresses(self) -> list[tuple[str, int]]:
        return [sock.getsockname()[:2] for sock in self._socks]

    def start(self) -> None:
        self._resume()

    def close(self) -> None:
        """Stop accepting: new connections are refused, queued ones reset."""
        if self._closed:
            return
        self._closed = True
        self._pause()
        for sock in self._socks:
            sock.close()

    def release(self) -> None:
        self._active -= 1
        if not self._reading and self._active < self._limit:
            self._resume()

    # --- the connections' states (called by _Guard and, through state.py, by the app) ---

    def opened(self, guard: _Guard, transport: object) -> None:
        self._guards[transport] = guard
        self.make_idle(guard)  # accepted, nothing received yet: reusable, as in nginx

    def lost(self, guard: _Guard, transport: object) -> None:
        self._guards.pop(transport, None)
        self._idle.pop(guard, None)
        if not guard.released:
            guard.released = True
            self.release()

    def make_idle(self, guard: _Guard) -> None:
        self._idle.pop(guard, None)  # to the end: idle from now
        self._idle[guard] = None
        guard.idle = True
        if self._full:
            self._resume()  # at the cap with none idle until now: one can be evicted

    def busy(self, guard: _Guard) -> None:
        guard.idle = False
        self._idle.pop(guard, None)

    def request_started(self, transport: object) -> None:
        guard = self._guards.get(transport)
        if guard is not None:
            guard.request_started()

    def request_done(self, transport: object) -> None:
        guard = self._guards.get(transport)
        if guard is not None:
            guard.request_done()

    def _evict_idle(self) -> None:
        """Close the longest-idle connection and free its slot."""
        guard = next(iter(self._idle))
        self.busy(guard)
        guard.released = True
        self._active -= 1
        self.evicted += 1
        guard.evict()

    def _resume(self) -> None:
        self._full = False
        if self._closed or self._reading:
            return
        self._reading = True
        for sock in self._socks:
            self.loop.add_reader(sock.fileno(), self._accept, sock)

    def _pause(self) -> None:
        if not self._reading:
            return
        self._reading = False
        for sock in self._socks:
            if sock.fileno() != -1:
                self.loop.remove_reader(sock.fileno())

    def _accept(self, sock: socket.socket) -> None:
        # Like asyncio's loop: accept a batch per readiness event, not one connection.
        for _ in range(self._batch):
            if self._active >= self._limit and not self._idle:
                self._stop_at_the_cap()
                return
            try:
                conn, _ = sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue
            except OSError as exc:
                if exc.errno not in _RESOURCE_ERRNOS:
                    raise
                log.error("accept_failed", error=str(exc), retry_in=_ACCEPT_RETRY_DELAY)
                self._pause()
                self.loop.call_later(_ACCEPT_RETRY_DELAY, self._resume)
                return
            if self._active >= self._limit:
                self._evict_idle()  # only now: a client is really waiting for the slot
            self._active += 1
            task = self.loop.create_task(self._connect(conn))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)

    def _stop_at_the_cap(self) -> None:
        """Every slot is taken by a connection with a request in progress: new clients wait
        in the kernel backlog until one is released or goes idle."""
        now = self.loop.time()
        if now - self._warned_at >= _LIMIT_WARNING_INTERVAL:  # not once per accept
            self._warned_at = now
            log.warning("connection_limit_reached", limit=self._limit)
        self._pause()
        self._full = True

    async def _connect(self, conn: socket.socket) -> None:
        try:
            conn.setblocking(False)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            await self.loop.connect_accepted_socket(lambda: _Guard(self._factory(), self), conn)
        except OSError as exc:
            # The client left before the transport was set up: no protocol saw it.
            log.debug("connection_setup_failed", error=str(exc))
            conn.close()
            self.release()
