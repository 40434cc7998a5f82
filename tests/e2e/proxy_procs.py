"""Processes for the proxy's end-to-end tests: start, wait for a port, measure RSS, stop by pid.

`start_gateway_process(config_path)` starts the real `x402-gateway serve --config <path>`, so
the memory test measures the product, not a stand-in.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

from tests.procs import free_port, wait_port

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent

# The shared helpers; re-exported so callers of this module need only one import.
__all__ = [
    "free_port",
    "rss_bytes",
    "start_bulk_origin",
    "start_gateway_process",
    "stop_process",
    "wait_port",
]


def _spawn(argv: list[str], log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with log.open("ab") as out:
        return subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            env=env,
            start_new_session=True,
        )


def start_gateway_process(config_path: Path) -> subprocess.Popen[bytes]:
    """Start the gateway serving `config_path`; its output goes next to the config (.log)."""
    gateway = str(Path(sys.executable).with_name("x402-gateway"))
    return _spawn([gateway, "serve", "--config", str(config_path)], config_path.with_suffix(".log"))


def start_bulk_origin(port: int, log: Path) -> subprocess.Popen[bytes]:
    """An origin that generates and swallows bytes without keeping them (see _bulk_origin.py)."""
    script = HERE / "_bulk_origin.py"
    return _spawn([sys.executable, str(script), str(port)], log)


def stop_process(proc: subprocess.Popen[bytes], grace: float = 5.0) -> None:
    """SIGTERM the process group this process leads (by its pid), then SIGKILL if it lingers."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(grace)


def rss_bytes(pid: int) -> int:
    """The process's resident set size now, from /proc (measured from outside the process)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")
