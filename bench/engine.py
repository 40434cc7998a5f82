"""`python -m bench.engine [--quick]`: the settlement engine against the SDK's facilitator.

On one anvil (automine), in one run, interleaved:
- settled payments/s of the SDK's facilitator in process (today's `LocalFacilitator`: the
  SDK's `x402FacilitatorSync` in a thread pool) and of the engine (1 key, 4 keys), at
  concurrency 1, 8 and 32. Each payment is a fresh SDK-signed authorization from its own
  payer (all signed before the clock starts), verified then settled (the gateway's flow),
  and every one is checked on chain afterwards (one Transfer per success, none otherwise).
  Also the CPU time this process spent per payment (the facilitator's share; anvil is
  another process).
- gas per payment from real receipts at batch sizes 1, 10 and 50;
- the local EIP-3009 check (parse, terms, EIP-712 digest, recover) in microseconds, and
  the engine's full verify (one JSON-RPC batch) in milliseconds.

Writes bench/results/engine-latest.json and .md and prints the tables.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvloop
from x402.mechanisms.evm.exact.eip3009_utils import ERC20_TRANSFER_EVENT_TOPIC
from x402.schemas import PaymentPayload, PaymentRequirements, SettleResponse

from bench.procs import cpu_seconds_fine
from gateway.demo import chain as chainlib
from gateway.demo.payer import make_x402_client, sign_requirements
from gateway.facilitators.engine import EngineFacilitator, EngineOptions, eip3009
from gateway.facilitators.local import LocalFacilitator

RESULTS = Path(__file__).resolve().parent / "results"
AMOUNT = 1000
WARMUP = 8  # untimed payments first, in every cell
BANK = chainlib.ANVIL_KEYS[9]


@dataclass(frozen=True)
class Params:
    payments: dict[int, int]  # concurrency -> payments per cell
    sdk_payments: dict[int, int]  # the SDK is slow: fewer payments, same concurrency
    verify_loops: int


FULL = Params({1: 60, 8: 200, 32: 400}, {1: 30, 8: 60, 32: 60}, 5000)
QUICK = Params({1: 30, 8: 80, 32: 160}, {1: 12, 8: 24, 32: 32}, 2000)


class Setup:
    def __init__(self, local: chainlib.LocalChain, anvil_pid: int) -> None:
        self.local = local
        self.anvil_pid = anvil_pid
        self.pool = ThreadPoolExecutor(8)

    def requirements(self, pay_to: str) -> PaymentRequirements:
        return PaymentRequirements(
            scheme="exact",
            network=self.local.network,
            asset=self.local.token,
            amount=str(AMOUNT),
            pay_to=pay_to,
            max_timeout_seconds=600,
            extra={"name": "USD Coin", "version": "2"},
        )

    async def payments(self, req: PaymentRequirements, n: int) -> list[PaymentPayload]:
        loop = asyncio.get_running_loop()
        payers = await asyncio.gather(
            *(loop.run_in_executor(self.pool, self.local.new_payer, 10 * AMOUNT) for _ in range(n))
        )
        return [
            await sign_requirements(
                make_x402_client(p, [(self.local.network, self.local.token)]), req
            )
            for p in payers
        ]

    def settler_keys(self, n: int) -> tuple[str, ...]:
        keys = []
        for _ in range(n):
            account = chainlib.new_account()
            chainlib.fund_eth(self.local.rpc_url, BANK, account.address, 10**20)
            keys.append("0x" + bytes(account.key).hex())
        return tuple(keys)

    def transfers_to(self, pay_to: str) -> list[dict[str, Any]]:
        """Transfers of the token to `pay_to`, from the node's logs (mints left out)."""
        logs = transfer_logs(self.local, pay_to)
        return [log for log in logs if int(log["topics"][1], 16) != 0]  # not mints


def transfer_logs(local: chainlib.LocalChain, pay_to: str) -> list[dict[str, Any]]:
    """Every Transfer log of the chain's token to `pay_to` (mints included), from the node."""
    logs: list[dict[str, Any]] = chainlib.rpc_call(
        local.rpc_url,
        "eth_getLogs",
        [
            {
                "address": local.token,
                "fromBlock": "0x0",
                "toBlock": "latest",
                "topics": [ERC20_TRANSFER_EVENT_TOPIC, None, "0x" + "00" * 12 + pay_to[2:].lower()],
            }
        ],
    )
    return logs


Facilitator = Any  # LocalFacilitator or EngineFacilitator: verify/settle


