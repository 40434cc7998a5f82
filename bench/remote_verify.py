"""`python -m bench.remote_verify [--quick]` (section G of `make bench`): `verify: local` vs
`verify: facilitator` with the facilitator 50 ms away, interleaved in one run on one anvil.

"50 ms away" here means 50 ms ONE WAY, in each direction (`bench/delay_relay.py` in front
of the facilitator): one request/answer exchange with it costs 100 ms more than on
loopback, measured in the run as `relay_rtt_ms` (a GET /supported through the relay).
The chain's RPC stays on loopback (the gateway's own node, as `networks:` names it).

Four gateways, identical but for two settings: the facilitator (the SDK's facilitator
server, `sdk`, or `x402-gateway facilitator`, `engine`), each behind its own relay, and
`verify: facilitator | local` (with `networks: {net: {rpc_url}}`, so local verify reads
the payer's balance and `authorizationState` in one batch). At concurrency 1, in rounds,
each round running every gateway in a rotating order; every request a fresh payment from
its own payer, signed before the clock. Per gateway: p50/p99 at the client and the
gateway's own `Server-Timing` for verify and settle; per facilitator, the p50 difference
facilitator - local (target: about one round trip, 100 ms). Then every payment is checked
on chain (double charges, unpaid 200s, charged-but-not-served: all must be 0).

Writes bench/results/remote-verify-latest.json and .md.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from x402.http.utils import decode_payment_response_header

from bench.gateway_proc import gateway_argv, start_gateway
from bench.paid_client import parse_server_timing
from bench.paid_engine import (
    PAID,
    TOKEN,
    Variant,
    fund,
    gateway_config,
    on_chain,
    on_chain_lines,
    settler_keys,
    sign,
    start_origin,
    write_results,
)
from bench.procs import ProcGroup, free_port
from bench.stats import percentile, rounded
from gateway.demo import chain as chainlib

DELAY_MS = 50.0  # one way, each direction
FACILITATORS = ("sdk", "engine")
MODES = ("facilitator", "local")


@dataclass(frozen=True)
class Params:
    rounds: int
    per_round: int  # payments per gateway per round


FULL = Params(rounds=5, per_round=8)
QUICK = Params(rounds=3, per_round=5)


def start_facilitators(group: ProcGroup, local: Any) -> dict[str, tuple[str, int]]:
    """The SDK's facilitator server and `x402-gateway facilitator` (4 keys): url, pid."""
    rpc = local.rpc_url
    sdk_port, fac_port = free_port(), free_port()
    sdk = group.start(
        "sdk-facilitator",
        [
            *(sys.executable, "-m", "gateway.demo.facilitator_server", "--rpc-url", rpc),
            *("--private-key-env", "BENCH_SDK_KEY", "--port", str(sdk_port)),
            *("--network", local.network),
        ],
        port=sdk_port,
        env={"BENCH_SDK_KEY": local.facilitator_key},
        timeout=60,
    )
    key_env = {f"BENCH_KEY_{i}": k for i, k in enumerate(settler_keys(rpc, 4))}
    engine = group.start(
        "engine-facilitator",
        [
            *gateway_argv(Path("x"))[:-3],  # x402-gateway, without `serve --config x`
            *("facilitator", "--rpc-url", rpc, "--chain-id", str(chainlib.BASE_SEPOLIA_CHAIN_ID)),
            *(arg for name in key_env for arg in ("--key-env", name)),
            *("--listen", f"127.0.0.1:{fac_port}", "--token-env", "BENCH_TOKEN"),
            *("--batch-window", "0ms", "--poll-interval", "50ms"),
        ],
        port=fac_port,
        env=key_env | {"BENCH_TOKEN": TOKEN},
        timeout=60,
    )
    return {
        "sdk": (f"http://127.0.0.1:{sdk_port}", sdk.pid),
        "engine": (f"http://127.0.0.1:{fac_port}", engine.pid),
    }


