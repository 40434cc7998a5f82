"""`python -m bench.gateway_calls` (issue 13 item 5): Python calls per request inside the
gateway, free and `exact` paid, counted by cProfile (deterministic: the cleanest signal of
progress on a shared, noisy machine, where CPU/request moves by ±20 % between runs).

The environment of `bench.gateway_cpu` (anvil, the test USDC, `x402-gateway facilitator`,
an origin in this process), one gateway started under cProfile: this module is its entry
point too (`--serve`), profiling from SIGUSR1 to SIGUSR2. One warm-up batch, then N free
requests and N paid ones (each a fresh payment signed before the batch), each batch
profiled on its own. Prints calls/request and the functions whose call counts differ most
between free and paid; `--keep DIR` writes the two pstats files there (for `pstats` or a
diff between two trees: `--source` runs another tree's gateway package, as `--baseline`).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import os
import pstats
import signal
import sys
import tempfile
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import FrameType
from typing import Any

import yaml

from bench import gateway_cpu as gc
from bench.paid_engine import Variant as Target
from bench.paid_engine import send, sign
from bench.procs import ProcGroup, free_port
from gateway.demo import chain as chainlib


def _ours(filename: str) -> bool:
    return "/gateway/" in filename and "site-packages" not in filename


class Stages:
    """Python function calls (C calls apart) counted by the innermost gateway function on
    the stack above each one: what every step of the gateway costs, its libraries' calls
    (the SDK, aiohttp, cachetools, prometheus...) included."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def hook(self, frame: FrameType, event: str, _arg: Any) -> None:
        if event != "call":
            return
        caller = frame.f_back
        while caller is not None and not _ours(caller.f_code.co_filename):
            caller = caller.f_back
        if caller is None:
            self.counts["(the event loop, no gateway function above)"] += 1
        else:
            code = caller.f_code
            self.counts[f"{code.co_filename.rsplit('/gateway/', 1)[-1]}:{code.co_name}"] += 1


def serve_profiled(argv: list[str]) -> int:
    """The gateway (`x402-gateway serve ...`), profiled (`profiled`)."""

    def serve() -> int:
        from gateway.cli import main  # after the handlers: serve() never returns

        sys.argv = ["x402-gateway", *argv]
        return main()

    return profiled(serve)


def profiled(serve: Callable[[], int]) -> int:
    """`serve()` (a server that runs until stopped), profiled between SIGUSR1 and SIGUSR2;
    each profile written to $GATEWAY_CALLS_OUT.N (N = 0, 1, ...): cProfile's pstats, or with
    $GATEWAY_CALLS_STAGES set, the `Stages` counts as JSON."""
    out, state = os.environ["GATEWAY_CALLS_OUT"], {"n": 0}
    prof = cProfile.Profile()
    stages = Stages() if os.environ.get("GATEWAY_CALLS_STAGES") else None

    def start(*_: Any) -> None:
        if stages is None:
            prof.enable()
        else:
            stages.counts.clear()
            sys.setprofile(stages.hook)

    def stop(*_: Any) -> None:
        if stages is None:
            prof.disable()
            prof.dump_stats(f"{out}.{state['n']}")
            prof.clear()
        else:
            sys.setprofile(None)
            Path(f"{out}.{state['n']}").write_text(json.dumps(stages.counts))
        state["n"] += 1

    signal.signal(signal.SIGUSR1, start)
    signal.signal(signal.SIGUSR2, stop)
    return serve()


def per_request(path: Path, n: int) -> dict[str, int]:
    """Calls per function (`name (file:line)`) in one profile, summed over its requests."""
    out: dict[str, int] = {}
    for (file, line, name), (_, calls, *_rest) in pstats.Stats(str(path)).stats.items():
        where = file.split("site-packages/")[-1].split("/gateway/", 1)[-1]
        out[f"{name} ({where}:{line})"] = calls
    return out