async def throughput(
    setup: Setup, facilitator: Facilitator, concurrency: int, n: int
) -> dict[str, Any]:
    """`n` payments at `concurrency`, after `WARMUP` untimed ones (caches, connections, gas
    estimates: the steady state is measured, for every facilitator alike)."""
    pay_to = str(chainlib.new_account().address)
    req = setup.requirements(pay_to)
    warmup = await setup.payments(req, WARMUP)
    payments = await setup.payments(req, n)
    results: list[SettleResponse] = []
    latencies: list[float] = []

    async def worker(queue: list[PaymentPayload]) -> None:
        while queue:
            payment = queue.pop()
            started = time.perf_counter()
            verified = await facilitator.verify(payment, req)
            if not verified.is_valid:
                raise RuntimeError(f"verify refused a good payment: {verified.invalid_reason}")
            results.append(await facilitator.settle(payment, req))
            latencies.append(time.perf_counter() - started)

    await asyncio.gather(*(worker(warmup) for _ in range(min(concurrency, WARMUP))))
    results.clear()
    latencies.clear()
    queue = list(payments)
    node = cpu_seconds_fine(setup.anvil_pid)
    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker(queue) for _ in range(concurrency)))
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    node = cpu_seconds_fine(setup.anvil_pid) - node
    settled = sum(r.success for r in results)
    total = n + WARMUP
    transfers = setup.transfers_to(pay_to)
    payers = {t["topics"][1] for t in transfers}
    if settled != n or len(transfers) != total or len(payers) != total:
        raise RuntimeError(f"on chain: {len(transfers)} transfers for {settled}/{n} settled")
    mine = {r.transaction for r in results}
    return {
        "payments": n,
        "per_s": n / wall,
        "cpu_ms": cpu / n * 1000,
        "anvil_cpu_ms": node / n * 1000,
        "p50_ms": statistics.median(latencies) * 1000,
        "transactions": len({t["transactionHash"] for t in transfers} & mine),
        "engine": _engine_events(facilitator),
    }


def _engine_events(facilitator: Facilitator) -> dict[str, float]:
    stats = getattr(facilitator, "stats", None)
    if stats is None:
        return {}
    wanted = ("replaced", "rebroadcast", "refused", "answered_pending", "requeued", "gap_fills")
    return {k: v for k, v in stats.snapshot().items() if k in wanted and v}


async def settle_batch(setup: Setup, key: str, size: int) -> str:
    """`size` fresh payments to a payee that already holds the token, settled by the engine
    in ONE batch transaction (checked on chain); its hash."""
    pay_to = str(chainlib.new_account().address)
    chainlib.mint(setup.local.rpc_url, setup.local.token, setup.local.owner_key, pay_to, 1)
    req = setup.requirements(pay_to)
    payments = await setup.payments(req, size)
    opts = EngineOptions(
        rpc_url=setup.local.rpc_url,
        keys=(key,),
        chain_id=setup.local.chain_id,
        batch_window=60,
        max_batch=size,
        poll_interval=0.02,
    )
    async with EngineFacilitator(opts) as engine:
        results = await asyncio.gather(*(engine.settle(p, req) for p in payments))
    (tx,) = {r.transaction for r in results}
    if not all(r.success for r in results) or len(setup.transfers_to(pay_to)) != size:
        raise RuntimeError("a batched payment did not settle")
    return tx


async def gas_per_payment(setup: Setup, key: str, size: int) -> float:
    tx = await settle_batch(setup, key, size)
    receipt = chainlib.rpc_call(setup.local.rpc_url, "eth_getTransactionReceipt", [tx])
    return int(receipt["gasUsed"], 16) / size


async def verify_costs(setup: Setup, key: str, loops: int) -> dict[str, float]:
    req = setup.requirements(str(chainlib.new_account().address))
    (payment,) = await setup.payments(req, 1)
    domain = eip3009.Domain("USD Coin", "2", setup.local.chain_id, setup.local.token.lower())
    now = int(time.time())
    started = time.perf_counter()
    for _ in range(loops):
        verdict = eip3009.inspect(
            payment.payload, domain, pay_to=req.pay_to, amount=AMOUNT, now=now
        )
    local_us = (time.perf_counter() - started) / loops * 1e6
    assert verdict.reason is None
    auth = eip3009.parse(payment.payload)
    started = time.perf_counter()
    for _ in range(loops):
        eip3009.recover(eip3009.digest(auth, domain), auth.signature)
    recover_us = (time.perf_counter() - started) / loops * 1e6
    opts = EngineOptions(rpc_url=setup.local.rpc_url, keys=(key,), chain_id=setup.local.chain_id)
    async with EngineFacilitator(opts) as engine:
        times = []
        for _ in range(50):
            started = time.perf_counter()
            assert (await engine.verify(payment, req)).is_valid
            times.append(time.perf_counter() - started)
    return {
        "local_check_us": local_us,
        "digest_recover_us": recover_us,
        "engine_verify_ms": statistics.median(times) * 1000,
    }


