"""Section E: repeat calls inside a Sign-In-With-X window and inside a payment channel
(batch-settlement), beside a free request and an `exact` paid request, through one gateway,
read by one client, in the same run.

anvil + the test USDC + the facilitator HTTP server (section B's environment), one gateway
with three routes on the same origin body: free, `exact` paid, and paid with
`access: {for: 1h}`. One payer pays for the SIWX route once (the SDK's client); then, before
the clock, that payer signs one SIWX proof per request (the SDK's `create_siwx_payload`,
for a fresh 402 challenge each: nonces are single-use) and other payers sign one `exact`
payment each. Measured at concurrency 1: latency at the client (p50 / p99) and the gateway's
CPU per request for each kind, in interleaved rounds; the facilitator's transactions during
each kind's batches (counted on chain: zero for the sign-ins).

Channel (bench/channel_calls.py): one payer deposits once through the SDK's batch-settlement
client; then, before the clock, it signs one voucher per call (the next cumulative amount
each), sent in order.

Target: a sign-in, and a call inside a channel, cost at most a free request + 0.2 ms at p50.

Floor (bench/floor_voucher.py): a minimal aiohttp proxy that does only what a voucher needs
(decode, compare, fields, digest, secp256k1 recovery, single use, cumulative step, receipt),
on the same origin; its own free request and the next vouchers of the same channel, in the
same interleaved rounds: "floor free" and "floor voucher", `channel_floor_minus_free_p50_us`.
The gateway's voucher over its free request is read beside the floor's over its own: what
the target asks against what Python, aiohttp and one secp256k1 recovery cost on this machine.

A second gateway, same config on a redis-server store (what replicas share), measures the
same sign-in there ("SIWX sign-in (redis)": one store round trip, two commands pipelined),
and a channel of its own ("channel voucher (redis)": no voucher road there, each voucher
takes the full path with its claim, channel state and records in Redis), in the same
interleaved rounds; skipped when redis-server is not installed.

Why the gateway checks the signature itself (gateway/payment/sessions.py): the SDK's own
`verify_siwx_signature` costs about 9 ms of CPU per proof in `siwe`'s URI grammar check.
"""

from __future__ import annotations

import asyncio
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from eth_account.signers.local import LocalAccount
from x402.extensions.sign_in_with_x import (
    SIGN_IN_WITH_X,
    create_siwx_payload,
    encode_siwx_header,
)
from x402.http.utils import decode_payment_required_header
from x402.mechanisms.evm import EthAccountSigner

from bench import channel_calls, nginx, paid_route
from bench.gateway_proc import start_gateway
from bench.paid_client import dist, send_all
from bench.procs import ProcGroup, cpu_seconds_fine, free_port
from bench.stats import rounded
from gateway.demo import chain as demo_chain

TARGET_OVER_FREE_US = 200.0
ROUNDS = 4  # each kind's requests are sent in this many interleaved batches
REDIS_KIND = "SIWX sign-in (redis)"
REDIS_CHANNEL = "channel voucher (redis)"
FLOOR_FREE, FLOOR_VOUCHER = "floor free", "floor voucher"


@dataclass(frozen=True)
class RepeatParams:
    requests: int  # of each kind (free, SIWX sign-in, exact paid)


def session_config(env: paid_route.PaidEnv, upstream: str, port: int) -> dict[str, Any]:
    config = paid_route.paid_config(env, upstream, local_facilitator=False)
    return {
        **config,
        "listen": f"127.0.0.1:{port}",
        "public_url": f"http://127.0.0.1:{port}",  # SIWX proofs are bound to it
        # Claims are off the request path: none during the measurement (no claim tx, no
        # claim round's CPU in the gateway's figures).
        "channels": {"claim_every": "1h", "claim_over": "$5"},
        "routes": [
            {"path": nginx.PAID_SMALL_PATH, "price": paid_route.PRICE},
            {"path": nginx.REPORT_PATH, "price": paid_route.PRICE, "access": {"for": "1h"}},
            {
                "path": nginx.CHANNEL_PATH,
                "price": paid_route.PRICE,
                "channel": {"min_deposit": channel_calls.MIN_DEPOSIT},
            },
            {"path": "/*", "price": "free"},
        ],
    }


async def siwx_proof(session: aiohttp.ClientSession, url: str, account: LocalAccount) -> str:
    """A SIGN-IN-WITH-X header for a fresh challenge of `url`, made by the SDK."""
    async with session.get(url) as resp:
        await resp.read()
        challenge = decode_payment_required_header(resp.headers["PAYMENT-REQUIRED"])
    siwx = (challenge.extensions or {})[SIGN_IN_WITH_X]
    chain = siwx["supportedChains"][0]
    info = {**siwx["info"], "chainId": chain["chainId"], "type": chain["type"]}
    return encode_siwx_header(await create_siwx_payload(info, EthAccountSigner(account), url))


