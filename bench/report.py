"""bench/results/latest.json (every figure) and latest.md (the same, for people)."""

from __future__ import annotations

import json
import os
import platform
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict[str, Any]:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        loadavg = Path("/proc/loadavg").read_text().split()[:3]
    except OSError:
        loadavg = []
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "loadavg_at_start": loadavg,
    }


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        return f"{value:,.3f}" if abs(value) < 10 else f"{value:,.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]
    return [*lines, ""]


def _status(section: dict[str, Any]) -> list[str]:
    if not section:
        return ["not run in this invocation (see --only)", ""]
    status = section.get("status", "ok")
    if status == "ok":
        return []
    # The full reason (a process's last log lines, a traceback) is in latest.json.
    reason = str(section.get("reason", "")).strip().splitlines()
    shown = reason[0] + (f" ... {reason[-1]}" if len(reason) > 1 else "") if reason else ""
    return [f"**{status}**: {shown}", ""]


def _free(a: dict[str, Any]) -> list[str]:
    out = ["## A. Free route", "", *_status(a)]
    if "targets" not in a:
        return out
    p = a["params"]
    out.append(
        f"{p['requests_per_cpu_run']:,} requests at {p['connections']} connections for CPU and "
        f"req/s; {p['latency_seconds_1c']} s at 1 connection for latency; "
        f"median of {p['rounds']} interleaved round(s). CPU = utime+stime of the target's "
        "process tree (/proc) / requests served."
    )
    out.append("")
    rows = [
        [
            label,
            r["cpu_us_per_request"],
            r["rps_50c"],
            r["p50_us_1c"],
            r["p99_us_1c"],
            r["rss_mib_after"],
            r["errors"],
        ]
        for label, r in a["targets"].items()
    ]
    out += _table(
        ["target", "CPU µs/req", "req/s @50", "p50 µs @1", "p99 µs @1", "RSS MiB", "errors"], rows
    )
    ratios = a.get("ratios", {})
    added = ratios.get("added_p50_us_over_origin", {})
    out += _table(
        ["ratio", "value"], [[k, v] for k, v in ratios.items() if not isinstance(v, dict)]
    )
    out += _table(["p50 added over the origin (µs, 1 connection)", "µs"], list(added.items()))
    out += [f"Target: {a.get('target', '')}", ""]
    return out


def _dist(value: Any) -> str:
    if isinstance(value, dict):
        return f"{_fmt(value.get('p50'))} / {_fmt(value.get('p99'))}"
    return _fmt(value)


def _paid(b: dict[str, Any]) -> list[str]:
    out = ["## B. Paid route", "", *_status(b)]
    variants = b.get("variants", {})
    if not variants:
        return out
    p = b["params"]
    out.append(
        f"{p['payers']} distinct payers, payments signed before the clock, sent "
        f"{p['concurrency']} at a time (req/s); {p['sequential']} more sent one at a time "
        "for the latency split (Server-Timing); µs as p50 / p99."
    )
    out.append("")
    header = [
        "variant",
        "paid req/s",
        "ok/settled",
        "total @1",
        "verify",
        "origin",
        "settle",
        "gw",
        "total-verify-settle",
        "free, same client",
        "paid own - free p50",
    ]
    rows = []
    for label, v in variants.items():
        s = v["sequential"]
        c = v["at_concurrency"]
        rows.append(
            [
                label,
                v["paid_rps"],
                f"{c['ok']}/{c['settled']} of {c['requests']}; @1 {s['ok']}/{s['settled']}",
                _dist(s["total_us"]),
                _dist(s["verify_us"]),
                _dist(s["origin_us"]),
                _dist(s["settle_us"]),
                _dist(s["gw_us"]),
                _dist(s["total_minus_verify_settle_us"]),
                _dist(v["free_same_client_us"]),
                v["paid_own_minus_free_p50_us"],
            ]
        )
    out += _table(header, rows)
    conc = p["concurrency"]
    out += _table(
        [
            "variant",
            "payments (@N / @1)",
            f"total @{conc}",
            f"verify @{conc}",
            f"settle @{conc}",
            f"gw @{conc}",
            "statuses",
            "Server-Timing names",
        ],
        [
            [
                label,
                "{concurrent} / {sequential}".format(**v["payments"]),
                _dist(v["at_concurrency"]["total_us"]),
                _dist(v["at_concurrency"]["verify_us"]),
                _dist(v["at_concurrency"]["settle_us"]),
                _dist(v["at_concurrency"]["gw_us"]),
                v["at_concurrency"]["statuses"],
                v["sequential"]["server_timing_names"],
            ]
            for label, v in variants.items()
        ],
    )
    cpu_rows = [
        [label, batch, *(per.get(name) for name in ("gateway", "facilitator server", "anvil"))]
        for label, v in variants.items()
        for batch, per in v["cpu_us_per_request"].items()
    ]
    out += _table(
        ["variant", "batch", "gateway CPU µs/req", "facilitator server", "anvil"], cpu_rows
    )
    out += [
        "Gateway CPU per paid request minus per free request (remote facilitator; the "
        "in-process one adds the facilitator's own work): "
        + ", ".join(
            f"{label}: {_fmt(v['gateway_cpu_paid_minus_free_us'])} µs"
            for label, v in variants.items()
        ),
        "",
    ]
    out += [
        "Gateway's own share of a paid request (`gw` p50 @1) minus what it adds to a free "
        "request (section A, p50 over the origin): "
        + ", ".join(
            f"{label}: {_fmt(v.get('gw_share_p50_us'))} - "
            f"{_fmt(v.get('free_gateway_added_p50_us_wrk'))} = "
            f"**{_fmt(v.get('gw_minus_free_added_p50_us'))} µs**"
            for label, v in variants.items()
        ),
        "",
    ]
    out += [
        "Target: the gateway's own share of a paid request (total - verify - settle, or the "
        "`gw` Server-Timing entry) ≤ 150 µs above a free request at p50.",
        "",
    ]
    return out