def variants(setup: Setup, sdk_key: str, keys: tuple[str, ...]) -> dict[str, Callable[[], Any]]:
    rpc = setup.local.rpc_url
    network = setup.local.network

    def engine(n: int, window: float = 0.0) -> Callable[[], EngineFacilitator]:
        return lambda: EngineFacilitator(
            EngineOptions(
                rpc_url=rpc,
                keys=keys[:n],
                chain_id=setup.local.chain_id,
                poll_interval=0.02,
                batch_window=window,
            )
        )

    return {
        "sdk (LocalFacilitator)": lambda: LocalFacilitator(rpc, sdk_key, [network]),
        "engine, 1 key": engine(1),
        "engine, 4 keys": engine(4),
        "engine, 4 keys, batch 20 ms": engine(4, 0.02),
    }


async def run_all(params: Params, log: Callable[[str], None]) -> dict[str, Any]:
    anvil = chainlib.start_anvil()
    try:
        local = chainlib.prepare_chain(anvil.rpc_url)
        setup = Setup(local, anvil.pid)
        keys = setup.settler_keys(5)
        made = variants(setup, keys[4], keys[:4])
        table: dict[str, dict[int, Any]] = {name: {} for name in made}
        for concurrency in (1, 8, 32):  # interleaved: each concurrency, every variant
            for name, make in made.items():
                n = (params.sdk_payments if name.startswith("sdk") else params.payments)[
                    concurrency
                ]
                async with make() as facilitator:
                    cell = await throughput(setup, facilitator, concurrency, n)
                table[name][concurrency] = cell
                log(
                    f"{name:28} c={concurrency:<3} {cell['per_s']:8.1f} payments/s "
                    f"cpu {cell['cpu_ms']:6.2f} ms/payment (anvil {cell['anvil_cpu_ms']:5.2f})  "
                    f"p50 {cell['p50_ms']:7.1f} ms "
                    f"txs {cell['transactions']} {cell['engine'] or ''}"
                )
        gas = {size: await gas_per_payment(setup, keys[0], size) for size in (1, 10, 50)}
        log(f"gas per payment: {gas}")
        verify = await verify_costs(setup, keys[0], params.verify_loops)
        log(f"verify: {verify}")
        setup.pool.shutdown()
        return {"throughput": table, "gas_per_payment": gas, "verify": verify}
    finally:
        anvil.stop()


def markdown(result: dict[str, Any], meta: dict[str, Any]) -> str:
    lines = [
        f"# Settlement engine vs the SDK facilitator ({meta['date']}, {meta['commit']})",
        "",
        f"`{meta['command']}` on {meta['machine']}; anvil automine; every payment "
        "a fresh SDK-signed authorization, verified then settled, checked on chain.",
        "",
        "| facilitator | c | payments/s | CPU ms/payment | anvil CPU ms/payment | p50 ms "
        "| transactions |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    table = result["throughput"]
    for name, cells in table.items():
        for c, cell in cells.items():
            lines.append(
                f"| {name} | {c} | {cell['per_s']:.1f} | {cell['cpu_ms']:.2f} | "
                f"{cell['anvil_cpu_ms']:.2f} | "
                f"{cell['p50_ms']:.1f} | {cell['transactions']} |"
            )
    base = table["sdk (LocalFacilitator)"]
    lines += [
        "",
        "| ratio to the SDK (payments/s) | c=1 | c=8 | c=32 |",
        "| --- | --- | --- | --- |",
    ]
    for name, cells in table.items():
        if not name.startswith("sdk"):
            lines.append(
                f"| {name} | "
                + " | ".join(f"{cells[c]['per_s'] / base[c]['per_s']:.1f}x" for c in (1, 8, 32))
                + " |"
            )
    gas = result["gas_per_payment"]
    lines += ["", "| batch size | gas per payment | vs a single transfer |", "| --- | --- | --- |"]
    for size, per in gas.items():
        lines.append(f"| {size} | {per:,.0f} | {per / gas[1]:.0%} |")
    v = result["verify"]
    lines += [
        "",
        f"Local EIP-3009 check (parse, terms, EIP-712 digest, recover): "
        f"{v['local_check_us']:.0f} µs; digest + recover alone {v['digest_recover_us']:.0f}"
        f" µs; the engine's full verify (one JSON-RPC batch to anvil) "
        f"{v['engine_verify_ms']:.2f} ms (median of 50).",
        "",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.engine")
    parser.add_argument("--quick", action="store_true", help="fewer payments per cell")
    args = parser.parse_args(argv)
    params = QUICK if args.quick else FULL
    # SIGTERM unwinds like Ctrl-C, so every `finally` runs and anvil is stopped by its pid.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    # The gateway runs on uvloop: so does its in-process facilitator here.
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        result = runner.run(run_all(params, lambda line: print(line, flush=True)))
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    meta = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "commit": commit,
        "command": "python -m bench.engine" + (" --quick" if args.quick else ""),
        "machine": f"{os.cpu_count()} CPUs, {platform.processor() or platform.machine()}, "
        f"load {os.getloadavg()[0]:.2f}",
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "engine-latest.json").write_text(json.dumps({"meta": meta, **result}, indent=2))
    text = markdown(result, meta)
    (RESULTS / "engine-latest.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
