"""One client connection under the listener (gateway/serving/listener.py): aiohttp's protocol
wrapped with the request-head timer, whether the connection is idle (evictable at the cap),
and the release of its slot. See the listener's docstring for the rules."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, cast

from gateway.observe.logs import get_logger

if TYPE_CHECKING:
    from gateway.serving.listener import Listener

log = get_logger("gateway.listener")

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


class Guard(asyncio.Protocol):
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
