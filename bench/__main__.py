"""`python -m bench [--quick] [--only ABCD]`: the gateway's benchmark, every figure in one run.

A. free route: CPU/request, req/s, p50/p99 (origin, floor proxy, nginx proxy, gateway)
B. paid route: paid req/s and the Server-Timing latency split (local chain + facilitator)
C. memory: RSS growth while a large body passes (fast and slow readers)
D. route table: match cost at 10 and 10,000 routes
E. repeat calls: a SIWX sign-in beside a free and an exact paid request (local chain)
G. verify: local vs verify: facilitator with the facilitator 50 ms away (bench/remote_verify.py)

Writes bench/results/latest.json and latest.md. Everything runs on 127.0.0.1; every
process it starts is stopped by pid when it ends, whatever happens.
"""

from __future__ import annotations

import argparse
import importlib
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import free_route, memory, nginx, paid_engine, remote_verify, report
from bench.gateway_proc import free_config, gateway_available, start_gateway
from bench.procs import ProcGroup, free_port
from bench.stats import ratio, rounded

MIB = 2**20


@dataclass(frozen=True)
class Profile:
    name: str
    free: free_route.FreeParams
    body_bytes: int
    slow_rate: float  # bytes/s
    payers: int
    concurrency: int
    sequential: int
    free_requests: int
    block_time: bool
    block_time_payers: int  # each settlement waits for a block: fewer payments there
    block_time_sequential: int
    route_repeats: int
    repeat_requests: int = 200  # section E: requests of each kind


QUICK = Profile(
    name="quick",
    free=free_route.FreeParams(requests=4_000, warmup=500, latency_seconds=2, rounds=2),
    body_bytes=256 * MIB,
    slow_rate=50e6,
    payers=100,
    concurrency=10,
    sequential=20,
    free_requests=100,
    block_time=False,
    block_time_payers=0,
    block_time_sequential=0,
    route_repeats=2,
)
FULL = Profile(
    name="full",
    free=free_route.FreeParams(requests=20_000, warmup=2_000, latency_seconds=5, rounds=3),
    body_bytes=1024 * MIB,
    slow_rate=50e6,
    payers=100,
    concurrency=10,
    sequential=50,
    free_requests=300,
    block_time=True,
    block_time_payers=30,
    block_time_sequential=5,
    route_repeats=3,
    repeat_requests=300,
)

GW_WARNING = "gateway (log_level warning)"
GW_INFO = "gateway (log_level info)"


