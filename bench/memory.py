"""Section C: RSS growth of a proxy while a large body passes through it.

The proxy's VmRSS (summed over its process tree) is sampled from /proc every 50 ms while
one client downloads the body: a fast reader (curl writing to /dev/null) and a slow one
(reading at a capped rate, so a proxy that does not apply back-pressure would have to
hold the difference). Growth = peak during the download - RSS just before it.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import time
from collections.abc import Mapping
from typing import Any

import aiohttp

from bench.procs import descendants, rss_bytes

SAMPLE_EVERY = 0.05
CHUNK = 64 * 1024
MIB = 2**20


async def _sample(members: list[int], peak: list[int], stop: asyncio.Event) -> None:
    while not stop.is_set():
        peak[0] = max(peak[0], sum(rss_bytes(pid) for pid in members))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), SAMPLE_EVERY)
    peak[0] = max(peak[0], sum(rss_bytes(pid) for pid in members))


async def _fast(url: str, headers: Mapping[str, str]) -> tuple[int, int]:
    curl = shutil.which("curl")
    if curl is None:
        return await _paced(url, headers, rate=None)
    argv = [curl, "-s", "-o", "/dev/null", "-w", "%{http_code} %{size_download}", url]
    for key, value in headers.items():
        argv[1:1] = ["-H", f"{key}: {value}"]
    proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE)
    out, _ = await proc.communicate()
    status, size = out.decode().split()
    return int(status), int(float(size))


async def _paced(url: str, headers: Mapping[str, str], rate: float | None) -> tuple[int, int]:
    """Download url, discarding it; at most `rate` bytes/s when given."""
    received = 0
    async with (
        aiohttp.ClientSession(auto_decompress=False) as session,
        session.get(url, headers=dict(headers), timeout=aiohttp.ClientTimeout(total=None)) as r,
    ):
        started = time.monotonic()
        while chunk := await r.content.read(CHUNK):
            received += len(chunk)
            if rate:
                ahead = received / rate - (time.monotonic() - started)
                if ahead > 0:
                    await asyncio.sleep(ahead)
        return r.status, received


async def _measure(
    pid: int, url: str, headers: Mapping[str, str], rate: float | None, fast: bool
) -> dict[str, Any]:
    members = descendants(pid)
    baseline = sum(rss_bytes(m) for m in members)
    peak = [baseline]
    stop = asyncio.Event()
    sampler = asyncio.create_task(_sample(members, peak, stop))
    started = time.monotonic()
    try:
        if fast:
            status, size = await _fast(url, headers)
        else:
            status, size = await _paced(url, headers, rate)
    finally:
        stop.set()
        await sampler
    seconds = time.monotonic() - started
    await asyncio.sleep(0.2)
    after = sum(rss_bytes(m) for m in members)
    return {
        "status": status,
        "bytes": size,
        "seconds": round(seconds, 2),
        "mb_per_s": round(size / seconds / 1e6, 1) if seconds else None,
        "rss_before_mib": round(baseline / MIB, 1),
        "rss_peak_mib": round(peak[0] / MIB, 1),
        "growth_mib": round((peak[0] - baseline) / MIB, 1),
        "rss_after_mib": round(after / MIB, 1),  # what stays held once the body has passed
    }


def measure(
    pid: int,
    url: str,
    *,
    fast: bool,
    rate: float | None = None,
    headers: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """One download of url through the proxy `pid`, with its RSS growth."""
    return asyncio.run(_measure(pid, url, headers or {}, rate, fast))
