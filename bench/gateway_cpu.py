"""`python -m bench.gateway_cpu` (issue 13 item 5): the gateway's own CPU per paid request,
isolated from the chain and the facilitator.

One anvil, the test USDC, `x402-gateway facilitator` (the settlement engine over HTTP, bearer
auth, its own process), an origin in this process and an `x402-gateway serve` process with one
priced route (`verify: facilitator`, the default: the gateway makes both facilitator calls).
With `--baseline DIR` (a source tree, e.g. `git archive <commit> | tar -x -C DIR`), a second
gateway runs that code on the same config, chain and facilitator: both are measured in the
same rounds, in rotating order, and the ratio current/baseline is taken round by round.
`--baseline-verify MODE` gives the baseline another `verify:` mode (`local-offline`: `verify:
local` with no RPC URL, signature and terms only): what one facilitator round trip costs.

Every paid request is a fresh payment signed before the clock starts (a few funded payers
sign several each). Per round and gateway, its process tree is metered from /proc
(schedstat, ns resolution) over an idle window (nothing sent: the background cost per
second), then `free` requests (a free route, same origin, same client), then `paid` ones.
CPU per request = (CPU in the batch - idle rate x batch wall time) / requests (the raw figure
is kept too); the median and spread over the rounds are reported. A neighbour stealing the
CPU makes a run slower, not more expensive. Then every payment is checked on chain (each 200
is its payer's Transfer in the transaction its receipt names, and no Transfer is without a
200): the command exits 1 otherwise.

`--profile FILE` then runs py-spy (`record --format raw`, blocking sampling) on each gateway
for one more paid batch (not counted in the figures) and writes the tables (top functions,
self and inclusive share of samples) to FILE, the raw stacks beside it.
Writes bench/results/gateway-cpu-NAME.json and .md (`--name`, default `latest`).
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
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from statistics import median
from typing import Any

import yaml
from eth_account.signers.local import LocalAccount

from bench.engine import transfer_logs
from bench.gateway_proc import gateway_argv
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


def user_sys(pid: int) -> tuple[float, float]:
    """utime and stime of pid (its threads included; 10 ms ticks: summed over many requests)."""
    fields = Path(f"/proc/{pid}/stat").read_text()
    rest = fields[fields.rindex(")") + 2 :].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(rest[11]) / tick, int(rest[12]) / tick


def idle_rate(pid: int) -> float:
    """CPU seconds per second the gateway spends with nothing sent to it."""
    before = cpu_seconds_fine(pid)
    time.sleep(IDLE_SECONDS)
    return (cpu_seconds_fine(pid) - before) / IDLE_SECONDS


async def batch(target: Target, signed: list[Any], concurrency: int, idle: float) -> dict[str, Any]:
    pid = target.pids["gateway"]
    before, (user0, sys0) = cpu_seconds_fine(pid), user_sys(pid)
    records, wall = await send(target.url, signed, concurrency)
    used = cpu_seconds_fine(pid) - before
    user1, sys1 = user_sys(pid)
    n = max(1, len(records))
    return {
        "user_s": rounded(user1 - user0, 3),
        "sys_s": rounded(sys1 - sys0, 3),
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
    logs = transfer_logs(local, target.pay_to)
    transfers = Counter(
        ("0x" + log["topics"][1][-40:], log["transactionHash"].lower()) for log in logs
    )
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

    def __init__(self, pid: int, out: Path, rate: int, native: bool = False) -> None:
        spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        self.out = out
        argv = [spy, "record", "--pid", str(pid), "--rate", str(rate), "--format", "raw"]
        self.proc = subprocess.Popen(
            [*argv, "-o", out, *(["--native"] if native else [])],
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


# Where a sample's leaf frame is, by package (first match): the event loop's own C code (the
# uvloop run, socket reads) and aiohttp's socket writes apart from the rest of aiohttp.
_PACKAGES = (
    ("Runner.run (", "event loop (uvloop, C: epoll, socket reads, callbacks)"),
    ("StreamWriter._write", "socket writes (aiohttp StreamWriter)"),
    ("/aiohttp/", "aiohttp (Python)"),
    ("/multidict/", "aiohttp (Python)"),
    ("/yarl/", "aiohttp (Python)"),
    ("gateway/", "gateway code"),
    ("/x402/", "x402 SDK"),
    ("/pydantic", "pydantic"),
    ("/coincurve/", "crypto (ECDSA recover, keccak)"),
    ("/Crypto/", "crypto (ECDSA recover, keccak)"),
    ("/eth_", "crypto (ECDSA recover, keccak)"),
    ("/json/", "json (stdlib)"),
    ("/cachetools/", "store, metrics, logging libraries"),
    ("/prometheus_client/", "store, metrics, logging libraries"),
    ("/structlog/", "store, metrics, logging libraries"),
    ("/asyncio/", "asyncio (Python)"),
)


def packages(raw: Path) -> list[list[Any]]:
    """Self samples by package, as % of all samples (the leaf frame of each stack)."""
    found: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        found[_package(stack.split(";"))] += int(count)
        total += int(count)
    return [[k, round(100 * v / max(1, total), 1)] for k, v in found.most_common()]


def _package(frames: list[str]) -> str:
    """The package a stack's sample is charged to. With `--native` stacks, the leaf may be C:
    `epoll_pwait` (a thread py-spy sees runnable there is waiting for a CPU or just woken: on
    a loaded machine this is wait, not work; `perf` shows the loop's C code at ~4 % of the
    CPU) and socket reads/writes stand apart; other C frames (the interpreter, a C extension)
    are charged to the nearest Python frame above them."""
    leaf = frames[-1]
    if leaf.startswith("epoll_pwait") or leaf.startswith("epoll_wait"):
        return "epoll_pwait: runnable in the loop's wait (py-spy --native)"
    if leaf.split(" (")[0] in ("write", "read", "send", "recv", "sendmsg", "recvfrom", "writev"):
        return "socket syscalls (libc write/read)"
    for frame in reversed(frames):
        path = "/" + frame.partition(" (")[2]
        if ".py:" in path or path.endswith(".py)") or frame is frames[0]:
            return next((label for key, label in _PACKAGES if key in frame or key in path), "other")
    return "other"


def summarize(raws: list[Path]) -> str:
    """`--summarize A.raw B.raw`: the self samples by package of each, side by side."""
    tables = {raw.stem: dict(packages(raw)) for raw in raws}
    names = sorted(
        {k for t in tables.values() for k in t},
        key=lambda k: -max(t.get(k, 0.0) for t in tables.values()),
    )
    lines = [
        "| self samples, % | " + " | ".join(tables) + " |",
        "| --- |" + " --- |" * len(tables),
    ]
    lines += [
        f"| {n} | " + " | ".join(str(t.get(n, 0.0)) for t in tables.values()) + " |" for n in names
    ]
    return "\n".join(lines) + "\n"


def _frame(frame: str) -> str:
    """`name (path:line)` -> `name (path)`: a function's samples counted together."""
    name, _, where = frame.partition(" (")
    return f"{name} ({where.split(':')[0].rstrip(')')})" if where else name


