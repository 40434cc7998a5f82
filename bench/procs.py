"""Processes the benchmark starts: spawn, wait for a port, stop by pid, measure from /proc.

Everything is measured from outside the process (/proc), so the figures cost the measured
process nothing and mean the same for Python, nginx and the gateway alike.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    """A loopback port nobody listens on right now (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(
    port: int, proc: subprocess.Popen[bytes] | None = None, timeout: float = 20.0
) -> None:
    """Block until 127.0.0.1:port accepts a connection; fail early if `proc` died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process {proc.pid} exited with {proc.returncode} before listening")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout:.0f}s")


@dataclass
class Proc:
    """A started process, with its log file, stopped by pid (its whole process group)."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def spawn(name: str, argv: Sequence[str], log_dir: Path, env: dict[str, str] | None = None) -> Proc:
    """Start argv in its own session (so its children can be stopped with it), logging to a file."""
    log = log_dir / f"{name}.log"
    with log.open("ab") as out:
        popen = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, **(env or {})},
        )
    return Proc(name, popen, log)


def stop(proc: Proc, grace: float = 5.0) -> None:
    """SIGTERM the process group led by proc's pid, then SIGKILL it if it lingers."""
    if proc.popen.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.popen.wait(grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.popen.wait(grace)
    # Children that outlived their leader are still in the group: make sure they are gone.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


@dataclass
class ProcGroup:
    """Every process a benchmark section started; `close()` stops them all, newest first."""

    log_dir: Path
    procs: list[Proc] = field(default_factory=list)

    def start(
        self,
        name: str,
        argv: Sequence[str],
        port: int | None = None,
        env: dict[str, str] | None = None,
        timeout: float = 20.0,
    ) -> Proc:
        proc = spawn(name, argv, self.log_dir, env)
        self.procs.append(proc)
        if port is not None:
            try:
                wait_port(port, proc.popen, timeout)
            except (RuntimeError, TimeoutError) as exc:
                raise RuntimeError(f"{name} did not start: {exc}\n{proc.tail()}") from exc
        return proc

    def stop(self, proc: Proc) -> None:
        stop(proc)
        if proc in self.procs:
            self.procs.remove(proc)

    def close(self) -> None:
        while self.procs:
            stop(self.procs.pop())


def _stat_fields(pid: int) -> list[str]:
    raw = Path(f"/proc/{pid}/stat").read_text()
    # The command name (field 2) may hold spaces and parentheses: split after its last ')'.
    return raw[raw.rindex(")") + 2 :].split()


def descendants(pid: int) -> list[int]:
    """pid and every live descendant (scans /proc: CONFIG_PROC_CHILDREN is often absent)."""
    parent_of: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                parent_of[int(entry)] = int(_stat_fields(int(entry))[1])
    tree, frontier = [pid], [pid]
    while frontier:
        parent = frontier.pop()
        kids = [child for child, ppid in parent_of.items() if ppid == parent]
        tree.extend(kids)
        frontier.extend(kids)
    return tree


def cpu_seconds(pid: int) -> float:
    """utime+stime of pid and its live descendants (a process's figure covers its threads)."""
    ticks = 0
    for member in descendants(pid):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = _stat_fields(member)
            # After the name: fields[11] is utime (field 14), fields[12] stime (field 15).
            ticks += int(fields[11]) + int(fields[12])
    return ticks / CLK_TCK


def cpu_seconds_fine(pid: int) -> float:
    """On-CPU time of pid's tree in ns resolution (schedstat of every live thread): for short
    windows, where 10 ms clock ticks are too coarse. Threads that ended are not counted."""
    total = 0
    for member in descendants(pid):
        with contextlib.suppress(OSError):
            for tid in os.listdir(f"/proc/{member}/task"):
                with contextlib.suppress(OSError, ValueError, IndexError):
                    total += int(
                        Path(f"/proc/{member}/task/{tid}/schedstat").read_text().split()[0]
                    )
    return total / 1e9


def rss_bytes(pid: int) -> int:
    """VmRSS of one process, in bytes (0 once it is gone)."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def tree_rss_bytes(pid: int) -> int:
    """VmRSS summed over pid and its descendants (a worker-per-core gateway counts whole)."""
    return sum(rss_bytes(member) for member in descendants(pid))


@contextlib.contextmanager
def cpu_meter(pid: int) -> Iterator[list[float]]:
    """Yields a list that holds the CPU seconds pid's tree used inside the block, once it ends."""
    out: list[float] = []
    before = cpu_seconds(pid)
    try:
        yield out
    finally:
        out.append(cpu_seconds(pid) - before)