async def measure(args: argparse.Namespace, out: Path, log: Any) -> list[Path]:
    workdir = Path(tempfile.mkdtemp(prefix="bench-gateway-calls-"))
    group = ProcGroup(workdir)
    anvil = chainlib.start_anvil()
    runner, upstream = await gc.start_origin()
    try:
        local = await asyncio.to_thread(chainlib.prepare_chain, anvil.rpc_url)
        fac_url, _ = await asyncio.to_thread(gc.start_facilitator, group, local.rpc_url)
        cfg = gc.base_config(local, upstream, fac_url, args, args.verify)
        port, admin = free_port(), free_port()
        pay_to = str(chainlib.new_account().address)
        path = workdir / "gateway.yaml"
        full = {"listen": f"127.0.0.1:{port}", "admin": f"127.0.0.1:{admin}", **cfg}
        path.write_text(yaml.safe_dump(full | {"pay_to": pay_to}, sort_keys=False))
        # This file as a script: `--source`'s tree may have no bench/gateway_calls.py.
        root = Path(__file__).resolve().parent.parent
        trees = [str(args.source)] if args.source is not None else []
        env = {"GATEWAY_CALLS_OUT": str(out), "PYTHONPATH": os.pathsep.join([*trees, str(root)])}
        if args.stages:
            env["GATEWAY_CALLS_STAGES"] = "1"
        argv = [sys.executable, str(Path(__file__).resolve()), "--serve", "--config", str(path)]
        proc = group.start("gateway", argv, port=port, env=env, timeout=60.0)
        target = Target("gateway", f"http://127.0.0.1:{port}", pay_to, {"gateway": proc.pid})
        each = max(1, args.requests // args.payers)
        with ThreadPoolExecutor(8) as pool:
            payers = list(
                pool.map(lambda _: local.new_payer(2_000 * (each + 2)), range(args.payers))
            )
        await send(target.url, await sign(target, local, payers[:4]), 4)  # warm: paid
        signed = await gc.sign_many(target, local, payers, each)
        await gc.free_cpu(target, len(signed), args.concurrency, 0.0)  # warm: free
        files = []
        for n, kind in enumerate(("free", "paid")):
            os.kill(proc.pid, signal.SIGUSR1)
            await asyncio.sleep(0.3)
            if kind == "free":
                done = await gc.free_cpu(target, len(signed), args.concurrency, 0.0)
            else:
                done = await gc.batch(target, signed, args.concurrency, 0.0)
            os.kill(proc.pid, signal.SIGUSR2)
            await asyncio.sleep(1.0)
            if set(done["statuses"]) != {200}:
                raise RuntimeError(f"{kind}: statuses {done['statuses']}")
            files.append(Path(f"{out}.{n}"))
            log(f"{kind}: {done['requests']} requests, all 200")
        return files
    finally:
        await runner.cleanup()
        group.close()
        anvil.stop()


def report(files: list[Path], n: int, top: int, stages: bool = False) -> str:
    if stages:
        free, paid = (json.loads(f.read_text()) for f in files)
        what = "Python-level calls per request, by the gateway function they run under"
        column = "gateway function (its own calls and its libraries')"
    else:
        free, paid = (per_request(f, n) for f in files)
        what = "Python calls per request (cProfile: C calls included)"
        column = "function"
    lines = [
        f"{what} ({n} each): free {sum(free.values()) / n:.1f}, paid {sum(paid.values()) / n:.1f}",
        f"free/req  paid/req  {column}, largest paid - free first",
    ]
    names = sorted(set(free) | set(paid), key=lambda k: free.get(k, 0) - paid.get(k, 0))
    for name in names[:top]:
        lines.append(f"{free.get(name, 0) / n:8.1f}  {paid.get(name, 0) / n:8.1f}  {name}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--serve"]:
        return serve_profiled(["serve", *argv[1:]])
    parser = argparse.ArgumentParser(prog="python -m bench.gateway_calls")
    parser.add_argument("--requests", type=int, default=300, help="free, then paid")
    parser.add_argument("--payers", type=int, default=30)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--log-level", default="warning")
    parser.add_argument(
        "--verify", default="facilitator", choices=("facilitator", "local", "local-offline")
    )
    parser.add_argument("--source", type=Path, help="another tree's gateway package")
    parser.add_argument("--keep", type=Path, help="write the pstats files here")
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument(
        "--stages", action="store_true", help="count by gateway function (Stages), not cProfile"
    )
    args = parser.parse_args(argv)
    keep = args.keep or Path(tempfile.mkdtemp(prefix="gateway-calls-"))
    keep.mkdir(parents=True, exist_ok=True)
    files = asyncio.run(measure(args, keep / "calls", lambda m: print(m, flush=True)))
    n = (args.requests // args.payers) * args.payers
    print(report(files, n, args.top, args.stages))
    return 0


if __name__ == "__main__":
    sys.exit(main())
