"""Section B: paid requests through the whole x402 flow, on a local chain.

anvil + the test USDC + the facilitator HTTP server (gateway/demo), a gateway with priced
routes and `server_timing: true`, distinct funded payers whose `PAYMENT-SIGNATURE`
headers are all signed before the clock starts. Measured: paid requests/s at a fixed
concurrency, and at concurrency 1 the latency split from the gateway's `Server-Timing`
header (verify, origin, settle, gw = the gateway's own share), compared with a free request
through the same gateway, read by the same client.
"""

from __future__ import annotations

import asyncio
import importlib
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from x402.http.utils import decode_payment_required_header

from bench import memory, nginx
from bench.gateway_proc import start_gateway
from bench.paid_client import dist, send_all, split
from bench.procs import Proc, ProcGroup, cpu_seconds_fine, free_port
from bench.stats import percentile, rounded
from gateway.demo import chain as demo_chain
from gateway.demo.payer import make_x402_client, pay_challenge

PRICE = "$0.001"
FUND_EACH = 1_000_000  # 1 test USDC: enough for every variant's payment and then some


@dataclass(frozen=True)
class PaidParams:
    payers: int  # distinct payers, one payment each per variant, sent at `concurrency`
    concurrency: int
    sequential: int  # payments sent one at a time for the latency split
    free_requests: int  # free requests through the same gateway, same client
    block_time: bool  # also a run with a block every 2 s
    block_time_payers: int
    block_time_sequential: int
    big_bytes: int
    slow_rate: float  # bytes/s of the slow reader


@dataclass
class PaidEnv:
    """The chain side: anvil, the token, the facilitator server, the funded payers."""

    anvil: Any  # gateway.demo.chain.Anvil
    chain: Any  # gateway.demo.chain.LocalChain
    facilitator_url: str
    facilitator_pid: int
    payers: list[Any]  # eth_account LocalAccount


def start_env(group: ProcGroup, n_payers: int, log: Callable[[str], None]) -> PaidEnv:
    started = time.monotonic()
    anvil = demo_chain.start_anvil()
    # The Anvil object owns its process; it is stopped by pid in stop_env (try/finally).
    try:
        local = demo_chain.prepare_chain(anvil.rpc_url)
        port = free_port()
        facilitator = group.start(
            "facilitator",
            [
                sys.executable,
                "-m",
                "gateway.demo.facilitator_server",
                "--rpc-url",
                anvil.rpc_url,
                "--private-key-env",
                "BENCH_FACILITATOR_KEY",
                "--port",
                str(port),
                "--network",
                local.network,
            ],
            port=port,
            env={"BENCH_FACILITATOR_KEY": local.facilitator_key},
            timeout=60.0,
        )
        with ThreadPoolExecutor(8) as pool:
            payers = list(pool.map(lambda _: local.new_payer(FUND_EACH), range(n_payers)))
    except BaseException:
        anvil.stop()
        raise
    log(f"B chain ready: {n_payers} funded payers in {time.monotonic() - started:.1f}s")
    return PaidEnv(anvil, local, f"http://127.0.0.1:{port}", facilitator.pid, payers)


def paid_config(env: PaidEnv, upstream: str, *, local_facilitator: bool) -> dict[str, Any]:
    chain = env.chain
    facilitator: dict[str, Any] = (
        {"local": {"rpc_url": chain.rpc_url, "private_key": chain.facilitator_key}}
        if local_facilitator
        else {"url": env.facilitator_url}
    )
    return {
        "upstream": upstream,
        "facilitator": facilitator,
        "network": chain.network,
        "pay_to": chain.facilitator_address,
        "asset": {"address": chain.token, "name": "USD Coin", "version": "2", "decimals": 6},
        "store": "memory",
        "log_level": "warning",
        "server_timing": True,
        "routes": [
            {"path": nginx.PAID_SMALL_PATH, "price": PRICE, "description": "bench small"},
            {"path": nginx.PAID_BIG_PATH, "price": PRICE, "description": "bench big"},
            {"path": "/*", "price": "free"},
        ],
    }


async def _challenge(url: str) -> tuple[dict[str, str], bytes]:
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        body = await resp.read()
        if resp.status != 402:
            raise RuntimeError(f"expected a 402 from {url}, got {resp.status}: {body[:200]!r}")
        return dict(resp.headers), body


async def sign_payments(url: str, env: PaidEnv, payers: Sequence[Any]) -> list[dict[str, str]]:
    """One PAYMENT-SIGNATURE header set per payer, for the 402 that url answers."""
    headers, body = await _challenge(url)
    assets = [(env.chain.network, env.chain.token)]
    signed = []
    for account in payers:
        header, _payload = await pay_challenge(make_x402_client(account, assets), headers, body)
        signed.append(header)
    return signed


async def offered(url: str) -> list[dict[str, Any]]:
    """The requirements in the gateway's PAYMENT-REQUIRED header for url (for the report)."""
    headers, _body = await _challenge(url)
    value = next((v for k, v in headers.items() if k.lower() == "payment-required"), None)
    if value is None:
        return []
    challenge = decode_payment_required_header(value)
    return [a.model_dump(mode="json", by_alias=True) for a in challenge.accepts]


class _CpuMeter:
    """CPU time of named processes between successive calls."""

    def __init__(self, pids: Mapping[str, int]) -> None:
        self.pids = dict(pids)
        self.last = {name: cpu_seconds_fine(pid) for name, pid in self.pids.items()}

    def per_request(self, requests: int) -> dict[str, float]:
        now = {name: cpu_seconds_fine(pid) for name, pid in self.pids.items()}
        used = {
            name: round((now[name] - self.last[name]) / max(1, requests) * 1e6, 1)
            for name in self.pids
        }
        self.last = now
        return used


