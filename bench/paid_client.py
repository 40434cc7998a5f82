"""The paying side of section B: send pre-signed payments, read what came back.

Per request: status, total latency at the client, the gateway's `Server-Timing` entries
and whether `PAYMENT-RESPONSE` says the payment settled.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from typing import Any

import aiohttp
from x402.http.utils import decode_payment_response_header

from bench import nginx
from bench.stats import percentile, rounded

SPLIT_NAMES = ("verify", "origin", "settle", "gw")


def parse_server_timing(value: str | None) -> dict[str, float]:
    """`verify;dur=12.3, gw;dur=0.1` -> {name: microseconds}; unreadable entries skipped."""
    out: dict[str, float] = {}
    for entry in (value or "").split(","):
        name, *params = (part.strip() for part in entry.split(";"))
        for param in params:
            key, _, number = param.partition("=")
            if name and key.strip() == "dur":
                try:
                    out[name] = float(number.strip('"')) * 1000.0
                except ValueError:
                    continue
    return out


def _settled(value: str | None) -> bool:
    if not value:
        return False
    try:
        return bool(decode_payment_response_header(value).success)
    except Exception:  # an unreadable receipt counts as not settled
        return False


async def _get(session: aiohttp.ClientSession, url: str) -> None:
    async with session.get(url) as resp:
        await resp.read()


async def send_all(
    url: str, header_sets: Sequence[Mapping[str, str]], concurrency: int
) -> tuple[list[dict[str, Any]], float]:
    """Send one request per header set, `concurrency` at a time; per-request records and
    the wall time of the whole batch."""
    queue: asyncio.Queue[Mapping[str, str]] = asyncio.Queue()
    for headers in header_sets:
        queue.put_nowait(headers)
    records: list[dict[str, Any]] = []
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, auto_decompress=False) as session:

        async def worker() -> None:
            while not queue.empty():
                headers = queue.get_nowait()
                started = time.perf_counter()
                async with session.get(url, headers=dict(headers)) as resp:
                    await resp.read()
                    records.append(
                        {
                            "status": resp.status,
                            "total_us": (time.perf_counter() - started) * 1e6,
                            "timing": parse_server_timing(resp.headers.get("Server-Timing")),
                            "settled": _settled(resp.headers.get("PAYMENT-RESPONSE")),
                        }
                    )

        # Open the connections before the clock starts, as a warmed-up client would have.
        warm_url = url.rsplit("/", 1)[0] + nginx.SMALL_PATH
        await asyncio.gather(*(_get(session, warm_url) for _ in range(concurrency)))
        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - started
    return records, wall


def dist(values: list[float]) -> dict[str, float | None]:
    return {"p50": rounded(percentile(values, 50)), "p99": rounded(percentile(values, 99))}


def split(records: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [r for r in records if r["status"] == 200]
    names = sorted({name for r in ok for name in r["timing"]})
    split: dict[str, Any] = {
        "requests": len(records),
        "ok": len(ok),
        "settled": sum(1 for r in ok if r["settled"]),
        "statuses": sorted({r["status"] for r in records}),
        "total_us": dist([r["total_us"] for r in ok]),
        "server_timing_names": names or "missing",
    }
    for name in SPLIT_NAMES:
        values = [r["timing"][name] for r in ok if name in r["timing"]]
        split[f"{name}_us"] = dist(values) if values else "missing"
    # What the gateway adds besides the facilitator's two calls: comparable with a free
    # request's whole latency, which also holds the origin, loopback and this client.
    split["total_minus_verify_settle_us"] = dist(
        [
            r["total_us"] - r["timing"].get("verify", 0.0) - r["timing"].get("settle", 0.0)
            for r in ok
            if "verify" in r["timing"] and "settle" in r["timing"]
        ]
    )
    return split
