"""A SIWX sign-in's one store call on a real redis-server: on the connections the sessions
store keeps for it (the gateway's road) beside redis-py's pooled road (`KEPT_CONNECTIONS`
0, what the gateway did before), and a bare RESP round trip on an asyncio stream (the floor
any client pays). Client CPU and wall per call, at concurrency 1, in interleaved rounds in
one process: what section E shows only inside a whole request. A developer's measurement,
not a bench section:

    .venv/bin/python -m bench.siwx_store [--calls 3000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable

import uvloop

from gateway.store import sessions as sessions_module
from gateway.store.redis import RedisStore
from gateway.store.sessions import NONCE_PREFIX, open_sessions, paid_key
from tests.procs import redis_server

PAYER = "0x" + "ab" * 20
ROUTE = "/reports/*"


async def _timed(calls: int, one: Callable[[], Awaitable[object]]) -> tuple[float, float]:
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(calls):
        await one()
    return (
        (time.process_time() - cpu) / calls * 1e6,
        (time.perf_counter() - wall) / calls * 1e6,
    )


async def _raw(port: int) -> Callable[[], Awaitable[object]]:
    """The script's two commands (SET NX PX, EXISTS) written at once on a bare asyncio
    stream, their two answers read: no Lua, no client library."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    key = paid_key(ROUTE, PAYER)

    async def one() -> object:
        parts = [b"SET", (NONCE_PREFIX + uuid.uuid4().hex).encode(), b"1", b"NX", b"PX", b"600000"]
        writer.write(b"".join([b"*6\r\n", *(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)]))
        writer.write(b"*2\r\n$6\r\nEXISTS\r\n$%d\r\n%s\r\n" % (len(key), key.encode()))
        return await reader.readline(), await reader.readline()

    return one


async def _run(url: str, port: int, calls: int, rounds: int) -> None:
    kept_store, pool_store = RedisStore(url), RedisStore(url)
    kept, pooled = open_sessions(kept_store), open_sessions(pool_store)
    await kept.record_payment(ROUTE, PAYER, 3600)
    roads: dict[str, Callable[[], Awaitable[object]]] = {
        "kept connection": lambda: kept.sign_in(ROUTE, PAYER, uuid.uuid4().hex, 600),
        "redis-py pool": lambda: pooled.sign_in(ROUTE, PAYER, uuid.uuid4().hex, 600),
        "bare stream (2 pipelined commands)": await _raw(port),
    }
    seen: dict[str, list[tuple[float, float]]] = {name: [] for name in roads}
    for _ in range(rounds):
        for name, one in roads.items():
            sessions_module.KEPT_CONNECTIONS = 0 if name == "redis-py pool" else 8
            await _timed(100, one)  # warm
            seen[name].append(await _timed(calls, one))
    for name, figures in seen.items():
        cpu = statistics.median(f[0] for f in figures)
        wall = statistics.median(f[1] for f in figures)
        print(f"{name:36s} client CPU {cpu:6.1f} µs   wall {wall:6.1f} µs   (median of {rounds})")
    await kept_store.close()
    await pool_store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with redis_server() as server:
        uvloop.run(_run(server.url, server.port, args.calls, args.rounds))


if __name__ == "__main__":
    main()