async def _variant(
    gw_url: str,
    gw_pid: int,
    env: PaidEnv,
    params: PaidParams,
    counts: tuple[int, int],
    log: Callable[[str], None],
) -> dict[str, Any]:
    paid_url = gw_url + nginx.PAID_SMALL_PATH
    free_url = gw_url + nginx.SMALL_PATH
    n_concurrent, n_sequential = counts
    pids = {"gateway": gw_pid, "facilitator server": env.facilitator_pid, "anvil": env.anvil.pid}
    requirements = await offered(paid_url)
    signing = time.perf_counter()
    seq_headers = await sign_payments(paid_url, env, env.payers[:n_sequential])
    conc_headers = await sign_payments(paid_url, env, env.payers[:n_concurrent])
    log(
        f"B signed {len(seq_headers) + len(conc_headers)} payments in "
        f"{time.perf_counter() - signing:.1f}s (before the clock)"
    )
    meter = _CpuMeter(pids)
    free_records, _ = await send_all(free_url, [{}] * params.free_requests, 1)
    cpu_free = meter.per_request(len(free_records))
    seq_records, _ = await send_all(paid_url, seq_headers, 1)
    cpu_seq = meter.per_request(len(seq_records))
    conc_records, wall = await send_all(paid_url, conc_headers, params.concurrency)
    cpu_conc = meter.per_request(len(conc_records))
    free_p50 = percentile([r["total_us"] for r in free_records if r["status"] == 200], 50)
    seq = split(seq_records)
    own = seq["total_minus_verify_settle_us"]["p50"]
    gw_p50 = seq["gw_us"]["p50"] if isinstance(seq["gw_us"], dict) else None
    return {
        "paid_rps": rounded(len(conc_records) / wall, 1),
        "payments": {"concurrent": n_concurrent, "sequential": n_sequential},
        "concurrency": params.concurrency,
        # CPU µs per request of each process (schedstat), over each batch: a stable figure
        # for what the gateway's own code costs, free vs paid.
        "cpu_us_per_request": {
            "free @1": cpu_free,
            "paid @1": cpu_seq,
            f"paid @{params.concurrency}": cpu_conc,
        },
        "gateway_cpu_paid_minus_free_us": rounded(cpu_seq["gateway"] - cpu_free["gateway"]),
        "requirements_offered": requirements,
        "at_concurrency": split(conc_records),
        "sequential": seq,
        "free_same_client_us": dist([r["total_us"] for r in free_records]),
        "paid_own_minus_free_p50_us": rounded(own - free_p50) if own and free_p50 else None,
        "gw_share_p50_us": gw_p50,
    }


def stop_env(env: PaidEnv | None) -> None:
    if env is not None:
        env.anvil.stop()


def run_section(
    group: ProcGroup,
    workdir: Path,
    upstream: str,
    params: PaidParams,
    log: Callable[[str], None],
    free_gw_added_p50: float | None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(section B, the paid-route half of section C)."""
    # The facilitator server imports the gateway's local facilitator: fail here, not later.
    importlib.import_module("gateway.demo.facilitator_server")
    env = start_env(group, max(params.payers, params.sequential), log)
    results: dict[str, Any] = {"params": params.__dict__, "variants": {}}
    paid_memory: dict[str, Any] = {}
    try:
        variants = [("remote facilitator", False, False), ("in-process facilitator", True, False)]
        if params.block_time:
            variants.append(("remote facilitator, block time 2s", False, True))
        for label, local_facilitator, block_time in variants:
            counts = (params.payers, params.sequential)
            if block_time:
                # Same as anvil --block-time 2 from here on: a block every 2 s, no automine.
                demo_chain.rpc_call(env.chain.rpc_url, "evm_setAutomine", [False])
                demo_chain.rpc_call(env.chain.rpc_url, "evm_setIntervalMining", [2])
                counts = (params.block_time_payers, params.block_time_sequential)
            config = paid_config(env, upstream, local_facilitator=local_facilitator)
            name = "gateway-paid-" + label.split()[0].replace(",", "")
            proc, port = start_gateway(group, workdir, name + ("-bt" if block_time else ""), config)
            try:
                log(f"B {label}")
                gw_url = f"http://127.0.0.1:{port}"
                variant = asyncio.run(_variant(gw_url, proc.pid, env, params, counts, log))
                variant["free_gateway_added_p50_us_wrk"] = free_gw_added_p50
                # The target's comparison: the gateway's own share of a paid request (its
                # `gw` Server-Timing entry) against what it adds to a free one (section A).
                gw_p50 = variant["gw_share_p50_us"]
                variant["gw_minus_free_added_p50_us"] = (
                    rounded(gw_p50 - free_gw_added_p50)
                    if gw_p50 is not None and free_gw_added_p50 is not None
                    else None
                )
                results["variants"][label] = variant
                if label == "remote facilitator":
                    paid_memory = _paid_memory(proc, gw_url, env, params, log)
            finally:
                group.stop(proc)
    finally:
        stop_env(env)
    return results, paid_memory


def _paid_memory(
    proc: Proc, gw_url: str, env: PaidEnv, params: PaidParams, log: Callable[[str], None]
) -> dict[str, Any]:
    url = gw_url + nginx.PAID_BIG_PATH
    fast_h, slow_h = asyncio.run(sign_payments(url, env, env.payers[-2:]))
    log("C paid route, fast reader")
    fast = memory.measure(proc.pid, url, fast=True, headers=fast_h)
    log("C paid route, slow reader")
    slow = memory.measure(proc.pid, url, fast=False, rate=params.slow_rate, headers=slow_h)
    return {"gateway paid route": {"fast reader": fast, "slow reader": slow}}