class Harness:
    def __init__(self, profile: Profile, workdir: Path) -> None:
        self.profile = profile
        self.workdir = workdir
        self.group = ProcGroup(workdir)
        self.started = time.monotonic()
        self.origin_port = free_port()
        self.pids: dict[str, int] = {}
        self.ports: dict[str, int] = {}
        self.gateway_missing: str | None = None

    def log(self, message: str) -> None:
        print(f"[bench {time.monotonic() - self.started:6.1f}s] {message}", file=sys.stderr)

    @property
    def upstream(self) -> str:
        return f"http://127.0.0.1:{self.origin_port}"

    def start_all(self) -> None:
        origin = nginx.start_origin(
            self.group, self.workdir, self.origin_port, self.profile.body_bytes
        )
        self.pids["origin direct"], self.ports["origin direct"] = origin.pid, self.origin_port
        port = free_port()
        floor = self.group.start(
            "floor",
            [
                *(sys.executable, "-m", "bench.floor_proxy"),
                *("--listen", f"127.0.0.1:{port}", "--upstream", self.upstream),
            ],
            port=port,
        )
        self.pids["floor proxy"], self.ports["floor proxy"] = floor.pid, port
        port = free_port()
        proxy = nginx.start_proxy(self.group, self.workdir, port, self.origin_port)
        self.pids["nginx proxy"], self.ports["nginx proxy"] = proxy.pid, port
        self.gateway_missing = gateway_available()
        if self.gateway_missing is None:
            for label, level in ((GW_WARNING, "warning"), (GW_INFO, "info")):
                name = f"gateway-free-{level}"
                try:
                    proc, port = start_gateway(
                        self.group, self.workdir, name, free_config(self.upstream, level)
                    )
                except RuntimeError as exc:
                    self.gateway_missing = f"the gateway did not start: {exc}"
                    break
                self.pids[label], self.ports[label] = proc.pid, port
        self.log("started: " + ", ".join(f"{k} :{v}" for k, v in self.ports.items()))

    def url(self, label: str, path: str) -> str:
        return f"http://127.0.0.1:{self.ports[label]}{path}"

    def section_a(self) -> dict[str, Any]:
        targets = [
            free_route.Target(label, self.pids[label], self.url(label, nginx.SMALL_PATH))
            for label in ("origin direct", "floor proxy", "nginx proxy", GW_WARNING, GW_INFO)
            if label in self.pids
        ]
        result = free_route.run_section(targets, self.profile.free, self.log)
        if self.gateway_missing:
            result["status"] = "partial"
            result["reason"] = self.gateway_missing
        return result

    def section_c(self) -> dict[str, Any]:
        runs: dict[str, Any] = {}
        for label in ("floor proxy", GW_WARNING):
            if label not in self.pids:
                continue
            url = self.url(label, nginx.BIG_PATH)
            self.log(f"C {label}, fast reader")
            fast = memory.measure(self.pids[label], url, fast=True)
            self.log(f"C {label}, slow reader")
            slow = memory.measure(self.pids[label], url, fast=False, rate=self.profile.slow_rate)
            runs[label] = {"fast reader": fast, "slow reader": slow}
        result: dict[str, Any] = {
            "params": {
                "body_mib": self.profile.body_bytes // MIB,
                "slow_mb_per_s": self.profile.slow_rate / 1e6,
            },
            "runs": runs,
            "notes": ["fast reader: curl -o /dev/null; slow reader: aiohttp, paced reads"],
        }
        if self.gateway_missing:
            result["status"] = "partial"
            result["reason"] = self.gateway_missing
        return result

    def section_b(self, free_a: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        if self.gateway_missing:
            return {"status": "not yet runnable", "reason": self.gateway_missing}, {}
        try:
            paid_route = importlib.import_module("bench.paid_route")
        except ImportError as exc:
            reason = f"payment pieces missing: {exc}"
            return {"status": "not yet runnable", "reason": reason}, {}
        added = free_a.get("ratios", {}).get("added_p50_us_over_origin", {}).get(GW_WARNING)
        p = self.profile
        params = paid_route.PaidParams(
            payers=p.payers,
            concurrency=p.concurrency,
            sequential=p.sequential,
            free_requests=p.free_requests,
            block_time=p.block_time,
            block_time_payers=p.block_time_payers,
            block_time_sequential=p.block_time_sequential,
            big_bytes=p.body_bytes,
            slow_rate=p.slow_rate,
        )
        result: tuple[dict[str, Any], dict[str, Any]] = paid_route.run_section(
            self.group, self.workdir, self.upstream, params, self.log, added
        )
        return result

    def section_e(self) -> dict[str, Any]:
        if self.gateway_missing:
            return {"status": "not yet runnable", "reason": self.gateway_missing}
        sessions = importlib.import_module("bench.sessions")
        params = sessions.RepeatParams(requests=self.profile.repeat_requests)
        result: dict[str, Any] = sessions.run_section(
            self.group, self.workdir, self.upstream, params, self.log
        )
        return result

    def section_d(self) -> dict[str, Any]:
        try:
            route_match = importlib.import_module("bench.route_match")
        except ImportError as exc:
            return {"status": "not yet runnable", "reason": f"bench.route_match: {exc}"}
        # Interleaved repeats, best of each: a noisy neighbour inflates single runs, never
        # deflates them.
        kinds: dict[str, Any] = {}
        for kind in ("exact", "wildcard", "miss"):
            self.log(f"D {kind}")
            best: dict[int, float] = {}
            try:
                for _ in range(self.profile.route_repeats):
                    for n in (10, 10_000):
                        ns = route_match.measure(n, kind)
                        best[n] = min(ns, best.get(n, ns))
            except ValueError as exc:  # a kind that module does not know
                kinds[kind] = {"error": str(exc)}
                continue
            kinds[kind] = {
                "10": rounded(best[10]),
                "10000": rounded(best[10_000]),
                "ratio": rounded(ratio(best[10_000], best[10]), 3),
            }
        return {
            "kinds": kinds,
            "unit": "ns per RouteTable.match, best of interleaved repeats",
            "repeats": self.profile.route_repeats,
        }


def _guarded(name: str, harness: Harness, run: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """One section; a failure is recorded in the report, and the other sections still run."""
    try:
        return run()
    except Exception as exc:  # report it, go on with the next section
        harness.log(f"section {name} failed: {exc}")
        return {
            "status": "error",
            "reason": f"{type(exc).__name__}: {exc}",
            "traceback": traceback.format_exc(),
        }


def _git_head() -> str:
    try:
        done = subprocess.run(
            ["git", "describe", "--always", "--dirty"],
            capture_output=True,
            check=False,
            text=True,
            cwd=Path(__file__).resolve().parent.parent,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return done.stdout.strip() or "unknown"


def _sections(harness: Harness, only: str, sections: dict[str, Any]) -> None:
    if "E" in only:
        sections["E"] = _guarded("E", harness, harness.section_e)
    if "D" in only:
        sections["D"] = _guarded("D", harness, harness.section_d)
    if "A" in only:
        sections["A"] = _guarded("A", harness, harness.section_a)
    if "C" in only:
        sections["C"] = _guarded("C", harness, harness.section_c)
    if "F" in only:
        quick = harness.profile.name == "quick"
        sections["F"] = _guarded("F", harness, lambda: paid_engine.section(quick, harness.log))
    if "B" in only:
        paid_memory: dict[str, Any] = {}

        def section_b() -> dict[str, Any]:
            paid, memory_part = harness.section_b(sections.get("A", {}))
            paid_memory.update(memory_part)
            return paid

        sections["B"] = _guarded("B", harness, section_b)
        if "C" in only:
            sections["C"].setdefault("runs", {}).update(paid_memory)
            if not paid_memory:
                sections["C"].setdefault("notes", []).append(
                    "paid route: not run (section B did not run to its end)"
                )


def _section_g(harness: Harness, only: str, sections: dict[str, Any]) -> None:
    if "G" in only:
        quick = harness.profile.name == "quick"
        sections["G"] = _guarded("G", harness, lambda: remote_verify.section(quick, harness.log))


def run(profile: Profile, only: str, command: str, keep: bool = False) -> dict[str, Any]:
    results: dict[str, Any] = {
        "date": report.now(),
        "command": command,
        "profile": profile.name,
        "machine": report.machine(),
        "git": _git_head(),
        "sections": {},
    }
    workdir = Path(tempfile.mkdtemp(prefix="x402-bench-"))
    harness = Harness(profile, workdir)
    try:
        harness.start_all()
        _sections(harness, only, results["sections"])
        _section_g(harness, only, results["sections"])
    finally:
        harness.group.close()
        results["seconds"] = round(time.monotonic() - harness.started, 1)
        if keep:
            results["workdir"] = str(workdir)
            harness.log(f"kept {workdir} (configs and every process's log)")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer requests, 256 MiB body")
    parser.add_argument("--only", default="ABCDEFG", help="sections to run, e.g. AD")
    parser.add_argument(
        "--keep", action="store_true", help="keep the work dir (configs, process logs)"
    )
    args = parser.parse_args(argv)
    profile = QUICK if args.quick else FULL
    command = shlex.join(["python", "-m", "bench", *(sys.argv[1:] if argv is None else argv)])
    results = run(profile, args.only.upper(), command, keep=args.keep)
    as_json, as_md = report.write(results)
    print(as_md.read_text())
    print(f"written: {as_json} {as_md}", file=sys.stderr)
    failed = [k for k, v in results["sections"].items() if v.get("status") == "error"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
