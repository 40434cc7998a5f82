"""`python -m bench.voucher_calls` (issue 14): what a channel voucher costs over a free
request in calls, in the gateway and in the floor (bench/floor_voucher.py), counted by
cProfile: Python functions apart from C ones (builtins, methods of C types). Deterministic,
where section E's latencies move by ±100 µs between runs on a shared machine.

Section E's parts (anvil, the test USDC, the SDK's facilitator, the nginx origin, the
gateway on section E's config, the floor), each server profiled between SIGUSR1 and SIGUSR2
(`bench.gateway_calls.profiled`). The channel is opened through the gateway by the SDK's
client; its next vouchers go, in order, first to the gateway, then to the floor (which
learns the channel from the first it sees). After a warm-up, N free requests and N vouchers
to each, one at a time, each batch profiled on its own. `--redis`: the gateway on a
redis-server store (what replicas share: no voucher road there, every voucher takes the full
path).

Read with section E's figures: at one request at a time, a server's latency over its free
request follows its extra work; the floor's calls are the least a voucher takes in Python.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import pstats
import signal
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from bench import channel_calls, nginx, paid_route, sessions
from bench.gateway_calls import profiled
from bench.paid_client import send_all
from bench.procs import ProcGroup, free_port

WARM = 20  # vouchers (and free requests) sent to each server before the profile


@dataclass(frozen=True)
class Calls:
    """Calls per request in one profile: Python functions, C functions."""

    python: float
    c: float

    @property
    def total(self) -> float:
        return self.python + self.c

    def minus(self, other: Calls) -> Calls:
        return Calls(self.python - other.python, self.c - other.c)


def calls_per_request(stats: pstats.Stats, n: int) -> Calls:
    """cProfile names a C function's file `~`: every other entry is Python code."""
    python = c = 0
    for (file, _line, _name), (_, calls, *_rest) in stats.stats.items():
        if file == "~":
            c += calls
        else:
            python += calls
    return Calls(python / n, c / n)


@dataclass(frozen=True)
class Server:
    name: str
    url: str
    pid: int


def _start(group: ProcGroup, name: str, argv: list[str], port: int, out: Path) -> Server:
    root = str(Path(__file__).resolve().parent.parent)
    env = {"GATEWAY_CALLS_OUT": str(out / name), "PYTHONPATH": root}
    proc = group.start(name, argv, port=port, env=env, timeout=60.0)
    return Server(name, f"http://127.0.0.1:{port}", proc.pid)


def start_servers(
    group: ProcGroup,
    workdir: Path,
    env: paid_route.PaidEnv,
    upstream: str,
    out: Path,
    store: str | None = None,
) -> tuple[Server, Server]:
    """The gateway on section E's config (on `store`, if given) and the floor, each under
    `profiled`."""
    port, admin = free_port(), free_port()
    config = {**sessions.session_config(env, upstream, port), "admin": f"127.0.0.1:{admin}"}
    if store is not None:
        config["store"] = store
    path = workdir / "gateway.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    me = [sys.executable, "-m", "bench.voucher_calls"]
    gateway = _start(group, "gateway", [*me, "--serve", "--config", str(path)], port, out)
    floor_port = free_port()
    floor_argv = [*me, "--serve-floor", "--listen", f"127.0.0.1:{floor_port}"]
    floor = _start(group, "floor", [*floor_argv, "--upstream", upstream], floor_port, out)
    return gateway, floor


async def _profile(server: Server, url: str, headers: list[dict[str, str]]) -> None:
    os.kill(server.pid, signal.SIGUSR1)
    await asyncio.sleep(0.3)
    records, _ = await send_all(url, headers, 1)
    os.kill(server.pid, signal.SIGUSR2)
    await asyncio.sleep(1.0)  # the profile written
    statuses = {r["status"] for r in records}
    if statuses != {200}:
        raise RuntimeError(f"{server.name} {url}: statuses {statuses}")


async def measure(gateway: Server, floor: Server, env: paid_route.PaidEnv, n: int) -> None:
    payer = env.payers[0]
    deposit = await channel_calls.open_channel(gateway.url + nginx.CHANNEL_PATH, env, payer)
    signed = channel_calls.vouchers(deposit, payer, 2 * (WARM + n))
    for server, mine in ((gateway, signed[: WARM + n]), (floor, signed[WARM + n :])):
        free, paid = server.url + nginx.SMALL_PATH, server.url + nginx.CHANNEL_PATH
        await send_all(free, [{}] * WARM, 1)
        await send_all(paid, mine[:WARM], 1)
        await _profile(server, free, [{}] * n)  # profile .0
        await _profile(server, paid, mine[WARM:])  # profile .1


def report(out: Path, n: int) -> str:
    lines = [f"Calls per request ({n} each, one at a time; cProfile: Python functions / C)"]
    lines.append(f"{'server':8} {'free':>16} {'voucher':>16} {'voucher - free':>22}")
    for name in ("gateway", "floor"):
        free, paid = (calls_per_request(pstats.Stats(str(out / f"{name}.{k}")), n) for k in (0, 1))
        over = paid.minus(free)
        lines.append(
            f"{name:8} {free.total:7.1f} ({free.python:5.1f}) {paid.total:7.1f}"
            f" ({paid.python:5.1f}) {over.total:9.1f} ({over.python:5.1f} Python, {over.c:5.1f} C)"
        )
    return "\n".join(lines)


def _redis(group: ProcGroup, workdir: Path) -> str:
    store = sessions.start_redis(group, workdir, "redis")
    if store is None:
        raise SystemExit("--redis: redis-server is not installed")
    return store


def run(n: int, log: Any, redis: bool = False) -> str:
    workdir = Path(tempfile.mkdtemp(prefix="bench-voucher-calls-"))
    out = workdir / "profiles"
    out.mkdir()
    group = ProcGroup(workdir)
    origin_port = free_port()
    nginx.start_origin(group, workdir, origin_port, 1024)
    env = paid_route.start_env(group, 3, log)
    try:
        upstream = f"http://127.0.0.1:{origin_port}"
        store = _redis(group, workdir) if redis else None
        gateway, floor = start_servers(group, workdir, env, upstream, out, store)
        asyncio.run(measure(gateway, floor, env, n))
    finally:
        paid_route.stop_env(env)
        group.close()
    return report(out, n)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--serve"]:
        from bench.gateway_calls import serve_profiled

        return serve_profiled(["serve", *argv[1:]])
    if argv[:1] == ["--serve-floor"]:
        from bench import floor_voucher

        def serve() -> int:
            sys.argv = ["floor_voucher", *argv[1:]]
            floor_voucher.main()
            return 0

        return profiled(serve)
    parser = argparse.ArgumentParser(prog="python -m bench.voucher_calls")
    parser.add_argument("--requests", type=int, default=400, help="free, then vouchers")
    parser.add_argument(
        "--redis", action="store_true", help="the gateway on a redis-server store (no road)"
    )
    args = parser.parse_args(argv)
    print(run(args.requests, lambda m: print(m, flush=True), args.redis))
    return 0


if __name__ == "__main__":
    sys.exit(main())
