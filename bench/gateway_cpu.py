"""`python -m bench.gateway_cpu` (issue 13 item 5): the gateway's own CPU per paid request,
isolated from the chain and the facilitator.

One anvil, the test USDC, `x402-gateway facilitator` (the settlement engine over HTTP, bearer
auth, its own process), an origin in this process and one `x402-gateway serve` process with
one priced route (`verify: facilitator`, the default, so the gateway makes both facilitator
calls). Every paid request is a fresh payment signed before the clock starts (a few funded
payers sign several each). In interleaved rounds, the gateway's process tree is metered from
/proc (schedstat, ns resolution) over:

- an idle window (nothing sent): the background cost per second (timers, the store sweeper);
- `free` requests through the same gateway (a free route, same origin, same client);
- `paid` requests.

CPU per request is (CPU in the batch - idle rate x batch wall time) / requests; the raw figure
is kept beside it. The median and the spread (min, max) over the rounds are reported; the
neighbours on a shared machine make a run slower, not more expensive. Then every payment is
checked on chain (each 200 is its payer's Transfer in the transaction its receipt names; no
extra Transfers): the command exits 1 otherwise.

`--profile FILE` runs py-spy (`record --format raw`) on the gateway for the paid batches of the
last round and writes the top functions (self and inclusive share of samples) to FILE.
Writes bench/results/gateway-cpu-latest.json and .md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from statistics import median
from typing import Any

from eth_account.signers.local import LocalAccount
from x402.mechanisms.evm.exact.eip3009_utils import ERC20_TRANSFER_EVENT_TOPIC

from bench.gateway_proc import gateway_argv, start_gateway
from bench.paid_engine import TOKEN, gateway_config, send, settler_keys, sign, start_origin
from bench.paid_engine import Variant as Target
from bench.procs import ProcGroup, cpu_seconds_fine, free_port
from bench.stats import rounded
from gateway.demo import chain as chainlib

RESULTS = Path(__file__).resolve().parent / "results"
IDLE_SECONDS = 2.0


def start_facilitator(group: ProcGroup, rpc: str) -> tuple[str, int]:
    """`x402-gateway facilitator` with 2 settler keys, as bench section F runs it."""
    port = free_port()
    keys = {f"BENCH_KEY_{i}": k for i, k in enumerate(settler_keys(rpc, 2))}
    proc = group.start(
        "engine-facilitator",
        [
            *gateway_argv(Path("x"))[:-3],  # x402-gateway, without `serve --config x`
            *("facilitator", "--rpc-url", rpc, "--chain-id", str(chainlib.BASE_SEPOLIA_CHAIN_ID)),
            *(arg for name in keys for arg in ("--key-env", name)),
            *("--listen", f"127.0.0.1:{port}", "--token-env", "BENCH_TOKEN"),
            *("--batch-window", "20ms", "--max-batch", "50", "--poll-interval", "50ms"),
        ],
        port=port,
        env=keys | {"BENCH_TOKEN": TOKEN},
        timeout=60,
    )
    return f"http://127.0.0.1:{port}", proc.pid


async def sign_many(target: Target, local: Any, payers: Sequence[LocalAccount], each: int) -> Any:
    """`each` payments from every payer (fresh EIP-3009 nonces), interleaved by payer."""
    signed = []
    for _ in range(each):
        signed += await sign(target, local, payers)
    return signed


def idle_rate(pid: int) -> float:
    """CPU seconds per second the gateway spends with nothing sent to it."""
    before = cpu_seconds_fine(pid)
    time.sleep(IDLE_SECONDS)
    return (cpu_seconds_fine(pid) - before) / IDLE_SECONDS


async def batch(target: Target, signed: list[Any], concurrency: int, idle: float) -> dict[str, Any]:
    pid = target.pids["gateway"]
    before = cpu_seconds_fine(pid)
    records, wall = await send(target.url, signed, concurrency)
    used = cpu_seconds_fine(pid) - before
    n = max(1, len(records))
    return {
        "requests": len(records),
        "statuses": dict(Counter(r["status"] for r in records)),
        "wall_s": rounded(wall, 3),
        "raw_us": rounded(used / n * 1e6, 1),
        "us": rounded((used - idle * wall) / n * 1e6, 1),
        "records": records,
    }


async def free_cpu(target: Target, n: int, concurrency: int, idle: float) -> dict[str, Any]:
    # `send` appends its paid path to the URL: under /free it is on the free `/*` route.
    free = Target(target.name, target.url + "/free", target.pay_to, target.pids)
    return await batch(free, [("", {})] * n, concurrency, idle)


def on_chain(local: Any, target: Target) -> dict[str, int]:
    """Each 200 is its payer's Transfer to pay_to, in the transaction its receipt names;
    every Transfer to pay_to belongs to a 200 (several payments per payer are allowed)."""
    logs = chainlib.rpc_call(
        local.rpc_url,
        "eth_getLogs",
        [
            {
                "address": local.token,
                "fromBlock": "0x0",
                "toBlock": "latest",
                "topics": [
                    ERC20_TRANSFER_EVENT_TOPIC,
                    None,
                    "0x" + "00" * 12 + target.pay_to[2:].lower(),
                ],
            }
        ],
    )
    transfers = Counter(("0x" + log["topics"][1][-40:], log["transactionHash"].lower()) for log in logs)
    served = Counter((r["payer"], r["tx"]) for r in target.records if r["status"] == 200)
    return {
        "payments": len(target.records),
        "served_200": sum(served.values()),
        "transfers": sum(transfers.values()),
        "unpaid_200s": sum(max(0, n - transfers[k]) for k, n in served.items()),
        "charged_not_served": sum(max(0, n - served[k]) for k, n in transfers.items()),
    }


class Profiler:
    """py-spy attached to the gateway for a window; raw (collapsed) stacks to a file."""

    def __init__(self, pid: int, out: Path, rate: int) -> None:
        spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        self.out = out
        self.proc = subprocess.Popen(  # noqa: S603 - our own argv
            [spy, "record", "--pid", str(pid), "--rate", str(rate), "--format", "raw"]
            + ["--output", str(out)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        time.sleep(1.0)  # attached before the clock

    def stop(self) -> str:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGINT)  # py-spy writes its file on SIGINT
        try:
            _, err = self.proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            _, err = self.proc.communicate()
        return err.decode(errors="replace")


def top_functions(raw: Path, n: int = 25) -> dict[str, Any]:
    """From py-spy's collapsed stacks: the top `n` functions by self samples and by
    inclusive samples (a function counted once per stack), as % of all samples."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = [f.split(" (", 1)[0] + " (" + f.split(" (", 1)[1].split(":")[0] + ")"
                  if " (" in f else f for f in stack.split(";")]
        hits = int(count)
        total += hits
        own[frames[-1]] += hits
        for frame in set(frames):
            inclusive[frame] += hits
    pct = lambda c: [[f, round(100 * k / max(1, total), 1)] for f, k in c.most_common(n)]  # noqa: E731
    return {"samples": total, "self": pct(own), "inclusive": pct(inclusive)}


async def one_round(
    target: Target, local: Any, payers: list[LocalAccount], each: int, args: argparse.Namespace
) -> dict[str, Any]:
    """Idle, then free, then paid: the gateway's CPU per request of each."""
    signed = await sign_many(target, local, payers, each)
    idle = await asyncio.to_thread(idle_rate, target.pids["gateway"])
    free = await free_cpu(target, len(signed), args.concurrency, idle)
    paid = await batch(target, signed, args.concurrency, idle)
    target.records += paid.pop("records")
    free.pop("records")
    return {"idle_us_per_s": rounded(idle * 1e6, 1), "free": free, "paid": paid}


async def profiled_round(
    target: Target,
    local: Any,
    payers: list[LocalAccount],
    each: int,
    args: argparse.Namespace,
    workdir: Path,
) -> dict[str, Any]:
    """One more paid batch with py-spy attached (not counted in the figures: sampling
    costs the process), its top functions; the raw stacks are kept beside --profile."""
    signed = await sign_many(target, local, payers, each)
    raw = workdir / "paid.raw"
    spy = Profiler(target.pids["gateway"], raw, args.rate)
    paid = await batch(target, signed, args.concurrency, 0.0)
    err = spy.stop()
    target.records += paid.pop("records")
    if not raw.exists():
        return {"error": err[-2000:]}
    shutil.copy(raw, args.profile.with_suffix(".raw"))
    return top_functions(raw) | {"requests": paid["requests"], "cpu_us_per_req": paid["raw_us"]}


async def run(args: argparse.Namespace, log: Any) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="bench-gateway-cpu-"))
    group = ProcGroup(workdir)
    anvil = chainlib.start_anvil()
    runner, upstream = await start_origin()
    profile: dict[str, Any] = {}
    try:
        local = await asyncio.to_thread(chainlib.prepare_chain, anvil.rpc_url)
        fac_url, fac_pid = await asyncio.to_thread(start_facilitator, group, local.rpc_url)
        pay_to = str(chainlib.new_account().address)
        facilitator = {
            "url": fac_url,
            "headers": {"Authorization": f"Bearer {TOKEN}"},
            "timeout": "60s",
        }
        cfg = gateway_config(local, upstream, pay_to, facilitator)
        cfg["routes"] = [
            {"path": "/paid/*", "price": "$0.001"},
            {"path": "/*", "price": "free"},
        ]
        cfg["log_level"] = args.log_level
        if args.verify != "facilitator":
            cfg["verify"] = args.verify
            cfg["networks"] = {local.network: {"rpc_url": local.rpc_url}}
        proc, port = start_gateway(group, workdir, "gateway", cfg)
        target = Target("gateway", f"http://127.0.0.1:{port}", pay_to, {"gateway": proc.pid})
        each = max(1, args.payments // args.payers)
        spied = max(1, args.profile_payments // args.payers) if args.profile else 0
        fund = 2_000 * (each * args.rounds + spied + 1)  # $0.001 = 1,000 units a payment
        with ThreadPoolExecutor(8) as pool:
            payers = list(pool.map(lambda _: local.new_payer(fund), range(args.payers)))
        log(f"G {len(payers)} payers funded; facilitator pid {fac_pid}, gateway pid {proc.pid}")
        warm, _ = await send(target.url, await sign(target, local, payers[:4]), 4)
        target.records += warm
        out: list[dict[str, Any]] = []
        for i in range(args.rounds):
            row = await one_round(target, local, payers, each, args)
            out.append(row)
            log(
                f"G round {i + 1}: paid {row['paid']['us']} µs/req (raw {row['paid']['raw_us']}),"
                f" free {row['free']['us']} µs/req, idle {row['idle_us_per_s']} µs/s"
            )
        if args.profile:
            profile = await profiled_round(target, local, payers, spied, args, workdir)
        checks = on_chain(local, target)
    finally:
        await runner.cleanup()
        group.close()
        anvil.stop()
    return {"rounds": out, "on_chain": checks, "profile": profile}


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"rounds_counted": len(rows)}
    for kind in ("paid", "free"):
        for key in ("us", "raw_us"):
            values = [r[kind][key] for r in rows]
            out[f"{kind}_{key}"] = {
                "median": rounded(median(values), 1),
                "min": min(values),
                "max": max(values),
            }
    out["paid_minus_free_us"] = rounded(out["paid_us"]["median"] - out["free_us"]["median"], 1)
    return out


def markdown(results: dict[str, Any]) -> str:
    s = results["summary"]
    lines = [
        "# The gateway's own CPU per paid request",
        "",
        f"{results['when']} · {results['machine']} · load {results['load']} · commit"
        f" {results['commit']} · `{results['command']}`",
        "",
        "| per request (µs of gateway CPU) | median | min | max |",
        "| --- | --- | --- | --- |",
    ]
    for key, label in (
        ("paid_us", "paid (idle subtracted)"),
        ("paid_raw_us", "paid (raw)"),
        ("free_us", "free (idle subtracted)"),
        ("free_raw_us", "free (raw)"),
    ):
        lines.append(f"| {label} | {s[key]['median']} | {s[key]['min']} | {s[key]['max']} |")
    lines += ["", f"paid − free: {s['paid_minus_free_us']} µs; rounds: {s['rounds_counted']}", ""]
    c = results["on_chain"]
    lines += [f"On chain: {json.dumps(c)}", ""]
    prof = results.get("profile") or {}
    if prof.get("samples"):
        lines += [
            f"py-spy ({prof['requests']} paid requests after the rounds, {prof['samples']}"
            f" samples, {prof['cpu_us_per_req']} µs/req with py-spy attached):",
            "",
            "| self % | function | | inclusive % | function |",
            "| --- | --- | --- | --- | --- |",
        ]
        for (f1, p1), (f2, p2) in zip(prof["self"], prof["inclusive"], strict=False):
            lines.append(f"| {p1} | `{f1}` | | {p2} | `{f2}` |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gateway_cpu")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--payments", type=int, default=120, help="paid requests per round")
    parser.add_argument("--payers", type=int, default=30)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--log-level", default="warning")
    parser.add_argument("--verify", default="facilitator", choices=("facilitator", "local"))
    parser.add_argument("--profile", type=Path, help="py-spy the last round; top functions here")
    parser.add_argument("--profile-payments", type=int, default=600)
    parser.add_argument("--rate", type=int, default=1000, help="py-spy samples per second")
    parser.add_argument("--name", default="latest", help="results/gateway-cpu-NAME.{json,md}")
    args = parser.parse_args(argv)
    results = asyncio.run(run(args, lambda m: print(m, flush=True)))
    commit = subprocess.run(  # noqa: S603
        ["git", "describe", "--always", "--dirty"], capture_output=True, text=True, check=False
    ).stdout.strip()
    results |= {
        "summary": summary(results["rounds"]),
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.machine()} {os.cpu_count()} CPUs",
        "load": " ".join(f"{x:.1f}" for x in os.getloadavg()),
        "commit": commit,
        "command": "python -m bench.gateway_cpu " + " ".join(argv or sys.argv[1:]),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"gateway-cpu-{args.name}.json").write_text(json.dumps(results, indent=2) + "\n")
    text = markdown(results)
    (RESULTS / f"gateway-cpu-{args.name}.md").write_text(text)
    if args.profile:
        args.profile.write_text(text)
    print(text)
    c = results["on_chain"]
    return 1 if c["unpaid_200s"] or c["charged_not_served"] else 0


if __name__ == "__main__":
    sys.exit(main())
