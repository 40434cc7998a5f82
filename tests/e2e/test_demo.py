"""`x402-gateway demo [--once]`: the one-command offline demo, run as a person would run it."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gateway.demo import chain as chainlib
from tests.procs import stop

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
TX_HASH = re.compile(r"\b0x[0-9a-fA-F]{64}\b")
DEMO_TIMEOUT = 120.0


def _demo(args: list[str], out: Path) -> subprocess.Popen[bytes]:
    try:
        chainlib.anvil_path()
    except chainlib.ChainError as exc:
        pytest.skip(str(exc))
    script = Path(sys.executable).with_name("x402-gateway")
    argv = [str(script)] if script.is_file() else [sys.executable, "-m", "gateway.cli"]
    # The caller's DEMO_* ports must not leak in; taken default ports are the demo's to avoid.
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEMO_")}
    env["NO_COLOR"] = "1"
    with out.open("wb") as sink:
        return subprocess.Popen(
            [*argv, "demo", *args],
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )


def _descendants(pid: int) -> set[int]:
    """Every live process below `pid` (from /proc: no psutil needed)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        parents.setdefault(ppid, []).append(int(entry.name))
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_demo_once_pays_settles_and_refuses_the_replay(tmp_path: Path) -> None:
    out = tmp_path / "demo.out"
    proc = _demo(["--once"], out)
    try:
        code: int | None = proc.wait(timeout=DEMO_TIMEOUT)
    except subprocess.TimeoutExpired:
        code = None
    finally:
        stop(proc)
    output = out.read_text(encoding="utf-8", errors="replace")
    assert code == 0, f"demo exited with {code}:\n{output}"
    assert TX_HASH.search(output), f"no transaction hash printed:\n{output}"
    assert "402" in output and "✘" not in output, output
    assert "\033[" not in output, "colour codes written to a pipe"


def test_demo_keeps_running_then_stops_every_process_it_started(tmp_path: Path) -> None:
    """Without --once it serves until told to stop; SIGINT (Ctrl-C) stops the whole stack."""
    out = tmp_path / "demo.out"
    proc = _demo([], out)
    children: set[int] = set()
    try:
        deadline = time.monotonic() + DEMO_TIMEOUT
        while time.monotonic() < deadline and proc.poll() is None:
            if "Gateway log" in out.read_text(errors="replace"):
                break
            time.sleep(0.2)
        output = out.read_text(errors="replace")
        assert proc.poll() is None, f"the demo exited early:\n{output}"
        assert "curl -si -H 'PAYMENT-SIGNATURE: " in output, output
        children = _descendants(proc.pid)
        assert len(children) >= 3, f"expected anvil, the origin and the gateway: {children}"
        code = stop(proc, signal.SIGINT, timeout=30)
    finally:
        stop(proc)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(_alive(p) for p in children):
            time.sleep(0.1)
        left = {p for p in children if _alive(p)}
        for pid in left:  # only our own demo's children, by pid
            os.kill(pid, signal.SIGKILL)
    assert not left, f"left running after the demo stopped: {left}"
    assert code == 0, out.read_text(errors="replace")
