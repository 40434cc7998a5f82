"""Section A: the free route. What each proxy costs per request, measured side by side.

For every target, in each round: a warm-up, then a fixed number of requests at 50
connections (CPU time of the target's process tree from /proc, divided by the requests
served, and requests/s), then a fixed time at 1 connection (p50/p99 latency). Rounds
interleave the targets so a noisy neighbour hits them alike; the median of the rounds is
reported.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bench import load
from bench.procs import cpu_seconds, tree_rss_bytes
from bench.stats import median, ratio, rounded


@dataclass(frozen=True)
class Target:
    label: str
    pid: int  # the process tree whose CPU time is counted
    url: str  # the small JSON through this target


@dataclass(frozen=True)
class FreeParams:
    requests: int
    warmup: int
    latency_seconds: float
    rounds: int
    connections: int = 50


@dataclass
class _Samples:
    cpu_us: list[float] = field(default_factory=list)
    rps: list[float] = field(default_factory=list)
    p50: list[float] = field(default_factory=list)
    p99: list[float] = field(default_factory=list)
    rps_1c: list[float] = field(default_factory=list)
    bad: int = 0  # non-2xx responses and socket errors, all runs
    commands: list[str] = field(default_factory=list)


def _one_round(target: Target, params: FreeParams, samples: _Samples) -> None:
    load.run(target.url, connections=params.connections, requests=params.warmup, seconds=60)
    before = cpu_seconds(target.pid)
    loaded = load.run(
        target.url, connections=params.connections, requests=params.requests, seconds=120
    )
    # Requests wrk gave up on at its stop may still be in flight: let them finish.
    time.sleep(0.2)
    used = cpu_seconds(target.pid) - before
    samples.cpu_us.append(used / loaded.requests * 1e6)
    samples.rps.append(loaded.rps)
    single = load.run(target.url, connections=1, seconds=params.latency_seconds)
    samples.p50.append(single.latency_us["p50"])
    samples.p99.append(single.latency_us["p99"])
    samples.rps_1c.append(single.rps)
    samples.bad += loaded.non_2xx + loaded.socket_errors + single.non_2xx + single.socket_errors
    if not samples.commands:
        samples.commands = [loaded.command, single.command]


def _summary(target: Target, samples: _Samples) -> dict[str, Any]:
    return {
        "url": target.url,
        "cpu_us_per_request": rounded(median(samples.cpu_us)),
        "rps_50c": rounded(median(samples.rps), 0),
        "p50_us_1c": rounded(median(samples.p50)),
        "p99_us_1c": rounded(median(samples.p99)),
        "rps_1c": rounded(median(samples.rps_1c), 0),
        "errors": samples.bad,
        "rss_mib_after": round(tree_rss_bytes(target.pid) / 2**20, 1),
        "rounds": {
            "cpu_us_per_request": [round(v, 1) for v in samples.cpu_us],
            "rps_50c": [round(v) for v in samples.rps],
            "p50_us_1c": samples.p50,
            "p99_us_1c": samples.p99,
        },
        "wrk": samples.commands,
    }


def _ratios(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    def cpu(label: str) -> float | None:
        return results.get(label, {}).get("cpu_us_per_request")

    def field_of(label: str, key: str) -> float | None:
        return results.get(label, {}).get(key)

    out: dict[str, Any] = {}
    for gw in ("gateway (log_level warning)", "gateway (log_level info)"):
        if gw in results:
            short = "warning" if "warning" in gw else "info"
            out[f"gateway_{short}_vs_floor_cpu"] = rounded(ratio(cpu(gw), cpu("floor proxy")), 3)
            out[f"gateway_{short}_vs_floor_rps"] = rounded(
                ratio(field_of(gw, "rps_50c"), field_of("floor proxy", "rps_50c")), 3
            )
            out[f"gateway_{short}_vs_nginx_cpu"] = rounded(ratio(cpu(gw), cpu("nginx proxy")), 2)
    out["floor_vs_nginx_cpu"] = rounded(ratio(cpu("floor proxy"), cpu("nginx proxy")), 2)
    origin_p50 = field_of("origin direct", "p50_us_1c")
    out["added_p50_us_over_origin"] = {
        label: rounded(r["p50_us_1c"] - origin_p50)
        for label, r in results.items()
        if label != "origin direct" and origin_p50 is not None and r["p50_us_1c"] is not None
    }
    return out


def run_section(
    targets: list[Target], params: FreeParams, log: Callable[[str], None]
) -> dict[str, Any]:
    samples = {t.label: _Samples() for t in targets}
    for round_no in range(params.rounds):
        for target in targets:
            log(f"A round {round_no + 1}/{params.rounds}: {target.label}")
            _one_round(target, params, samples[target.label])
    results = {t.label: _summary(t, samples[t.label]) for t in targets}
    return {
        "params": {
            "requests_per_cpu_run": params.requests,
            "warmup_requests": params.warmup,
            "connections": params.connections,
            "latency_seconds_1c": params.latency_seconds,
            "rounds": params.rounds,
        },
        "targets": results,
        "ratios": _ratios(results),
        "target": "gateway (log_level warning) CPU/request <= 1.1x the floor proxy",
    }