def _memory(c: dict[str, Any]) -> list[str]:
    out = ["## C. Memory while a large body passes", "", *_status(c)]
    runs = c.get("runs", {})
    if c.get("params"):
        p = c["params"]
        out += [
            f"Body {p['body_mib']} MiB; slow reader capped at {p['slow_mb_per_s']} MB/s; "
            "VmRSS of the proxy's process tree sampled every 50 ms.",
            "",
        ]
    rows = [
        [
            proxy,
            reader,
            r.get("status"),
            r.get("bytes"),
            r.get("mb_per_s"),
            r.get("rss_before_mib"),
            r.get("rss_peak_mib"),
            r.get("growth_mib"),
            r.get("rss_after_mib"),
        ]
        for proxy, readers in runs.items()
        for reader, r in readers.items()
    ]
    if rows:
        out += _table(
            [
                *("proxy", "reader", "status", "bytes", "MB/s"),
                *("RSS before", "RSS peak", "growth MiB", "RSS after"),
            ],
            rows,
        )
    for note in c.get("notes", []):
        out += [f"- {note}"]
    out += ["", "Target: peak RSS growth ≤ 16 MiB.", ""]
    return out


def _routes(d: dict[str, Any]) -> list[str]:
    out = ["## D. Route table", "", *_status(d)]
    rows = [
        [kind, r.get("10"), r.get("10000"), r.get("ratio")]
        for kind, r in d.get("kinds", {}).items()
    ]
    if rows:
        out += _table(["kind", "ns/match @10", "ns/match @10,000", "ratio"], rows)
    out += ["Target: ratio ≤ 1.05x.", ""]
    return out


