"""Real parts for the API-owner features (issue 16): a relay in front of the real SDK
facilitator that counts every call it passes on, so a test can show what cost a
facilitator call and what did not."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

import aiohttp
from aiohttp import web

from tests.e2e.gateway_proc import ThreadedApp
from tests.procs import free_port, stop, wait_port


class CountingRelay(ThreadedApp):
    """Passes /verify, /settle, /supported to a real facilitator and counts them."""

    def __init__(self, target: str) -> None:
        super().__init__()
        self.target = target.rstrip("/")
        self._counts: Counter[str] = Counter()
        self._lock = threading.Lock()

    def count(self, op: str) -> int:
        with self._lock:
            return self._counts[op]

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{op}", self._relay)
        return app

    async def _relay(self, request: web.Request) -> web.Response:
        op = request.match_info["op"]
        with self._lock:
            self._counts[op] += 1
        async with (
            aiohttp.ClientSession() as http,
            http.request(
                request.method,
                f"{self.target}/{op}",
                data=await request.read(),
                headers={"Content-Type": "application/json"},
            ) as resp,
        ):
            body, status = await resp.read(), resp.status
        return web.Response(body=body, status=status, content_type="application/json")


class Pricer(ThreadedApp):
    """The API owner's pricing service: answers `price` (settable) to every hook call and
    records what the gateway asked; `status` other than 200 plays a broken service."""

    def __init__(self, price: str) -> None:
        super().__init__()
        self.price = price
        self.status = 200
        self.asked: list[dict[str, object]] = []

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/price", self._price)
        return app

    async def _price(self, request: web.Request) -> web.Response:
        self.asked.append(await request.json())
        if self.status != 200:
            return web.Response(status=self.status)
        return web.json_response({"price": self.price})


class McpOrigin:
    """tests/e2e/_mcp_origin.py in its own process; `calls` are the tool calls it ran."""

    def __init__(self, json_response: bool = False) -> None:
        self.port = free_port()
        self.json_response = json_response
        self.proc: subprocess.Popen[bytes] | None = None
        self.calls: list[str] = []
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> McpOrigin:
        argv = [sys.executable, str(Path(__file__).with_name("_mcp_origin.py")), str(self.port)]
        self.proc = subprocess.Popen(
            argv + (["json"] if self.json_response else []),
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        wait_port(self.port, 30, self.proc)
        threading.Thread(target=self._read, args=(self.proc,), daemon=True).start()
        return self

    def _read(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            with contextlib.suppress(ValueError):
                tool = json.loads(line)["tool"]
                with self._lock:
                    self.calls.append(tool)

    def called(self, tool: str) -> int:
        with self._lock:
            return self.calls.count(tool)

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc)
            if self.proc.stdout is not None:
                self.proc.stdout.close()
