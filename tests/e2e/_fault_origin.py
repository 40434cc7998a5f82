"""An origin the fault tests can SIGKILL: its own process, one line on stdout per request.

    python tests/e2e/_fault_origin.py PORT

Any path answers 200 JSON, printing {"hit": path} first. `?s=N` waits N seconds before
answering; `?drip=N` sends the headers and a first chunk at once and the rest of the body
N seconds later (so a test can act after the gateway settled and before the body ends).
"""

from __future__ import annotations

import asyncio
import json
import sys

import uvloop
from aiohttp import web


async def answer(request: web.Request) -> web.StreamResponse:
    print(json.dumps({"hit": request.path}), flush=True)
    await asyncio.sleep(float(request.query.get("s", "0")))
    drip = float(request.query.get("drip", "0"))
    resp = web.StreamResponse(headers={"Content-Type": "application/json"})
    await resp.prepare(request)
    await resp.write(b'{"ok": true, ')
    await asyncio.sleep(drip)
    await resp.write(json.dumps({"path": request.path}).encode()[1:])
    await resp.write_eof()
    return resp


def main(port: int) -> None:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    # No drain: a test that stops the origin means it gone at once, in-flight requests and all.
    web.run_app(
        app,
        host="127.0.0.1",
        port=port,
        print=None,
        shutdown_timeout=0.1,
        loop=uvloop.new_event_loop(),
    )


if __name__ == "__main__":
    main(int(sys.argv[1]))
