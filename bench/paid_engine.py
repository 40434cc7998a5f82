"""`python -m bench.paid_engine [--quick]` (section F of `make bench`): paid requests/s
through a real gateway, settled three ways, interleaved in one run on one anvil:

- `sdk-http`:      the gateway with the SDK's facilitator over HTTP (today's default);
- `engine`:        the gateway with the settlement engine in process (`facilitator.local`);
- `engine-http`:   the gateway with `x402-gateway facilitator` over HTTP (bearer auth).

Both engines: 4 settler keys, a 20 ms batch window. On anvil with automine, then with a 1 s
block time; at concurrency 1, 8 and 32. Every request is a fresh payment from its own payer
(signed before the clock starts), and every one is checked on chain afterwards: a 200 must
have exactly its payer's Transfer in the transaction its PAYMENT-RESPONSE names, a non-200
none (double charges, unpaid 200s and charged-but-refused are counted, and must be 0).
Also the CPU time of the gateway (and of the facilitator process) per paid request.

Writes bench/results/paid-engine-latest.json and .md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from eth_account.signers.local import LocalAccount
from x402.http.utils import decode_payment_response_header

from bench.engine import transfer_logs
from bench.gateway_proc import gateway_argv, start_gateway
from bench.procs import ProcGroup, cpu_seconds_fine, free_port
from bench.stats import percentile, rounded
from gateway.demo import chain as chainlib
from gateway.demo.payer import make_x402_client, pay_challenge

RESULTS = Path(__file__).resolve().parent / "results"
BANK = chainlib.ANVIL_KEYS[9]
PAID = "/paid/item.json"
TOKEN = "bench-facilitator-token"
VARIANTS = ("sdk-http", "engine", "engine-http")
CONCURRENCY = (1, 8, 32)
ENGINE_KNOBS = {"batch_window": "20ms", "max_batch": 50, "poll_interval": "50ms"}


@dataclass(frozen=True)
class Params:
    automine: dict[int, int]  # concurrency -> payments per cell
    blocks: dict[int, int]  # the same with a 1 s block time


FULL = Params({1: 20, 8: 64, 32: 128}, {1: 5, 8: 24, 32: 64})
QUICK = Params({1: 8, 8: 24, 32: 64}, {1: 3, 8: 16, 32: 32})


@dataclass
class Variant:
    name: str
    url: str
    pay_to: str
    pids: dict[str, int]
    records: list[dict[str, Any]] = field(default_factory=list)


def settler_keys(rpc_url: str, n: int) -> list[str]:
    keys = []
    for _ in range(n):
        account = chainlib.new_account()
        chainlib.fund_eth(rpc_url, BANK, account.address, 10**20)
        keys.append("0x" + bytes(account.key).hex())
    return keys


async def start_origin() -> tuple[web.AppRunner, str]:
    async def ok(_: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_get("/{tail:.*}", ok)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, f"http://127.0.0.1:{port}"


def gateway_config(local: Any, upstream: str, pay_to: str, facilitator: Any) -> dict[str, Any]:
    return {
        "upstream": upstream,
        "facilitator": facilitator,
        "network": local.network,
        "pay_to": pay_to,
        "asset": {"address": local.token, "name": "USD Coin", "version": "2", "decimals": 6},
        "store": "memory",
        "log_level": "warning",
        "routes": [{"path": "/paid/*", "price": "$0.001"}, {"path": "/*", "price": "free"}],
    }


def start_all(group: ProcGroup, workdir: Path, local: Any, upstream: str) -> list[Variant]:
    """The SDK's facilitator server, `x402-gateway facilitator`, and three gateways."""
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
    http_keys = settler_keys(rpc, 4)
    key_env = {f"BENCH_KEY_{i}": k for i, k in enumerate(http_keys)} | {"BENCH_TOKEN": TOKEN}
    fac = group.start(
        "engine-facilitator",
        [
            *gateway_argv(Path("x"))[:-3],  # x402-gateway, without `serve --config x`
            *("facilitator", "--rpc-url", rpc, "--chain-id", str(chainlib.BASE_SEPOLIA_CHAIN_ID)),
            *(arg for name in key_env if name != "BENCH_TOKEN" for arg in ("--key-env", name)),
            *("--listen", f"127.0.0.1:{fac_port}", "--token-env", "BENCH_TOKEN"),
            *("--batch-window", "20ms", "--max-batch", "50", "--poll-interval", "50ms"),
        ],
        port=fac_port,
        env=key_env,
        timeout=60,
    )
    inproc_keys = settler_keys(rpc, 4)
    local_cfg = {"rpc_url": rpc, "private_key": inproc_keys[0], "keys": inproc_keys[1:]}
    facilitators = {
        "sdk-http": (
            {"url": f"http://127.0.0.1:{sdk_port}", "timeout": "60s"},
            {"facilitator": sdk.pid},
        ),
        "engine": ({"local": local_cfg | ENGINE_KNOBS, "timeout": "60s"}, {}),
        "engine-http": (
            {
                "url": f"http://127.0.0.1:{fac_port}",
                "headers": {"Authorization": f"Bearer {TOKEN}"},
                "timeout": "60s",
            },
            {"facilitator": fac.pid},
        ),
    }
    variants = []
    for name in VARIANTS:
        facilitator, pids = facilitators[name]
        pay_to = str(chainlib.new_account().address)
        cfg = gateway_config(local, upstream, pay_to, facilitator)
        proc, port = start_gateway(group, workdir, f"gw-{name}", cfg)
        variants.append(
            Variant(name, f"http://127.0.0.1:{port}", pay_to, {"gateway": proc.pid} | pids)
        )
    return variants