def top_functions(raw: Path, n: int = 25) -> dict[str, Any]:
    """From py-spy's collapsed stacks: the top `n` functions by self samples, by inclusive
    samples (counted once per stack; the process's entry frames, in every sample, left out),
    and by inclusive samples among the gateway's own functions; each as % of all samples."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = [_frame(f) for f in stack.split(";")]
        hits = int(count)
        total += hits
        own[frames[-1]] += hits
        for frame in set(frames):
            inclusive[frame] += hits

    def pct(counter: Counter[str], keep: Callable[[str, int], bool]) -> list[list[Any]]:
        rows = [(f, k) for f, k in counter.most_common() if keep(f, k)][:n]
        return [[f, round(100 * k / max(1, total), 1)] for f, k in rows]

    return {
        "samples": total,
        "self": pct(own, lambda f, k: True),
        "inclusive": pct(inclusive, lambda f, k: k < 0.99 * total),
        "gateway": pct(inclusive, lambda f, k: "(gateway/" in f and k < 0.99 * total),
    }


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
    raw: Path,
) -> dict[str, Any]:
    """One more paid batch with py-spy attached (not counted in the figures: sampling
    costs the process), its top functions; the raw stacks are kept in `raw`."""
    signed = await sign_many(target, local, payers, each)
    spy = Profiler(target.pids["gateway"], raw, args.rate, args.native)
    paid = await batch(target, signed, args.concurrency, 0.0)
    err = spy.stop()
    target.records += paid.pop("records")
    if args.strace:
        # Syscalls per request: one more free and one more paid batch under `strace -c -f`.
        free_calls = await traced(
            target, args, lambda: free_cpu(target, len(signed), args.concurrency, 0.0)
        )
        again = await sign_many(target, local, payers, each)
        paid_calls = await traced(
            target, args, lambda: batch(target, again, args.concurrency, 0.0), keep=True
        )
        return top_functions(raw) | {
            "requests": paid["requests"],
            "cpu_us_per_req": paid["raw_us"],
            "syscalls": {"free": free_calls, "paid": paid_calls},
        }
    if not raw.exists():
        return {"error": err[-2000:]}
    return top_functions(raw) | {"requests": paid["requests"], "cpu_us_per_req": paid["raw_us"]}


async def traced(
    target: Target, args: argparse.Namespace, run_batch: Callable[[], Any], keep: bool = False
) -> dict[str, Any]:
    """`strace -c -f` attached to the gateway for one batch: syscalls per request, by name."""
    out = Path(tempfile.mkstemp(prefix="strace-", suffix=".txt")[1])
    proc = subprocess.Popen(
        ["strace", "-c", "-f", "-o", str(out), "-p", str(target.pids["gateway"])],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    await asyncio.sleep(1.0)
    done = await run_batch()
    records = done.pop("records")
    if keep:
        target.records += records
    os.killpg(proc.pid, signal.SIGINT)
    proc.wait(timeout=30)
    n = max(1, len(records))
    calls: dict[str, Any] = {}
    for line in out.read_text().splitlines():
        parts = line.split()
        if len(parts) >= 5 and parts[0][0].isdigit() and parts[-1] not in ("total",):
            calls[parts[-1]] = rounded(int(parts[3]) / n, 2)
    out.unlink()
    return {
        "per_request": dict(sorted(calls.items(), key=lambda kv: -kv[1])),
        "total": rounded(sum(calls.values()), 1),
        "requests": n,
    }


def start_target(
    group: ProcGroup,
    workdir: Path,
    name: str,
    cfg: dict[str, Any],
    pay_to: str,
    source: Path | None,
) -> Target:
    """A gateway process on `cfg`; `source`: run the gateway package from that tree
    (PYTHONPATH) instead of this checkout (`--baseline`: an older commit, side by side)."""
    port, admin = free_port(), free_port()
    path = workdir / f"{name}.yaml"
    full = {"listen": f"127.0.0.1:{port}", "admin": f"127.0.0.1:{admin}", **cfg, "pay_to": pay_to}
    path.write_text(yaml.safe_dump(full, sort_keys=False))
    env = {"PYTHONPATH": str(source)} if source is not None else None
    proc = group.start(name, gateway_argv(path), port=port, env=env, timeout=60.0)
    return Target(name, f"http://127.0.0.1:{port}", pay_to, {"gateway": proc.pid})


def base_config(
    local: Any, upstream: str, fac_url: str, args: argparse.Namespace, verify: str
) -> Any:
    facilitator = {"url": fac_url, "headers": {"Authorization": f"Bearer {TOKEN}"}}
    cfg = gateway_config(local, upstream, "", facilitator | {"timeout": "60s"})
    cfg["routes"] = [{"path": "/paid/*", "price": "$0.001"}, {"path": "/*", "price": "free"}]
    cfg["log_level"] = args.log_level
    if verify != "facilitator":
        cfg["verify"] = "local"
        if verify == "local":  # local-offline: signature and terms only, no RPC reads
            cfg["networks"] = {local.network: {"rpc_url": local.rpc_url}}
    return cfg


async def run(args: argparse.Namespace, log: Any) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="bench-gateway-cpu-"))
    group = ProcGroup(workdir)
    anvil = chainlib.start_anvil()
    runner, upstream = await start_origin()
    out: dict[str, Any] = {}
    try:
        local = await asyncio.to_thread(chainlib.prepare_chain, anvil.rpc_url)
        fac_url, fac_pid = await asyncio.to_thread(start_facilitator, group, local.rpc_url)
        # name -> (source tree, verify mode); the baseline differs in its code, its mode, or both
        sources: dict[str, tuple[Path | None, str]] = {"current": (None, args.verify)}
        if args.baseline or args.baseline_verify:
            sources["baseline"] = (args.baseline, args.baseline_verify or args.verify)
        targets = [
            start_target(
                group,
                workdir,
                name,
                base_config(local, upstream, fac_url, args, verify),
                str(chainlib.new_account().address),
                src,
            )
            for name, (src, verify) in sources.items()
        ]
        each = max(1, args.payments // args.payers)
        spied = max(1, args.profile_payments // args.payers) if args.profile else 0
        fund = 2_000 * len(targets) * (each * args.rounds + spied * 2 + 1)  # 1,000 a payment
        with ThreadPoolExecutor(8) as pool:
            payers = list(pool.map(lambda _: local.new_payer(fund), range(args.payers)))
        log(f"G {len(payers)} payers funded; facilitator pid {fac_pid}")
        for t in targets:
            t.records += (await send(t.url, await sign(t, local, payers[:4]), 4))[0]
            out[t.name] = {"pid": t.pids["gateway"], "rounds": []}
        for i in range(args.rounds):
            for t in targets[i % len(targets) :] + targets[: i % len(targets)]:  # rotated
                row = await one_round(t, local, payers, each, args)
                out[t.name]["rounds"].append(row)
                log(
                    f"G round {i + 1} {t.name}: paid {row['paid']['us']} µs/req, free"
                    f" {row['free']['us']} µs/req, idle {row['idle_us_per_s']} µs/s"
                )
        for t in targets if args.profile else ():
            spy_to = args.profile.with_name(f"{args.profile.stem}-{t.name}.raw")
            out[t.name]["profile"] = await profiled_round(t, local, payers, spied, args, spy_to)
        for t in targets:
            out[t.name]["on_chain"] = on_chain(local, t)
    finally:
        await runner.cleanup()
        group.close()
        anvil.stop()
    return {"targets": out}


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
    for kind in ("paid", "free"):  # user/system split, summed over the rounds (10 ms ticks)
        n = sum(r[kind]["requests"] for r in rows) or 1
        user = sum(r[kind].get("user_s", 0.0) for r in rows)
        system = sum(r[kind].get("sys_s", 0.0) for r in rows)
        out[f"{kind}_user_sys_us"] = [rounded(user / n * 1e6, 1), rounded(system / n * 1e6, 1)]
    return out


def paired(targets: dict[str, Any]) -> dict[str, Any] | None:
    """current / baseline per round (the two measured back to back), median and spread."""
    if "baseline" not in targets:
        return None
    out: dict[str, Any] = {}
    for kind in ("paid", "free"):
        ratios = [
            c[kind]["us"] / b[kind]["us"]
            for c, b in zip(
                targets["current"]["rounds"], targets["baseline"]["rounds"], strict=True
            )
            if b[kind]["us"]
        ]
        out[kind] = {
            "median": rounded(median(ratios), 3),
            "min": rounded(min(ratios), 3),
            "max": rounded(max(ratios), 3),
        }
    return out


def profile_lines(name: str, prof: dict[str, Any]) -> list[str]:
    if not prof.get("samples"):
        return [f"py-spy {name}: {prof.get('error', 'no samples')}", ""]
    lines = [
        f"py-spy, {name} ({prof['requests']} paid requests after the rounds, {prof['samples']}"
        f" samples, {prof['cpu_us_per_req']} µs/req with py-spy attached):",
        "",
        "| self % | function | inclusive % | function | gateway code, inclusive % | function |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for (f1, p1), (f2, p2), (f3, p3) in zip(
        prof["self"], prof["inclusive"], prof["gateway"], strict=False
    ):
        lines.append(f"| {p1} | `{f1}` | {p2} | `{f2}` | {p3} | `{f3}` |")
    return [*lines, ""]


def markdown(results: dict[str, Any]) -> str:
    lines = [
        "# The gateway's own CPU per paid request",
        "",
        f"{results['when']} · {results['machine']} · load {results['load']} · commit"
        f" {results['commit']} · `{results['command']}`",
        "",
        "| gateway | kind | µs CPU/request, median | min | max | raw median | rounds |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, t in results["targets"].items():
        s = t["summary"]
        for kind in ("paid", "free"):
            v = s[f"{kind}_us"]
            lines.append(
                f"| {name} | {kind} | {v['median']} | {v['min']} | {v['max']} |"
                f" {s[f'{kind}_raw_us']['median']} | {s['rounds_counted']} |"
            )
    if results.get("ratio"):
        r = results["ratio"]
        lines += [
            "",
            "current / baseline, paired by round: paid"
            f" {r['paid']['median']} ({r['paid']['min']}-{r['paid']['max']}), free"
            f" {r['free']['median']} ({r['free']['min']}-{r['free']['max']})",
        ]
    lines += ["", "| gateway | paid: user µs/req | system µs/req | free: user | system |"]
    lines.append("| --- | --- | --- | --- | --- |")
    for name, t in results["targets"].items():
        (pu, ps), (fu, fs) = t["summary"]["paid_user_sys_us"], t["summary"]["free_user_sys_us"]
        lines.append(f"| {name} | {pu} | {ps} | {fu} | {fs} |")
    lines.append("")
    for name, t in results["targets"].items():
        lines.append(f"On chain, {name}: {json.dumps(t['on_chain'])}")
    for name, t in results["targets"].items():
        for kind, calls in t.get("profile", {}).get("syscalls", {}).items():
            top = ", ".join(f"{k} {v}" for k, v in list(calls["per_request"].items())[:8])
            lines.append(f"Syscalls per {kind} request, {name}: {calls['total']} ({top})")
    lines.append("")
    for name, t in results["targets"].items():
        if "profile" in t:
            lines += profile_lines(name, t["profile"])
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gateway_cpu")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--payments", type=int, default=120, help="paid requests per round")
    parser.add_argument("--payers", type=int, default=30)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--log-level", default="warning")
    parser.add_argument(
        "--verify", default="facilitator", choices=("facilitator", "local", "local-offline")
    )
    parser.add_argument(
        "--baseline",
        type=Path,
        help="a source tree (git archive of an older commit) run side by side, interleaved",
    )
    parser.add_argument(
        "--baseline-verify",
        choices=("facilitator", "local", "local-offline"),
        help="the baseline gateway's verify mode (with no --baseline: this checkout's code)",
    )
    parser.add_argument("--profile", type=Path, help="py-spy each gateway; the table here")
    parser.add_argument("--profile-payments", type=int, default=600)
    parser.add_argument("--rate", type=int, default=1000, help="py-spy samples per second")
    parser.add_argument("--native", action="store_true", help="py-spy --native (C frames)")
    parser.add_argument(
        "--strace", action="store_true", help="with --profile: syscalls per request (strace -c)"
    )
    parser.add_argument("--name", default="latest", help="results/gateway-cpu-NAME.{json,md}")
    parser.add_argument(
        "--summarize", type=Path, nargs="+", help="only print py-spy raw files' samples by package"
    )
    args = parser.parse_args(argv)
    if args.summarize:
        print(summarize(args.summarize), end="")
        return 0
    results = asyncio.run(run(args, lambda m: print(m, flush=True)))
    for t in results["targets"].values():
        t["summary"] = summary(t["rounds"])
    commit = subprocess.run(
        ["git", "describe", "--always", "--dirty"], capture_output=True, text=True, check=False
    ).stdout.strip()
    results |= {
        "ratio": paired(results["targets"]),
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
    bad = [t["on_chain"] for t in results["targets"].values()]
    return 1 if any(c["unpaid_200s"] or c["charged_not_served"] for c in bad) else 0


if __name__ == "__main__":
    sys.exit(main())