async def _signed_in_member(
    report_url: str, env: paid_route.PaidEnv, n: int
) -> list[dict[str, str]]:
    """The member pays for the SIWX route once, then signs `n` proofs (one per challenge)."""
    member = env.payers[-1]
    (pay_once,) = await paid_route.sign_payments(report_url, env, [member])
    paid, _ = await send_all(report_url, [pay_once], 1)
    if not (paid and paid[0]["status"] == 200 and paid[0]["settled"]):
        raise RuntimeError(f"the one payment for the SIWX route failed: {paid}")
    async with aiohttp.ClientSession() as session:
        return [{SIGN_IN_WITH_X: await siwx_proof(session, report_url, member)} for _ in range(n)]


async def _measure(
    url: str,
    pid: int,
    env: paid_route.PaidEnv,
    params: RepeatParams,
    log: Callable[[str], None],
    redis_gateway: tuple[str, int] | None = None,
    floor: tuple[str, int] | None = None,
) -> dict[str, Any]:
    n = params.requests
    report_url, paid_url, free_url = (
        url + nginx.REPORT_PATH,
        url + nginx.PAID_SMALL_PATH,
        url + nginx.SMALL_PATH,
    )
    proofs = await _signed_in_member(report_url, env, n)
    exact = await paid_route.sign_payments(paid_url, env, env.payers[:n])
    channel_url, channel_payer = url + nginx.CHANNEL_PATH, env.payers[n]
    deposit = await channel_calls.open_channel(channel_url, env, channel_payer)
    # The gateway's n vouchers, then the floor's n (the channel's next amounts).
    signed = channel_calls.vouchers(deposit, channel_payer, 2 * n if floor else n)
    vouchers = channel_calls.contiguous(signed[:n], ROUNDS)
    floor_vouchers = channel_calls.contiguous(signed[n:], ROUNDS)
    log(f"E signed {n} SIWX proofs, {n} exact payments and {n} vouchers (before the clock)")

    batches: dict[str, tuple[str, list[dict[str, str]], int]] = {
        "free": (free_url, [{}] * n, pid),
        "SIWX sign-in": (report_url, proofs, pid),
        "exact paid": (paid_url, exact, pid),
        "channel voucher": (channel_url, [], pid),  # in order: contiguous slices, below
    }
    in_order = {"channel voucher": vouchers}
    if redis_gateway is not None:
        redis_url, redis_pid = redis_gateway
        redis_report = redis_url + nginx.REPORT_PATH
        batches[REDIS_KIND] = (
            redis_report,
            await _signed_in_member(redis_report, env, n),
            redis_pid,
        )
        # Its own channel (another payer): every voucher takes the full path on Redis.
        redis_channel, redis_payer = redis_url + nginx.CHANNEL_PATH, env.payers[n + 1]
        redis_deposit = await channel_calls.open_channel(redis_channel, env, redis_payer)
        redis_signed = channel_calls.vouchers(redis_deposit, redis_payer, n)
        in_order[REDIS_CHANNEL] = channel_calls.contiguous(redis_signed, ROUNDS)
        batches[REDIS_CHANNEL] = (redis_channel, [], redis_pid)
    if floor is not None:
        floor_url, floor_pid = floor
        batches[FLOOR_FREE] = (floor_url + nginx.SMALL_PATH, [{}] * n, floor_pid)
        batches[FLOOR_VOUCHER] = (floor_url + nginx.CHANNEL_PATH, [], floor_pid)
        in_order[FLOOR_VOUCHER] = floor_vouchers
    seen: dict[str, dict[str, Any]] = {
        kind: {"latency": [], "cpu": 0.0, "requests": 0, "txs": 0, "timing": []} for kind in batches
    }
    # Interleaved rounds: a neighbour's burst of CPU lands on every kind alike.
    for round_ in range(ROUNDS):
        for kind, (target, headers, served_by) in batches.items():
            chunk = in_order[kind][round_] if kind in in_order else headers[round_::ROUNDS]
            txs = demo_chain.tx_count(env.chain.rpc_url, env.chain.facilitator_address)
            cpu = cpu_seconds_fine(served_by)
            records, _ = await send_all(target, chunk, 1)
            got = seen[kind]
            got["cpu"] += cpu_seconds_fine(served_by) - cpu
            got["txs"] += (
                demo_chain.tx_count(env.chain.rpc_url, env.chain.facilitator_address) - txs
            )
            got["requests"] += len(records)
            got["latency"] += [r["total_us"] for r in records if r["status"] == 200]
            got["timing"] += [r["timing"] for r in records if r["status"] == 200]
    out = {
        kind: {
            "requests": got["requests"],
            "ok": len(got["latency"]),
            "latency_us": dist(got["latency"]),
            "gateway_cpu_us_per_request": rounded(got["cpu"] / max(1, got["requests"]) * 1e6),
            "facilitator_txs": got["txs"],
            "server_timing_us": _steps(got["timing"]),
        }
        for kind, got in seen.items()
    }
    over = _over_free(out, "SIWX sign-in")
    channel_over = _over_free(out, "channel voucher")
    return {
        "params": params.__dict__,
        "kinds": out,
        "siwx_minus_free_p50_us": over,
        "siwx_redis_minus_free_p50_us": _over_free(out, REDIS_KIND),
        "channel_redis_minus_free_p50_us": _over_free(out, REDIS_CHANNEL),
        "channel_minus_free_p50_us": channel_over,
        "channel_floor_minus_free_p50_us": _over(out, FLOOR_VOUCHER, FLOOR_FREE),
        "target_us": TARGET_OVER_FREE_US,
        "met": over is not None and over <= TARGET_OVER_FREE_US,
        "channel_met": channel_over is not None and channel_over <= TARGET_OVER_FREE_US,
    }


