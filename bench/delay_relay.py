"""`python -m bench.delay_relay --listen PORT --to HOST:PORT --delay-ms 50`: a TCP relay
that puts a service "far away": every byte is delivered `delay` seconds after it arrived,
in each direction. So one request/answer exchange over a kept-alive connection costs
2 x delay more (with 50 ms: a 100 ms round trip), as a remote facilitator would.

Bytes are delayed, not serialized: each chunk is due at its arrival time + delay and
chunks keep their order, so concurrent connections and back-to-back chunks are not slowed
by more than the delay (a pipe, not a queue of sleeps). Connection set-up is not delayed
(the client's pool keeps connections alive; the gateway's does). Why not netns + tc netem:
it needs root and iproute2, and `make bench` runs without either.

Prints one JSON line `{"listening": port}` when ready; stops on SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys

CHUNK = 1 << 16


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> None:
    loop = asyncio.get_running_loop()
    due: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def deliver() -> None:
        while True:
            at, data = await due.get()
            wait = at - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            if not data:  # the sender closed its side: half-close ours, after the delay
                with contextlib.suppress(OSError):
                    if writer.can_write_eof():
                        writer.write_eof()
                return
            writer.write(data)
            await writer.drain()

    delivering = asyncio.create_task(deliver())
    try:
        while True:
            try:
                data = await reader.read(CHUNK)
            except OSError:
                data = b""
            due.put_nowait((loop.time() + delay, data))
            if not data:
                break
        await delivering
    finally:
        delivering.cancel()


async def _relay(
    client_r: asyncio.StreamReader,
    client_w: asyncio.StreamWriter,
    target: tuple[str, int],
    delay: float,
) -> None:
    try:
        server_r, server_w = await asyncio.open_connection(*target)
    except OSError:
        client_w.close()
        return
    try:
        await asyncio.gather(_pipe(client_r, server_w, delay), _pipe(server_r, client_w, delay))
    except (OSError, asyncio.IncompleteReadError):
        pass
    finally:
        for w in (client_w, server_w):
            w.close()


async def serve(port: int, target: tuple[str, int], delay: float) -> None:
    server = await asyncio.start_server(lambda r, w: _relay(r, w, target, delay), "127.0.0.1", port)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print(json.dumps({"listening": port}), flush=True)
    async with server:
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.delay_relay")
    parser.add_argument("--listen", type=int, required=True, help="port on 127.0.0.1")
    parser.add_argument("--to", required=True, help="host:port to relay to")
    parser.add_argument("--delay-ms", type=float, default=50.0, help="added one way, each way")
    args = parser.parse_args(argv)
    host, _, port = args.to.rpartition(":")
    asyncio.run(serve(args.listen, (host, int(port)), args.delay_ms / 1000.0))
    return 0


if __name__ == "__main__":
    sys.exit(main())
