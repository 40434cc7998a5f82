"""The serving process's signals: the first SIGTERM/SIGINT drains, a second forces; SIGHUP
reloads the config (the app's `RELOAD` hook); a supervisor's death drains too."""

from __future__ import annotations

import asyncio
import signal

from gateway.observe.logs import get_logger
from gateway.serving.state import ReloadHook

# The runner's events have always carried this logger name; operators filter on it.
log = get_logger("gateway.server")


class Signals:
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
