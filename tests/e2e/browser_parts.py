"""A page on another origin that pays with `@x402/fetch` in headless Chromium (issue 12 item 4).

- `bundle()`: esbuild (from npm, installed by scripts/setup.sh) bundles
  tests/e2e/browser/pay_page.mjs with @x402/fetch, @x402/evm and viem for the page; nothing is
  downloaded at test time.
- `PageServer`: serves that page from its own port, on `localhost` (another site than the
  gateway's 127.0.0.1), with the paid URL and an anvil test account's key in it.
- `AllowOriginProxy`: forwards everything to the gateway and adds only
  `Access-Control-Allow-Origin` where an answer lacks it (the one header the gateway's own
  answers are missing today), or (`strip=True`) removes it from every 402: a page that pays
  through the first and not through the second shows that this header is the reason.
- `drive()`: tests/e2e/browser/drive.mjs opens the page in Debian's chromium through
  playwright-core and returns what the page saw.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from tests.e2e.gateway_proc import ThreadedApp

ROOT = Path(__file__).resolve().parents[2]
BROWSER_DIR = Path(__file__).with_name("browser")
ESBUILD = ROOT / "node_modules" / ".bin" / "esbuild"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
HOP_BY_HOP = frozenset({"connection", "keep-alive", "transfer-encoding", "content-length"})


def missing_tools() -> str | None:
    """Why the browser tests cannot run here (scripts/setup.sh --test installs all of it)."""
    if shutil.which("node") is None:
        return "node is not installed"
    if not Path(CHROMIUM).exists():
        return f"chromium is not installed at {CHROMIUM}"
    for part in ("esbuild", "playwright-core", "@x402/fetch", "@x402/evm", "viem"):
        if not (ROOT / "node_modules" / part).is_dir():
            return f"npm package {part} is missing: run scripts/setup.sh --test"
    return None


def bundle(out_dir: Path) -> Path:
    """The paying page's script, bundled for the browser (esbuild, well under a second)."""
    out = out_dir / "pay_page.js"
    subprocess.run(
        [
            str(ESBUILD),
            str(BROWSER_DIR / "pay_page.mjs"),
            "--bundle",
            "--format=iife",
            "--platform=browser",
            "--target=chrome120",
            "--log-level=warning",
            f"--outfile={out}",
        ],
        cwd=ROOT,
        check=True,
        capture_output=True,
        timeout=120,
    )
    return out


class PageServer(ThreadedApp):
    """GET / is the paying page (its config inline), GET /pay_page.js its bundled script."""

    def __init__(self, script: Path, config: dict[str, str]) -> None:
        super().__init__()
        self.script = script
        self.config = config

    @property
    def url(self) -> str:
        return f"http://localhost:{self.port}/"

    def app(self) -> web.Application:
        page = (
            "<!doctype html><html><head><meta charset='utf-8'><title>shop</title></head><body>"
            "<pre id='result'>paying...</pre>"
            f"<script>window.X402_TEST = {json.dumps(self.config)};</script>"
            "<script src='/pay_page.js'></script></body></html>"
        )

        async def index(_: web.Request) -> web.Response:
            return web.Response(text=page, content_type="text/html")

        async def script(_: web.Request) -> web.FileResponse:
            return web.FileResponse(self.script)

        app = web.Application()
        app.router.add_get("/", index)
        app.router.add_get("/pay_page.js", script)
        return app


class AllowOriginProxy(ThreadedApp):
    """Relays every request to `target` and adds `Access-Control-Allow-Origin: <Origin>` to
    an answer without one, or (`strip`) drops it from every 402. Nothing else: no preflight
    of its own, no other header."""

    def __init__(self, target: str, *, strip: bool = False) -> None:
        super().__init__()
        self.target = target.rstrip("/")
        self.strip = strip
        self.changed: list[str] = []  # "METHOD path status" of the answers it changed

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._relay)
        return app

    async def _relay(self, request: web.Request) -> web.Response:
        headers = {k: v for k, v in request.headers.items() if k.lower() != "host"}
        async with (
            aiohttp.ClientSession(auto_decompress=False) as http,
            http.request(
                request.method,
                self.target + request.raw_path,
                headers=headers,
                data=await request.read(),
                allow_redirects=False,
            ) as resp,
        ):
            body = await resp.read()
            out = [(k, v) for k, v in resp.headers.items() if k.lower() not in HOP_BY_HOP]
        origin = request.headers.get("Origin")
        allowed = "access-control-allow-origin" in {k.lower() for k, _ in out}
        if self.strip and allowed and resp.status == 402:
            out = [(k, v) for k, v in out if k.lower() != "access-control-allow-origin"]
            self.changed.append(f"{request.method} {request.raw_path} {resp.status}")
        elif not self.strip and origin and not allowed:
            out.append(("Access-Control-Allow-Origin", origin))
            self.changed.append(f"{request.method} {request.raw_path} {resp.status}")
        answer = web.Response(status=resp.status, body=body)
        for name, value in out:
            answer.headers.add(name, value)
        return answer


def drive(page_url: str, profile: Path, timeout_ms: int = 30_000) -> dict[str, Any]:
    """Open the page in headless Chromium; what it left in window.x402Result, its console
    and its requests."""
    done = subprocess.run(
        ["node", str(BROWSER_DIR / "drive.mjs"), page_url, str(profile), str(timeout_ms)],
        cwd=ROOT,
        capture_output=True,
        timeout=timeout_ms / 1000 + 60,
        env={**os.environ, "CHROMIUM": CHROMIUM},
        check=False,
    )
    lines = done.stdout.decode().strip().splitlines()
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"drive.mjs failed ({done.returncode}): {done.stderr.decode()[-2000:]}")
    seen: dict[str, Any] = json.loads(lines[-1])
    return seen
