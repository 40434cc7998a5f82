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

from gateway.config.settings import Address
from gateway.observe.logs import get_logger
from gateway.serving.connection import Guard

log = get_logger("gateway.listener")

# Errors that mean "no file descriptors or memory for now": asyncio's own accept loop
# backs off for a second on these rather than spinning.
_RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
_ACCEPT_RETRY_DELAY = 1.0
_LIMIT_WARNING_INTERVAL = 10.0


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
        self._idle: dict[Guard, None] = {}
        self._guards: dict[object, Guard] = {}  # by transport, for the app's calls
        self.evicted = 0  # idle connections closed for new ones, since start
        self._evict_logged_at = -_LIMIT_WARNING_INTERVAL

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

    # --- the connections' states (called by Guard and, through state.py, by the app) ---

    def opened(self, guard: Guard, transport: object) -> None:
        self._guards[transport] = guard
        self.make_idle(guard)  # accepted, nothing received yet: reusable, as in nginx

    def lost(self, guard: Guard, transport: object) -> None:
        self._guards.pop(transport, None)
        self._idle.pop(guard, None)
        if not guard.released:
            guard.released = True
            self.release()

    def make_idle(self, guard: Guard) -> None:
        self._idle.pop(guard, None)  # to the end: idle from now
        self._idle[guard] = None
        guard.idle = True
        if self._full:
            self._resume()  # at the cap with none idle until now: one can be evicted

    def busy(self, guard: Guard) -> None:
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
        now = self.loop.time()
        if now - self._evict_logged_at >= _LIMIT_WARNING_INTERVAL:  # not once per eviction
            self._evict_logged_at = now
            log.warning("idle_connections_evicted", limit=self._limit, evicted=self.evicted)

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
            await self.loop.connect_accepted_socket(lambda: Guard(self._factory(), self), conn)
        except OSError as exc:
            # The client left before the transport was set up: no protocol saw it.
            log.debug("connection_setup_failed", error=str(exc))
            conn.close()
            self.release()