def start_relay(group: ProcGroup, name: str, target: str) -> str:
    port = free_port()
    argv = [sys.executable, "-m", "bench.delay_relay", "--listen", str(port)]
    argv += ["--to", target.removeprefix("http://"), "--delay-ms", str(DELAY_MS)]
    group.start(f"relay-{name}", argv, port=port)
    return f"http://127.0.0.1:{port}"


def start_gateways(
    group: ProcGroup, workdir: Path, local: Any, upstream: str
) -> tuple[list[Variant], dict[str, str]]:
    facilitators = start_facilitators(group, local)
    relays = {name: start_relay(group, name, url) for name, (url, _) in facilitators.items()}
    variants = []
    for name in FACILITATORS:
        facilitator: dict[str, Any] = {"url": relays[name], "timeout": "60s"}
        if name == "engine":
            facilitator["headers"] = {"Authorization": f"Bearer {TOKEN}"}
        for mode in MODES:
            pay_to = str(chainlib.new_account().address)
            cfg = gateway_config(local, upstream, pay_to, facilitator) | {
                "verify": mode,
                "networks": {local.network: {"rpc_url": local.rpc_url}},
                "server_timing": True,
            }
            label = f"{name}/{mode}"
            proc, port = start_gateway(group, workdir, f"gw-{name}-{mode}", cfg)
            pids = {"gateway": proc.pid, "facilitator": facilitators[name][1]}
            variants.append(Variant(label, f"http://127.0.0.1:{port}", pay_to, pids))
    return variants, relays


async def relay_rtt_ms(relay: str, n: int = 5) -> float | None:
    """A GET /supported through the relay on a kept-alive connection: the round trip."""
    times = []
    async with aiohttp.ClientSession() as session:
        for _ in range(n + 1):
            started = time.perf_counter()
            async with session.get(relay + "/supported") as resp:
                await resp.read()
            times.append((time.perf_counter() - started) * 1e3)
    return rounded(percentile(times[1:], 50))  # the first one opened the connection


async def send_one_by_one(url: str, signed: list[Any]) -> list[dict[str, Any]]:
    """Concurrency 1 on one kept-alive connection; per request: status, ms, Server-Timing."""
    records = []
    connector = aiohttp.TCPConnector(limit=1)
    async with aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=120)
    ) as session:
        async with session.get(url + "/warm") as resp:  # the connection opens off the clock
            await resp.read()
        for payer, headers in signed:
            started = time.perf_counter()
            async with session.get(url + PAID, headers=headers) as resp:
                await resp.read()
                ms = (time.perf_counter() - started) * 1e3
                answer = resp.headers.get("PAYMENT-RESPONSE")
                tx = decode_payment_response_header(answer).transaction if answer else ""
                timing = parse_server_timing(resp.headers.get("Server-Timing"))
                records.append(
                    {
                        "payer": payer,
                        "status": resp.status,
                        "tx": (tx or "").lower(),
                        "ms": ms,
                        "verify_ms": timing["verify"] / 1e3 if "verify" in timing else None,
                        "settle_ms": timing["settle"] / 1e3 if "settle" in timing else None,
                    }
                )
    return records


