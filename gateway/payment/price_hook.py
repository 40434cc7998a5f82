"""The price hook client: POST {method, path, query, headers} as JSON to the owner's pricing
service, read {"price": "$0.003"} (or "free") back. Bounded and timed; anything else than a
200 with that JSON is `PriceUnavailable` (the route then fails closed)."""

from __future__ import annotations

import asyncio
import json

import aiohttp

from gateway.config.settings import PriceHook
from gateway.errors import PriceUnavailable
from gateway.payment.prices import PriceQuery

MAX_ANSWER = 4096


class HttpPriceSource:
    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=64), raise_for_status=False
            )
        return self._session

    async def ask(self, hook: PriceHook, query: PriceQuery) -> str:
        body = {
            "method": query.method,
            "path": query.path,
            "query": query.query,
            "headers": dict(query.headers),
        }
        try:
            async with asyncio.timeout(hook.timeout):
                async with self._client().post(hook.url, json=body) as answer:
                    if answer.status != 200:
                        raise PriceUnavailable(f"the price hook answered {answer.status}")
                    raw = await answer.content.read(MAX_ANSWER + 1)
        except TimeoutError:
            raise PriceUnavailable(f"the price hook took longer than {hook.timeout:g}s") from None
        except aiohttp.ClientError as exc:
            raise PriceUnavailable(f"the price hook is unreachable: {type(exc).__name__}") from None
        return _price_of(raw)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


def _price_of(raw: bytes) -> str:
    if len(raw) > MAX_ANSWER:
        raise PriceUnavailable("the price hook's answer is too long")
    try:
        answer = json.loads(raw)
    except ValueError:
        raise PriceUnavailable("the price hook's answer is not JSON") from None
    price = answer.get("price") if isinstance(answer, dict) else None
    if not isinstance(price, str):
        raise PriceUnavailable('the price hook\'s answer has no "price" string')
    return price
