"""Load from wrk: a fixed number of requests (a Lua script stops each thread) or a fixed time.

Parses wrk's own summary (`--latency` adds the 50/75/90/99% lines) into numbers.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# wrk has no request-count option: each thread stops itself after its share of responses
# and says so in a file; once all have, SIGINT makes wrk print its summary (its main thread
# otherwise sleeps out the whole -d duration).
_COUNT_SCRIPT = """
local limit = 0
local seen = 0
local marker = nil
function init(args)
  limit = tonumber(args[1])
  marker = args[2]
end
function response(status, headers, body)
  seen = seen + 1
  if seen == limit then
    local f = io.open(marker, "a")
    f:write("done\\n")
    f:close()
    wrk.thread:stop()
  end
end
"""

_UNITS_US = {"us": 1.0, "ms": 1_000.0, "s": 1_000_000.0, "m": 60_000_000.0, "h": 3_600_000_000.0}


@dataclass
class WrkResult:
    requests: int
    seconds: float
    rps: float
    latency_us: dict[str, float] = field(default_factory=dict)  # "p50", "p75", "p90", "p99"
    non_2xx: int = 0
    socket_errors: int = 0
    command: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def wrk_binary() -> str:
    found = shutil.which("wrk")
    if found is None:
        raise RuntimeError("wrk is not installed (scripts/setup.sh --bench installs it)")
    return found


def _duration_us(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text)
    if match is None:
        raise ValueError(f"unreadable wrk duration {text!r}")
    return float(match.group(1)) * _UNITS_US[match.group(2)]


def _seconds(text: str) -> float:
    return _duration_us(text) / 1_000_000.0


def parse(output: str) -> WrkResult:
    """Read wrk's summary; raises ValueError when the run produced none."""
    total = re.search(r"^\s*(\d+) requests in ([\d.]+\w+),", output, re.M)
    rps = re.search(r"^Requests/sec:\s+([\d.]+)", output, re.M)
    if total is None or rps is None:
        raise ValueError(f"wrk printed no summary:\n{output}")
    latency = {
        f"p{pct}": _duration_us(value)
        for pct, value in re.findall(r"^\s+(50|75|90|99)%\s+(\S+)", output, re.M)
    }
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    return WrkResult(
        requests=int(total.group(1)),
        seconds=_seconds(total.group(2)),
        rps=float(rps.group(1)),
        latency_us=latency,
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        socket_errors=sum(int(n) for n in errors.groups()) if errors else 0,
    )


def run(
    url: str,
    *,
    connections: int,
    threads: int = 1,
    requests: int | None = None,
    seconds: float = 10.0,
    headers: dict[str, str] | None = None,
) -> WrkResult:
    """One wrk run against url.

    requests: stop after about this many responses (each thread its share); `seconds`
    then only caps the run. Without it, the run lasts `seconds`.
    """
    threads = max(1, min(threads, connections))
    argv = [
        wrk_binary(),
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        "--latency",
        "--timeout",
        "10s",
    ]
    for key, value in (headers or {}).items():
        argv += ["-H", f"{key}: {value}"]
    with tempfile.TemporaryDirectory(prefix="bench-wrk-") as tmp:
        marker = Path(tmp) / "done"
        if requests is not None:
            script = Path(tmp) / "count.lua"
            script.write_text(_COUNT_SCRIPT)
            argv += ["-s", str(script), url, "--", str(max(1, requests // threads)), str(marker)]
        else:
            argv.append(url)
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + seconds + 30
            while requests is not None and proc.poll() is None and time.monotonic() < deadline:
                if marker.exists() and marker.read_text().count("done") >= threads:
                    proc.send_signal(signal.SIGINT)
                    break
                time.sleep(0.005)
            stdout, stderr = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    if proc.returncode != 0:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {stderr or stdout}")
    result = parse(stdout)
    result.command = " ".join(argv).replace(tmp, "$TMP")
    return result
