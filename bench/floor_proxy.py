"""The Python floor: the least a well-written aiohttp + uvloop streaming reverse proxy costs.

One pooled ClientSession, no decompression, request and response bodies streamed both ways,
hop-by-hop headers stripped, no access log. The gateway's free route is compared with this.

    python -m bench.floor_proxy --listen 127.0.0.1:8081 --upstream http://127.0.0.1:8080
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Callable

import aiohttp
import uvloop
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

# RFC 9110 7.6.1: meaningful for one connection only, never forwarded.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
CHUNK = 64 * 1024

# What a floor with a paywall checks before forwarding (bench/floor_voucher.py): the request's
# headers, to change in place; it returns the answer's extra headers, or the answer itself.
Gate = Callable[[CIMultiDict[str]], "dict[str, str] | web.Response"]


def end_to_end(headers: CIMultiDict[str] | CIMultiDictProxy[str]) -> CIMultiDict[str]:
    """A copy of headers without hop-by-hop ones (and without those `Connection` names)."""
    named = {
        token.strip().lower()
        for value in headers.getall("Connection", ())
        for token in value.split(",")
    }
    out: CIMultiDict[str] = CIMultiDict()
    for key, value in headers.items():
        low = key.lower()
        if low not in HOP_BY_HOP and low not in named:
            out.add(key, value)
    return out


def make_app(upstream: str, gate: Gate | None = None) -> web.Application:
    upstream = upstream.rstrip("/")
    app = web.Application()

    async def session_ctx(app: web.Application) -> object:
        connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=None, keepalive_timeout=60)
        session = aiohttp.ClientSession(
            connector=connector,
            auto_decompress=False,
            skip_auto_headers=("User-Agent", "Accept-Encoding", "Accept"),
            timeout=aiohttp.ClientTimeout(total=None, connect=5, sock_read=60),
        )
        app["session"] = session
        yield
        await session.close()

    async def handle(request: web.Request) -> web.StreamResponse:
        session: aiohttp.ClientSession = request.app["session"]
        headers = end_to_end(request.headers)
        headers.pop("Host", None)
        extra = gate(headers) if gate is not None else {}
        if isinstance(extra, web.Response):
            return extra
        body = request.content if request.body_exists else None
        async with session.request(
            request.method,
            upstream + request.raw_path,
            headers=headers,
            data=body,
            allow_redirects=False,
        ) as upstream_resp:
            response = web.StreamResponse(
                status=upstream_resp.status,
                reason=upstream_resp.reason,
                headers=end_to_end(upstream_resp.headers),
            )
            response.headers.update(extra)
            if upstream_resp.content_length is not None:
                response.content_length = upstream_resp.content_length
            await response.prepare(request)
            # iter_any hands over whatever arrived: one write for a small body, and
            # TCP back-pressure (not a buffer) for a big one read by a slow client.
            async for chunk in upstream_resp.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
            return response

    app.cleanup_ctx.append(session_ctx)
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


def main(
    gate: Gate | None = None, about: str | None = None, listen: str = "127.0.0.1:8081"
) -> None:
    """Serve the floor (with `gate`, a paywall's floor: bench/floor_voucher.py)."""
    parser = argparse.ArgumentParser(description=about or __doc__.splitlines()[0])
    parser.add_argument("--listen", default=listen)
    parser.add_argument("--upstream", required=True)
    args = parser.parse_args()
    host, _, port = args.listen.rpartition(":")
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    web.run_app(
        make_app(args.upstream, gate),
        host=host,
        port=int(port),
        access_log=None,
        print=None,
        handle_signals=True,
        backlog=4096,
    )


if __name__ == "__main__":
    main()
