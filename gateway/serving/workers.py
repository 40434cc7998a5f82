"""The pre-fork supervisor for `workers: N > 1`.

The parent forks N workers before any event loop exists. Each worker binds the listen
address itself with SO_REUSEPORT, so the kernel spreads new connections among them. The
parent only supervises:

- SIGHUP (reload the config) is forwarded to every worker as is;
- SIGTERM/SIGINT are forwarded to every worker as SIGTERM. Workers run in their own process
  groups, so a terminal's Ctrl+C reaches them once, through the parent (not twice, which
  they would take as "force");
- a worker exiting on its own (crash, OOM kill) makes the parent stop the others and exit 1:
  restarting is the process manager's job (systemd, Kubernetes), not a second one's here;
- each worker holds the read end of a pipe whose write end only the parent holds: if the
  parent dies without forwarding anything (SIGKILL), the workers see EOF and drain.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Callable

from gateway.observe.logs import get_logger

log = get_logger("gateway.workers")

# run_worker(index, parent_fd) -> exit code; parent_fd reaches EOF when the parent is gone.
WorkerMain = Callable[[int, int], int]


def supervise(workers: int, run_worker: WorkerMain) -> int:
    """Fork `workers` processes running `run_worker`, wait for all; the exit code."""
    parent_r, parent_w = os.pipe()
    children: dict[int, int] = {}
    for index in range(workers):
        sys.stdout.flush()  # or the child would print the parent's buffered lines again
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            _child(index, run_worker, parent_r, parent_w)
        children[pid] = index
    os.close(parent_r)
    log.info("supervising", workers=workers, pids=sorted(children))
    try:
        return _wait(children)
    finally:
        os.close(parent_w)


def _child(index: int, run_worker: WorkerMain, parent_r: int, parent_w: int) -> None:
    code = 1
    try:
        os.close(parent_w)
        os.setpgid(0, 0)
        code = run_worker(index, parent_r)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _wait(children: dict[int, int]) -> int:
    stopping = False

    def forward(_signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for pid in children:
            _kill(pid)

    def hangup(_signum: int, _frame: object) -> None:
        for pid in children:
            _kill(pid, signal.SIGHUP)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, hangup)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})  # held back by server.run()
    code = 0
    try:
        while children:
            pid, status = os.waitpid(-1, 0)
            index = children.pop(pid, -1)
            if index < 0:
                continue
            child_code = os.waitstatus_to_exitcode(status)
            log.info("worker_exited", worker=index, pid=pid, code=child_code)
            if child_code != 0 or not stopping:
                # A worker left on its own: stop the rest rather than run short-handed.
                code = 1
                stopping = True
                for other in children:
                    _kill(other)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return code


def _kill(pid: int, sig: signal.Signals = signal.SIGTERM) -> None:
    with contextlib.suppress(ProcessLookupError):  # already reaped
        os.kill(pid, sig)