async def sign(variant: Variant, local: Any, payers: Sequence[LocalAccount]) -> list[Any]:
    async with aiohttp.ClientSession() as session, session.get(variant.url + PAID) as resp:
        body, headers = await resp.read(), dict(resp.headers)
        if resp.status != 402:
            raise RuntimeError(f"{variant.name}: expected a 402, got {resp.status}")
    assets = [(local.network, local.token)]
    signed = []
    for payer in payers:
        header, _ = await pay_challenge(make_x402_client(payer, assets), headers, body)
        signed.append((payer.address.lower(), header))
    return signed


async def send(url: str, signed: list[Any], concurrency: int) -> tuple[list[dict[str, Any]], float]:
    queue: asyncio.Queue[Any] = asyncio.Queue()
    for item in signed:
        queue.put_nowait(item)
    records: list[dict[str, Any]] = []
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=120)
    ) as session:

        async def worker() -> None:
            while not queue.empty():
                payer, headers = queue.get_nowait()
                started = time.perf_counter()
                async with session.get(url + PAID, headers=headers) as resp:
                    await resp.read()
                    answer = resp.headers.get("PAYMENT-RESPONSE")
                    tx = decode_payment_response_header(answer).transaction if answer else ""
                    records.append(
                        {
                            "payer": payer,
                            "status": resp.status,
                            "tx": (tx or "").lower(),
                            "ms": (time.perf_counter() - started) * 1e3,
                        }
                    )

        async def warm() -> None:
            async with session.get(url + "/warm") as resp:
                await resp.read()

        # the client's connections open before the clock starts (a free route)
        await asyncio.gather(*(warm() for _ in range(concurrency)))
        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - started
    return records, wall


def cpu(pids: dict[str, int]) -> dict[str, float]:
    return {name: cpu_seconds_fine(pid) for name, pid in pids.items()}


async def cell(variant: Variant, local: Any, payers: list[LocalAccount], c: int) -> dict[str, Any]:
    signed = await sign(variant, local, payers)
    before = cpu(variant.pids)
    records, wall = await send(variant.url, signed, c)
    after = cpu(variant.pids)
    variant.records += records
    ok = [r["ms"] for r in records if r["status"] == 200]
    n = len(records)
    return {
        "payments": n,
        "ok": len(ok),
        "statuses": dict(Counter(r["status"] for r in records)),
        "rps": rounded(n / wall, 1),
        "p50_ms": rounded(percentile(ok, 50)),
        "p99_ms": rounded(percentile(ok, 99)),
        "cpu_ms_per_request": {
            k: rounded((after[k] - before[k]) * 1e3 / max(1, n), 2) for k in variant.pids
        },
    }


def on_chain(local: Any, variant: Variant) -> dict[str, int]:
    """The money check: each 200 charged once in its named transaction, nothing else."""
    logs = transfer_logs(local, variant.pay_to)
    charged: dict[str, list[str]] = {}
    for log in logs:
        charged.setdefault("0x" + log["topics"][1][-40:], []).append(log["transactionHash"].lower())
    served = {r["payer"]: r for r in variant.records}
    return {
        "payments": len(variant.records),
        "served_200": sum(r["status"] == 200 for r in variant.records),
        "transfers": sum(len(v) for v in charged.values()),
        "double_charges": sum(len(v) - 1 for v in charged.values() if len(v) > 1),
        "unpaid_200s": sum(
            1
            for r in variant.records
            if r["status"] == 200 and r["tx"] not in charged.get(r["payer"], [])
        ),
        "charged_not_served": sum(
            1 for p in charged if p not in served or served[p]["status"] != 200
        ),
    }


def fund(local: Any, n: int) -> list[LocalAccount]:
    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(lambda _: local.new_payer(10_000), range(n)))