def summary(records: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [r for r in records if r["status"] == 200]

    def p(key: str, q: float) -> float | None:
        return rounded(percentile([r[key] for r in ok if r[key] is not None], q))

    return {
        "payments": len(records),
        "ok": len(ok),
        "statuses": dict(Counter(r["status"] for r in records)),
        "p50_ms": p("ms", 50),
        "p99_ms": p("ms", 99),
        "verify_p50_ms": p("verify_ms", 50),
        "settle_p50_ms": p("settle_ms", 50),
    }


def differences(cells: dict[str, Any]) -> dict[str, Any]:
    """Per facilitator: p50 with verify: facilitator minus p50 with verify: local."""
    out = {}
    for name in FACILITATORS:
        remote, local = cells.get(f"{name}/facilitator"), cells.get(f"{name}/local")
        if remote and local and remote["p50_ms"] is not None and local["p50_ms"] is not None:
            out[name] = {
                "p50_cut_ms": rounded(remote["p50_ms"] - local["p50_ms"]),
                "verify_p50_cut_ms": rounded(
                    (remote["verify_p50_ms"] or 0.0) - (local["verify_p50_ms"] or 0.0)
                ),
            }
    return out


async def run(params: Params, log: Any) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="bench-remote-verify-"))
    group = ProcGroup(workdir)
    anvil = chainlib.start_anvil()
    runner, upstream = await start_origin()
    try:
        local = await asyncio.to_thread(chainlib.prepare_chain, anvil.rpc_url)
        variants, relays = await asyncio.to_thread(start_gateways, group, workdir, local, upstream)
        total = (params.rounds * params.per_round + 2) * len(variants)
        payers = await asyncio.to_thread(fund, local, total)
        rtt = {name: await relay_rtt_ms(url) for name, url in relays.items()}
        log(f"G {total} payers funded; relay round trips (ms): {rtt}")
        for v in variants:  # warm-up, untimed: real payments, counted on chain with the rest
            v.records += await send_one_by_one(
                v.url, await sign(v, local, [payers.pop(), payers.pop()])
            )
        timed: dict[str, list[dict[str, Any]]] = {v.name: [] for v in variants}
        for r in range(params.rounds):
            order = variants[r % len(variants) :] + variants[: r % len(variants)]
            for v in order:
                signed = await sign(v, local, [payers.pop() for _ in range(params.per_round)])
                records = await send_one_by_one(v.url, signed)
                timed[v.name] += records
                v.records += records
            log(f"G round {r + 1}/{params.rounds} done")
        cells = {name: summary(records) for name, records in timed.items()}
        checks = {v.name: on_chain(local, v) for v in variants}
    finally:
        await runner.cleanup()
        group.close()
        anvil.stop()
    return {
        "params": params.__dict__,
        "delay_ms_one_way": DELAY_MS,
        "relay_rtt_ms": rtt,
        "cells": cells,
        "p50_cut": differences(cells),
        "on_chain": checks,
    }


def table_lines(results: dict[str, Any]) -> list[str]:
    lines = [
        f"Facilitator behind a relay adding {results['delay_ms_one_way']:.0f} ms one way, each"
        f" direction (measured round trip through it, p50 ms: {results['relay_rtt_ms']});"
        " chain RPC on loopback; concurrency 1; every request a fresh payment.",
        "",
        "| facilitator / verify | payments | ok | p50 ms | p99 ms | verify p50 ms |"
        " settle p50 ms |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, c in results.get("cells", {}).items():
        lines.append(
            f"| {name} | {c['payments']} | {c['ok']} | {c['p50_ms']} | {c['p99_ms']} |"
            f" {c['verify_p50_ms']} | {c['settle_p50_ms']} |"
        )
    lines += ["", "| facilitator | p50 cut by verify: local (ms) | verify step cut (ms) |"]
    lines += ["| --- | --- | --- |"]
    for name, d in results.get("p50_cut", {}).items():
        lines.append(f"| {name} | {d['p50_cut_ms']} | {d['verify_p50_cut_ms']} |")
    lines += ["", "On chain (every payment, warm-ups included):", ""]
    return lines + on_chain_lines(results, "gateway")


def markdown(results: dict[str, Any]) -> str:
    head = [
        "# verify: local vs verify: facilitator, facilitator 50 ms away",
        "",
        f"{results['when']} · {results['machine']} · load {results['load']} · "
        f"`python -m bench.remote_verify{' --quick' if results['profile'] == 'quick' else ''}`",
        "",
    ]
    return "\n".join(head + table_lines(results)) + "\n"


def section(quick: bool, log: Any) -> dict[str, Any]:
    """Section G of `make bench`."""
    return asyncio.run(run(QUICK if quick else FULL, log))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.remote_verify")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    results = asyncio.run(run(QUICK if args.quick else FULL, lambda m: print(m, flush=True)))
    write_results(results, "remote-verify", markdown, quick=args.quick)
    checks = results["on_chain"].values()
    bad = [c for c in checks if c["double_charges"] or c["unpaid_200s"] or c["charged_not_served"]]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
