"""Bodies stream through the gateway in bounded memory, measured from outside its process.

A 1 GiB download and a 256 MiB upload pass through the gateway process between a client
(this test) and an origin process that makes and swallows the bytes without keeping them.
The gateway's VmRSS is sampled from /proc while the bytes flow; its growth over the
warmed-up baseline must stay under 64 MiB.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest

from tests.e2e.proxy_procs import (
    free_port,
    rss_bytes,
    start_bulk_origin,
    start_gateway_process,
    stop_process,
    wait_port,
)

pytestmark = pytest.mark.e2e

MiB = 1024 * 1024
DOWNLOAD = 1024 * MiB
UPLOAD = 256 * MiB
WARMUP = 16 * MiB
MAX_GROWTH = 64 * MiB
BLOCK = bytes(range(256)) * 1024


@dataclass
class Sampler:
    """Samples a process's RSS every few milliseconds on a thread (not the test's event loop)."""

    pid: int
    peak: int = 0
    samples: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes(self.pid))
            self.samples += 1
            self._stop.wait(0.005)

    def __enter__(self) -> Sampler:
        self._thread = threading.Thread(target=self.run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


@dataclass
class Rig:
    url: str
    gateway_pid: int


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    origin_port, gateway_port = free_port(), free_port()
    origin = start_bulk_origin(origin_port, tmp_path / "origin.log")
    gateway = None
    try:
        wait_port(origin_port, proc=origin)
        config = tmp_path / "gateway.yaml"
        config.write_text(
            f"listen: 127.0.0.1:{gateway_port}\n"
            f"upstream: http://127.0.0.1:{origin_port}\n"
            "facilitator:\n  url: http://127.0.0.1:9/\n"
            "network: eip155:84532\n"
            'pay_to: "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"\n'
            "routes:\n  - path: /*\n    price: free\n"
        )
        gateway = start_gateway_process(config)
        wait_port(gateway_port, proc=gateway)
        yield Rig(f"http://127.0.0.1:{gateway_port}", gateway.pid)
    finally:
        if gateway is not None:
            stop_process(gateway)
        stop_process(origin)


async def download(session: aiohttp.ClientSession, url: str, size: int) -> int:
    got = 0
    async with session.get(f"{url}/download?bytes={size}") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Length"] == str(size)
        async for chunk in resp.content.iter_any():
            got += len(chunk)
    return got


async def upload(session: aiohttp.ClientSession, url: str, size: int) -> int:
    async def body() -> AsyncIterator[bytes]:
        for _ in range(size // len(BLOCK)):
            yield BLOCK

    headers = {"Content-Length": str(size), "Content-Type": "application/octet-stream"}
    async with session.post(f"{url}/upload", data=body(), headers=headers) as resp:
        assert resp.status == 200
        received: int = (await resp.json())["received"]
    return received


async def test_large_bodies_stream_in_bounded_memory(rig: Rig) -> None:
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        # Warm up: pools, buffers and allocator arenas exist before the baseline is taken.
        assert await download(session, rig.url, WARMUP) == WARMUP
        assert await upload(session, rig.url, WARMUP) == WARMUP
        await asyncio.sleep(0.2)
        baseline = rss_bytes(rig.gateway_pid)

        with Sampler(rig.gateway_pid) as down:
            start = time.monotonic()
            assert await download(session, rig.url, DOWNLOAD) == DOWNLOAD
            down_s = time.monotonic() - start
        with Sampler(rig.gateway_pid) as up:
            start = time.monotonic()
            assert await upload(session, rig.url, UPLOAD) == UPLOAD
            up_s = time.monotonic() - start

    down_growth = down.peak - baseline
    up_growth = up.peak - baseline
    print(
        f"\ngateway RSS baseline {baseline / MiB:.1f} MiB; "
        f"1 GiB download: peak {down.peak / MiB:.1f} MiB (+{down_growth / MiB:.1f}), "
        f"{DOWNLOAD / MiB / down_s:.0f} MiB/s, {down.samples} samples; "
        f"256 MiB upload: peak {up.peak / MiB:.1f} MiB (+{up_growth / MiB:.1f}), "
        f"{UPLOAD / MiB / up_s:.0f} MiB/s, {up.samples} samples"
    )
    assert down.samples >= 3 and up.samples >= 3  # sampled while the bytes flowed
    assert down_growth < MAX_GROWTH
    assert up_growth < MAX_GROWTH