async def run(params: Params, log: Any) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="bench-paid-engine-"))
    group = ProcGroup(workdir)
    anvil = chainlib.start_anvil()
    runner, upstream = await start_origin()
    try:
        local = await asyncio.to_thread(chainlib.prepare_chain, anvil.rpc_url)
        variants = await asyncio.to_thread(start_all, group, workdir, local, upstream)
        total = (sum(params.automine.values()) + sum(params.blocks.values()) + 2) * len(variants)
        payers = await asyncio.to_thread(fund, local, total)
        log(f"E {total} payers funded; gateways: {', '.join(v.name for v in variants)}")
        for v in variants:  # warm-up, untimed (first connections, first nonce reads)
            warmup, _ = await send(v.url, await sign(v, local, [payers.pop(), payers.pop()]), 2)
            v.records += warmup  # real payments: counted on chain with the rest
        table: dict[str, Any] = {}
        for mode, counts in (("automine", params.automine), ("1s blocks", params.blocks)):
            if mode == "1s blocks":
                chainlib.rpc_call(local.rpc_url, "evm_setAutomine", [False])
                chainlib.rpc_call(local.rpc_url, "evm_setIntervalMining", [1])
            for c in CONCURRENCY:
                # interleaved: each cell runs every variant, in a rotating order
                order = variants[c % 3 :] + variants[: c % 3]
                for v in order:
                    batch = [payers.pop() for _ in range(counts[c])]
                    result = await cell(v, local, batch, c)
                    table.setdefault(mode, {}).setdefault(f"c={c}", {})[v.name] = result
                    log(f"E {mode} c={c} {v.name}: {result['rps']} req/s p50 {result['p50_ms']} ms")
        chainlib.rpc_call(local.rpc_url, "evm_setAutomine", [True])
        checks = {v.name: on_chain(local, v) for v in variants}
    finally:
        await runner.cleanup()
        group.close()
        anvil.stop()
    return {"params": params.__dict__, "cells": table, "on_chain": checks}


def table_lines(results: dict[str, Any]) -> list[str]:
    lines = [
        "| chain | c | variant | payments | ok | req/s | p50 ms | p99 ms | gateway CPU ms/req |"
        " facilitator CPU ms/req | vs sdk-http |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for mode, cells in results.get("cells", {}).items():
        for c, variants in cells.items():
            base = variants["sdk-http"]["rps"] or 0
            for name, r in variants.items():
                cpu_ = r["cpu_ms_per_request"]
                ratio = f"{r['rps'] / base:.1f}" if base else "-"
                lines.append(
                    f"| {mode} | {c[2:]} | {name} | {r['payments']} | {r['ok']} | {r['rps']} |"
                    f" {r['p50_ms']} | {r['p99_ms']} | {cpu_.get('gateway')} |"
                    f" {cpu_.get('facilitator', '(in gateway)')} | {ratio} |"
                )
    lines += ["", "On chain (every payment of every cell, warm-ups included):", ""]
    return lines + on_chain_lines(results, "variant")


def on_chain_lines(results: dict[str, Any], label: str) -> list[str]:
    """The on-chain count of every payment, one row per gateway (`label` names the column)."""
    lines = [
        f"| {label} | payments | 200s | transfers | double charges | unpaid 200s |"
        " charged, not served |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, c in results.get("on_chain", {}).items():
        lines.append(
            f"| {name} | {c['payments']} | {c['served_200']} | {c['transfers']} |"
            f" {c['double_charges']} | {c['unpaid_200s']} | {c['charged_not_served']} |"
        )
    return lines


def markdown(results: dict[str, Any]) -> str:
    head = [
        "# Paid throughput through the gateway: SDK facilitator vs settlement engine",
        "",
        f"{results['when']} · {results['machine']} · load {results['load']} · "
        f"`python -m bench.paid_engine{' --quick' if results['profile'] == 'quick' else ''}`",
        "",
    ]
    return "\n".join(head + table_lines(results)) + "\n"


def section(quick: bool, log: Any) -> dict[str, Any]:
    """Section F of `make bench`."""
    return asyncio.run(run(QUICK if quick else FULL, log))


def write_results(
    results: dict[str, Any], stem: str, markdown: Callable[[dict[str, Any]], str], *, quick: bool
) -> None:
    """Stamp a run (when, machine, load, profile), write `<stem>-latest.json/.md`, print it."""
    results |= {
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.machine()} {os.cpu_count()} CPUs",
        "load": " ".join(f"{x:.1f}" for x in os.getloadavg()),
        "profile": "quick" if quick else "full",
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{stem}-latest.json").write_text(json.dumps(results, indent=2) + "\n")
    text = markdown(results)
    (RESULTS / f"{stem}-latest.md").write_text(text)
    print(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.paid_engine")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    results = asyncio.run(run(QUICK if args.quick else FULL, lambda m: print(m, flush=True)))
    write_results(results, "paid-engine", markdown, quick=args.quick)
    bad = [n for n, c in results["on_chain"].items() if c["double_charges"] or c["unpaid_200s"]]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
