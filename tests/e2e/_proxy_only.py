"""A minimal gateway for the proxy's end-to-end tests: `gateway.proxy` and nothing else.

    python tests/e2e/_proxy_only.py CONFIG.yaml

Reads `listen` and `upstream` from a config in the gateway's shape, and proxies every
request with `Upstream.send()` + `relay()`, the way the real request flow does for a free
route. The memory test measures this process until `x402-gateway serve` replaces it.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from pathlib import Path

import uvloop
import yaml
from aiohttp import web

from gateway.errors import GatewayError
from gateway.proxy import Upstream, relay
from gateway.settings import Address, Settings

UPSTREAM = web.AppKey("upstream", Upstream)
BASE = web.AppKey("base", str)


def load(path: Path) -> Settings:
    raw = yaml.safe_load(path.read_text())
    host, _, port = str(raw["listen"]).rpartition(":")
    return Settings(
        source=str(path),
        listen=Address(host.strip("[]"), int(port)),
        upstream=str(raw["upstream"]),
        routes=(),
    )


async def handle(request: web.Request) -> web.StreamResponse:
    upstream = request.app[UPSTREAM]
    rel = request.rel_url
    try:
        resp = await upstream.send(
            request,
            base_url=request.app[BASE],
            path=rel.raw_path,
            query=rel.raw_query_string,
        )
    except GatewayError as exc:
        return web.Response(status=exc.status, text=exc.detail)
    return await relay(request, resp)


def make_app(settings: Settings) -> web.Application:
    app = web.Application()
    app[BASE] = settings.upstream
    app[UPSTREAM] = Upstream(settings)

    async def pool(app: web.Application) -> AsyncIterator[None]:
        await app[UPSTREAM].start()
        yield
        await app[UPSTREAM].close()

    app.cleanup_ctx.append(pool)
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


def main() -> None:
    settings = load(Path(sys.argv[1]))
    web.run_app(
        make_app(settings),
        host=settings.listen.host,
        port=settings.listen.port,
        access_log=None,
        print=None,
        loop=uvloop.new_event_loop(),
    )


if __name__ == "__main__":
    main()
