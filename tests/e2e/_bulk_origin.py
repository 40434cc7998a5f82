"""An origin for the proxy's memory test: makes and swallows bytes without keeping them.

    python tests/e2e/_bulk_origin.py PORT

GET /download?bytes=N   N bytes with a Content-Length, written from one reused block
POST /upload            reads the body as it comes, answers {"received": n, "chunks": k}
"""

from __future__ import annotations

import sys

import uvloop
from aiohttp import web

BLOCK = bytes(range(256)) * 1024  # 256 KiB, not all zeros so nothing can compress it away


async def download(request: web.Request) -> web.StreamResponse:
    size = int(request.query["bytes"])
    resp = web.StreamResponse()
    resp.content_length = size
    resp.content_type = "application/octet-stream"
    await resp.prepare(request)
    view = memoryview(BLOCK)
    left = size
    while left > 0:
        n = min(left, len(BLOCK))
        await resp.write(view[:n])
        left -= n
    await resp.write_eof()
    return resp


async def upload(request: web.Request) -> web.Response:
    received = chunks = 0
    while chunk := await request.content.readany():
        received += len(chunk)
        chunks += 1
    return web.json_response({"received": received, "chunks": chunks})


def main() -> None:
    app = web.Application()
    app.router.add_get("/download", download)
    app.router.add_post("/upload", upload)
    web.run_app(
        app,
        host="127.0.0.1",
        port=int(sys.argv[1]),
        access_log=None,
        print=None,
        loop=uvloop.new_event_loop(),
    )


if __name__ == "__main__":
    main()
