"""A real gateway process (`x402-gateway serve`) and a real origin for the end-to-end tests."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import yaml
from aiohttp import web

from tests.procs import free_port, stop, wait_port

GATEWAY = str(Path(sys.executable).with_name("x402-gateway"))


@dataclass
class OriginLog:
    """What the origin saw: the tests assert on it (calls, headers, bodies)."""

    calls: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, **call: Any) -> None:
        with self.lock:
            self.calls.append(call)

    def for_path(self, path: str) -> list[dict[str, Any]]:
        with self.lock:
            return [c for c in self.calls if c["path"] == path]


def origin_app(log: OriginLog) -> web.Application:
    """A legacy API that knows nothing about payments."""

    async def record(request: web.Request) -> web.StreamResponse:
        digest = hashlib.sha256()
        size = 0
        async for chunk in request.content.iter_any():
            digest.update(chunk)
            size += len(chunk)
        log.add(
            path=request.path,
            raw_path=request.raw_path,
            method=request.method,
            headers=dict(request.headers),
            body_sha256=digest.hexdigest(),
            body_size=size,
        )
        name = request.match_info["name"]
        if name == "fail":
            return web.json_response({"error": "origin broke"}, status=500)
        if name == "notfound":
            return web.json_response({"error": "no such thing"}, status=404)
        if name == "slow":
            await asyncio.sleep(float(request.query.get("s", "3")))
        if name == "big":
            n = int(request.query.get("bytes", str(1 << 20)))
            resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
            resp.content_length = n
            await resp.prepare(request)
            block = b"x" * (64 << 10)
            while n > 0:
                await resp.write(block[: min(n, len(block))])
                n -= min(n, len(block))
            await resp.write_eof()
            return resp
        return web.json_response(
            {
                "ok": True,
                "path": request.path,
                "payer": request.headers.get("X-Payer"),
                "body_sha256": digest.hexdigest(),
                "body_size": size,
            }
        )

    app = web.Application(client_max_size=0)
    app.router.add_route("*", "/{prefix:[^/]+}/{name}", record)
    app.router.add_route("*", "/{name}", record)
    return app


class ThreadedApp:
    """An aiohttp app served on its own loop in a thread, so it keeps serving while a test
    blocks (on a subprocess, a chain call, a sync client)."""

    def __init__(self) -> None:
        self.port = free_port()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def app(self) -> web.Application:
        raise NotImplementedError

    def start(self) -> Self:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    async def _start(self) -> None:
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


class Origin(ThreadedApp):
    """The legacy origin (see origin_app), recording what it saw in `log`."""

    def __init__(self) -> None:
        super().__init__()
        self.log = OriginLog()

    def app(self) -> web.Application:
        return origin_app(self.log)


class GatewayProcess:
    def __init__(
        self, config: dict[str, Any], tmp: Path, env: dict[str, str] | None = None
    ) -> None:
        self.port = free_port()
        self.admin_port = free_port()
        config = {
            "listen": f"127.0.0.1:{self.port}",
            "admin": f"127.0.0.1:{self.admin_port}",
            **config,
        }
        self.config_path = tmp / f"gateway-{self.port}.yaml"
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        self.log_path = tmp / f"gateway-{self.port}.log"
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def start(self, ready: bool = True) -> GatewayProcess:
        with self.log_path.open("wb") as out:
            self.proc = subprocess.Popen(
                [GATEWAY, "serve", "--config", str(self.config_path)],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.env,
            )
        wait_port(self.port, 20, self.proc)
        if ready:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with (
                contextlib.suppress(OSError),
                urllib.request.urlopen(self.admin_url + "/readyz", timeout=2) as r,
            ):
                if r.status == 200:
                    return
            time.sleep(0.1)
        raise TimeoutError(f"gateway not ready; log:\n{self.logs()}")

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int:
        return stop(self.proc) if self.proc is not None else 0


@contextlib.contextmanager
def gateway(
    config: dict[str, Any], tmp: Path, *, ready: bool = True, **kw: Any
) -> Iterator[GatewayProcess]:
    gw = GatewayProcess(config, tmp, **kw).start(ready=ready)
    try:
        yield gw
    finally:
        gw.stop()