def _repeat(e: dict[str, Any]) -> list[str]:
    if not e:
        return []
    out = ["## E. Repeat calls (SIWX window, payment channel)", "", *_status(e)]
    kinds = e.get("kinds", {})
    if not kinds:
        return out
    out.append(
        "One gateway (the redis row: a second one on a redis-server store; the floor rows: "
        "bench/floor_voucher.py), one client, one "
        "request at a time; µs as p50 / p99; gateway CPU per request from /proc; facilitator "
        "transactions counted on chain during each batch."
    )
    out.append("")
    header = ["kind", "ok/requests", "latency", "gateway CPU µs/req", "txs"]
    rows = [
        [
            kind,
            f"{k['ok']}/{k['requests']}",
            _dist(k["latency_us"]),
            _fmt(k["gateway_cpu_us_per_request"]),
            _fmt(k["facilitator_txs"]),
        ]
        for kind, k in kinds.items()
    ]
    out += _table(header, rows)
    out += [
        "",
        f"SIWX sign-in minus free at p50: {_fmt(e.get('siwx_minus_free_p50_us'))} µs "
        f"(target ≤ {_fmt(e.get('target_us'))} µs: {'met' if e.get('met') else 'not met'})",
        "",
    ]
    if e.get("siwx_redis_minus_free_p50_us") is not None:
        out += [
            "SIWX sign-in on a redis store (one round trip) minus free at p50: "
            f"{_fmt(e.get('siwx_redis_minus_free_p50_us'))} µs",
            "",
        ]
    steps = [
        f"{kind}: " + ", ".join(f"{n} {_dist(d)}" for n, d in k["server_timing_us"].items())
        for kind, k in kinds.items()
        if k.get("server_timing_us")
    ]
    if steps:
        out += ["Gateway steps (Server-Timing, µs p50 / p99): " + "; ".join(steps), ""]
    if "channel_minus_free_p50_us" in e:
        met = "met" if e.get("channel_met") else "not met"
        out += [
            f"Channel voucher minus free at p50: {_fmt(e.get('channel_minus_free_p50_us'))} µs "
            f"(target ≤ {_fmt(e.get('target_us'))} µs: {met})",
            "",
        ]
    if e.get("channel_redis_minus_free_p50_us") is not None:
        out += [
            "Channel voucher on a redis store (the full path: claim, channel compare-and-set "
            f"and records in Redis) minus free at p50: "
            f"{_fmt(e.get('channel_redis_minus_free_p50_us'))} µs",
            "",
        ]
    if e.get("channel_floor_minus_free_p50_us") is not None:
        out += [
            "The floor's voucher minus the floor's free at p50 (bench/floor_voucher.py: a minimal "
            "proxy doing only what a voucher needs, same run): "
            f"{_fmt(e.get('channel_floor_minus_free_p50_us'))} µs",
            "",
        ]
    return out


def _engine(e: dict[str, Any]) -> list[str]:
    from bench.paid_engine import table_lines

    out = ["## F. Paid throughput: SDK facilitator vs settlement engine", "", *_status(e)]
    if e.get("cells"):
        out += [*table_lines(e), ""]
    out += [
        "Targets: engine >= 10x sdk-http at c=32 on automine; p50 about one block with 1 s "
        "blocks; zero double charges and zero unpaid 200s.",
        "",
    ]
    return out


def _remote_verify(g: dict[str, Any]) -> list[str]:
    from bench.remote_verify import table_lines

    out = ["## G. verify: local vs verify: facilitator, facilitator 50 ms away", "", *_status(g)]
    if g.get("cells"):
        out += [*table_lines(g), ""]
    out += [
        "Target: verify: local cuts p50 by one facilitator round trip (about 100 ms here);"
        " zero double charges and zero unpaid 200s.",
        "",
    ]
    return out


def markdown(results: dict[str, Any]) -> str:
    m = results["machine"]
    sections = results["sections"]
    lines = [
        "# x402 gateway benchmark",
        "",
        f"- date: {results['date']} (took {results['seconds']:.0f} s)",
        f"- command: `{results['command']}` ({results['profile']})",
        f"- machine: {m['nproc']} CPUs, {m['cpu_model']}, Linux {m['kernel']}, "
        f"Python {m['python']}, load average at start {' '.join(m['loadavg_at_start'])}",
        f"- gateway commit: {results.get('git', '-')}",
        "",
        "Every ratio and split below comes from this one run (shared machines are noisy; "
        "absolute figures move between runs, ratios much less).",
        "",
    ]
    lines += _free(sections.get("A", {}))
    lines += _paid(sections.get("B", {}))
    lines += _memory(sections.get("C", {}))
    lines += _routes(sections.get("D", {}))
    lines += _repeat(sections.get("E", {}))
    lines += _engine(sections.get("F", {}))
    lines += _remote_verify(sections.get("G", {}))
    return "\n".join(lines) + "\n"


def write(results: dict[str, Any], directory: Path = RESULTS) -> tuple[Path, Path]:
    """latest.json/.md, and the same as latest-quick.* or latest-full.* (so a quick run
    does not hide the last full one)."""
    directory.mkdir(parents=True, exist_ok=True)
    as_json, as_md = directory / "latest.json", directory / "latest.md"
    text, md = json.dumps(results, indent=2, default=str) + "\n", markdown(results)
    for stem in ("latest", f"latest-{results['profile']}"):
        (directory / f"{stem}.json").write_text(text)
        (directory / f"{stem}.md").write_text(md)
    return as_json, as_md
