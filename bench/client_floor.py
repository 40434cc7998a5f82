"""`python -m bench.client_floor`: what one HTTP round trip costs the calling process, the
floor under the gateway's CPU per paid request (issue 13 item 5).

A paid request with `verify: facilitator` makes three client round trips (POST /verify, the
origin, POST /settle) besides answering its own client; a free request makes one. This
measures, in this process (uvloop, as the gateway runs), the CPU per sequential round trip of
an aiohttp `ClientSession` (the gateway's client) POSTing a payment-sized JSON body (~1.5 KB)
to a small aiohttp server in another process and reading its JSON answer; the same session
tuned (`aiohttp-tuned`: what per-call options can save); aiohttp's client protocol with the
request written as prebuilt bytes (`response-handler`: `gateway.facilitators.http1`, the
gateway's facilitator POSTs); and a bare asyncio stream writing and reading the bytes (no
HTTP library: the kernel's and the event loop's share alone). CPU is `time.process_time()`
of this process; the median of `--rounds` rounds is printed.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import uvloop
from aiohttp.client_proto import ResponseHandler
from yarl import URL

from bench.procs import ProcGroup, free_port

BODY = b'{"x402Version":2,"paymentPayload":' + b'{"k":"' + b"a" * 1400 + b'"}}'
JSON = {"Content-Type": "application/json"}
ANSWER = b'{"isValid":true,"payer":"0x' + b"1" * 40 + b'"}'
SERVER = f"""
import sys
from aiohttp import web
async def ok(request):
    await request.read()
    return web.Response(body={ANSWER!r}, content_type="application/json")
app = web.Application()
app.router.add_post("/verify", ok)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)
"""


# The same POST as prebuilt bytes, for the two variants that write it themselves.
REQUEST = (
    b"POST /verify HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    b"Content-Length: " + str(len(BODY)).encode() + b"\r\n\r\n" + BODY
)
WARM = 10  # round trips before the clock: the connection opened and warm


async def cpu_per_call(once: Callable[[], Awaitable[None]], n: int) -> float:
    """CPU seconds of this process per `once()`, over `n` calls after `WARM` unclocked ones."""
    for _ in range(WARM):
        await once()
    started = time.process_time()
    for _ in range(n):
        await once()
    return (time.process_time() - started) / n


async def with_aiohttp(url: str, n: int) -> float:
    async with aiohttp.ClientSession() as session:

        async def once() -> None:
            async with session.post(url, data=BODY, headers=JSON) as resp:
                await resp.read()

        return await cpu_per_call(once, n)


async def with_aiohttp_tuned(url: str, n: int) -> float:
    """The same POST as the gateway's facilitator client makes it: one session built for it
    (no cookies, no auto headers, no decompression), the URL parsed, the headers and the
    timeout built once, the answer read whole."""
    target = URL(url)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(
        cookie_jar=aiohttp.DummyCookieJar(),
        skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding"),
        auto_decompress=False,
    ) as session:

        async def once() -> None:
            async with session.post(target, data=BODY, headers=JSON, timeout=timeout) as resp:
                await resp.read()

        return await cpu_per_call(once, n)


async def with_response_handler(port: int, n: int) -> float:
    """aiohttp's own client protocol and C response parser (`ResponseHandler`) on one kept
    connection, the request bytes written as they are: what `gateway.facilitators.http1`
    does."""
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_connection(
        lambda: ResponseHandler(loop), "127.0.0.1", port
    )
    try:

        async def once() -> None:
            proto.set_response_params(read_timeout=60)
            transport.write(REQUEST)
            message, payload = await proto.read()
            await payload.read()
            assert message.code == 200 and not message.should_close

        return await cpu_per_call(once, n)
    finally:
        transport.close()


async def with_bare_protocol(port: int, n: int) -> float:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:

        async def once() -> None:
            writer.write(REQUEST)
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            await reader.readexactly(length)

        return await cpu_per_call(once, n)
    finally:
        writer.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.client_floor")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="bench-client-floor-"))
    group = ProcGroup(workdir)
    port = free_port()
    try:
        group.start("server", [sys.executable, "-c", SERVER, str(port)], port=port)
        url = f"http://127.0.0.1:{port}/verify"
        figures: dict[str, list[float]] = {
            "aiohttp": [],
            "aiohttp-tuned": [],
            "response-handler": [],
            "bare": [],
        }
        for _ in range(args.rounds):
            figures["aiohttp"].append(uvloop.run(with_aiohttp(url, args.requests)))
            figures["aiohttp-tuned"].append(uvloop.run(with_aiohttp_tuned(url, args.requests)))
            figures["response-handler"].append(
                uvloop.run(with_response_handler(port, args.requests))
            )
            figures["bare"].append(uvloop.run(with_bare_protocol(port, args.requests)))
    finally:
        group.close()
    for name, values in figures.items():
        us = [v * 1e6 for v in values]
        print(
            f"{name}: {statistics.median(us):.1f} µs CPU per round trip (median of"
            f" {len(us)}; min {min(us):.1f}, max {max(us):.1f})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
