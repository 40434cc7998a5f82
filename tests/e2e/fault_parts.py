"""Real parts the replica and fault tests kill on purpose: an origin in its own process, SDK
facilitators in their own processes, and a facilitator relay that can stop the gateway
between a settlement and its answer. Every process is stopped by its pid.

The origin process is tests/e2e/_fault_origin.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import selectors
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import httpx
from aiohttp import web

from tests.e2e.conftest import Chain
from tests.e2e.gateway_proc import GatewayProcess, ThreadedApp
from tests.procs import free_port, stop, wait_port

PRICE = 1000  # "$0.001" in the 6-decimal test USDC


def gateway_config(
    chain: Chain, upstream: str, pay_to: str, facilitator: Any, store: str, **extra: Any
) -> dict[str, Any]:
    return {
        "upstream": upstream,
        "facilitator": facilitator,
        "network": chain.network,
        "pay_to": pay_to,
        "asset": {"address": chain.token, "name": "USD Coin", "version": "2", "decimals": 6},
        "store": store,
        "routes": [
            {"path": "/free/*", "price": "free"},
            {"path": "/paid/*", "price": "$0.001"},
        ],
        **extra,
    }


# --- the origin, in its own process ----------------------------------------------------


class OriginProcess:
    """The origin as a process of its own, so that a test can SIGKILL it mid-request."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self._hits: list[str] = []
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> OriginProcess:
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name("_fault_origin.py")), str(self.port)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        wait_port(self.port, 20, self.proc)
        threading.Thread(target=self._read, args=(self.proc,), daemon=True).start()
        return self

    def _read(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            with self._lock:
                self._hits.append(json.loads(line)["hit"])

    def hits(self, path: str) -> int:
        with self._lock:
            return self._hits.count(path)

    def wait_hit(self, path: str, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while self.hits(path) == 0:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the origin never saw {path}")
            time.sleep(0.01)

    def stop(self, sig: int = 15) -> None:
        if self.proc is not None:
            stop(self.proc, sig)
            if self.proc.stdout is not None:
                self.proc.stdout.close()


# --- SDK facilitators in their own processes ----------------------------------------------


class FacilitatorProcess:
    """`python -m gateway.demo.facilitator_server` signing with `key` (an anvil account)."""

    def __init__(self, chain: Chain, key: str) -> None:
        self.chain = chain
        self.key = key
        self.url = ""
        self.proc: subprocess.Popen[bytes] | None = None

    def spawn(self) -> FacilitatorProcess:
        argv = [sys.executable, "-m", "gateway.demo.facilitator_server"]
        argv += ["--rpc-url", self.chain.rpc_url, "--private-key-env", "FAULT_FACILITATOR_KEY"]
        argv += ["--port", "0", "--network", self.chain.network]
        self.proc = subprocess.Popen(
            argv,
            env={**os.environ, "FAULT_FACILITATOR_KEY": self.key},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        return self

    def wait(self, timeout: float = 60) -> FacilitatorProcess:
        assert self.proc is not None and self.proc.stdout is not None
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            if not sel.select(timeout):
                raise TimeoutError("facilitator server did not start")
        self.url = json.loads(self.proc.stdout.readline())["listening"]
        return self

    def stop(self, sig: int = 15) -> None:
        if self.proc is not None:
            stop(self.proc, sig)
            if self.proc.stdout is not None:
                self.proc.stdout.close()


# --- a relay in front of a facilitator -----------------------------------------------------


class FacilitatorRelay(ThreadedApp):
    """Forwards /verify, /settle, /supported to a real facilitator. After the real /settle
    has answered, and before that answer is relayed, it calls `after_settle` (the test
    SIGKILLs the gateway there): the settlement is on chain, the gateway never hears of it."""

    def __init__(
        self,
        target: str,
        after_settle: Callable[[], None],
        before: Callable[[str], float] | None = None,
    ) -> None:
        super().__init__()
        self.target = target.rstrip("/")
        self.after_settle = after_settle
        self.before = before  # seconds to hold each call (by op) before relaying it
        self.settled: list[dict[str, Any]] = []
        self.calls: list[str] = []  # every op relayed, in order

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{op}", self._relay)
        return app

    async def _relay(self, request: web.Request) -> web.StreamResponse:
        op = request.match_info["op"]
        self.calls.append(op)
        body = await request.read()  # sent whole: a caller that dies now has still asked
        if self.before is not None:
            await asyncio.sleep(self.before(op))
        async with (
            aiohttp.ClientSession() as http,
            http.request(
                request.method,
                f"{self.target}/{op}",
                data=body,
                headers={"Content-Type": "application/json"},
            ) as resp,
        ):
            body, status = await resp.read(), resp.status
        if op == "settle":
            self.settled.append(json.loads(body))
            await asyncio.get_running_loop().run_in_executor(None, self.after_settle)
        return web.Response(body=body, status=status, content_type="application/json")


# --- small helpers ---------------------------------------------------------------------


@contextlib.contextmanager
def running(*parts: Any) -> Iterator[None]:
    """Stop every part on the way out, whatever happened (each by its own pid)."""
    try:
        yield
    finally:
        for part in reversed(parts):
            part.stop()


def ready(gw: GatewayProcess) -> tuple[int, dict[str, Any]]:
    r = httpx.get(gw.admin_url + "/readyz", timeout=5)
    return r.status_code, r.json()


def wait_ready_state(gw: GatewayProcess, want: int, timeout: float = 15) -> dict[str, Any]:
    """Poll /readyz until it answers `want`; its last body."""
    deadline = time.monotonic() + timeout
    while True:
        status, body = ready(gw)
        if status == want:
            return body
        if time.monotonic() > deadline:
            raise TimeoutError(f"/readyz stayed {status}: {body}")
        time.sleep(0.1)


def payments_cli(gw: GatewayProcess, fmt: str = "jsonl", limit: int = 100) -> str:
    exe = str(Path(sys.executable).with_name("x402-gateway"))
    argv = [
        exe,
        "payments",
        "--config",
        str(gw.config_path),
        "--format",
        fmt,
        "--limit",
        str(limit),
    ]
    out = subprocess.run(argv, check=False, capture_output=True, timeout=30)
    assert out.returncode == 0, out.stderr.decode()
    return out.stdout.decode()