def _over_free(out: dict[str, Any], kind: str) -> float | None:
    return _over(out, kind, "free")


def _over(out: dict[str, Any], kind: str, free: str) -> float | None:
    """`kind`'s p50 over `free`'s (None when either was not measured)."""
    if free not in out:
        return None
    free_p50 = out[free]["latency_us"]["p50"]
    p50 = out[kind]["latency_us"]["p50"] if kind in out else None
    return rounded(p50 - free_p50) if p50 is not None and free_p50 else None


def _steps(timings: list[dict[str, float]]) -> dict[str, Any]:
    """The gateway's own Server-Timing steps (verify, origin, settle), p50 / p99 each."""
    names = sorted({name for t in timings for name in t})
    return {name: dist([t[name] for t in timings if name in t]) for name in names}


def run_section(
    group: ProcGroup,
    workdir: Path,
    upstream: str,
    params: RepeatParams,
    log: Callable[[str], None],
) -> dict[str, Any]:
    # + the SIWX member, a channel on each gateway
    env = paid_route.start_env(group, params.requests + 3, log)
    try:
        port = free_port()
        proc, _ = start_gateway(
            group, workdir, "gateway-sessions", session_config(env, upstream, port)
        )
        try:
            redis_gateway = _start_redis_gateway(group, workdir, env, upstream)
            floor = _start_floor(group, upstream)
            log("E repeat calls: free, SIWX sign-in (memory, redis), exact paid, channel voucher")
            return asyncio.run(
                _measure(
                    f"http://127.0.0.1:{port}", proc.pid, env, params, log, redis_gateway, floor
                )
            )
        finally:
            group.stop(proc)
    finally:
        paid_route.stop_env(env)


def _start_floor(group: ProcGroup, upstream: str) -> tuple[str, int]:
    """bench/floor_voucher.py on the same origin: (URL, pid)."""
    port = free_port()
    argv = [sys.executable, "-m", "bench.floor_voucher", "--listen", f"127.0.0.1:{port}"]
    proc = group.start("floor-voucher", [*argv, "--upstream", upstream], port=port)
    return f"http://127.0.0.1:{port}", proc.pid


def start_redis(group: ProcGroup, workdir: Path, name: str) -> str | None:
    """A redis-server of the group's, no persistence: its store URL; None when redis-server
    is not installed."""
    binary = shutil.which("redis-server")
    if binary is None:
        return None
    port = free_port()
    argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    argv += ["--appendonly", "no", "--dir", str(workdir)]
    group.start(name, argv, port=port)
    return f"redis://127.0.0.1:{port}/0"


def _start_redis_gateway(
    group: ProcGroup, workdir: Path, env: paid_route.PaidEnv, upstream: str
) -> tuple[str, int] | None:
    """The same gateway on a redis-server store (the group stops both): (URL, pid)."""
    store = start_redis(group, workdir, "redis-sessions")
    if store is None:
        return None
    port = free_port()
    config = {**session_config(env, upstream, port), "store": store}
    proc, _ = start_gateway(group, workdir, "gateway-sessions-redis", config)
    return f"http://127.0.0.1:{port}", proc.pid
