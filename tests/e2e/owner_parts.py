"""Real parts for the API-owner features (issue 16): a relay in front of the real SDK
facilitator that counts every call it passes on, so a test can show what cost a
facilitator call and what did not."""

from __future__ import annotations

import threading
from collections import Counter

import aiohttp
from aiohttp import web

from tests.e2e.gateway_proc import ThreadedApp


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
