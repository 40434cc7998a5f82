"""Dynamic prices: each request's price on a route with a price hook or `price_by` rules.

The resolved route is a copy whose one requirement carries this request's amount: the 402
announces it, and a payment is matched against it exactly, so a price that changed between
the challenge and the payment is a clean 402 with the new price (never a charge at a price
nobody announced). Hook answers are kept per (method, path, query, selected headers) for the
hook's `cache` time, and one hook call serves every request waiting on the same key. A hook
that is down, slow or wrong fails closed (503; nothing is forwarded).
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal, localcontext
from typing import Protocol
from urllib.parse import parse_qs

from cachetools import TTLCache

from gateway import formats
from gateway.config.settings import PriceHook, RouteSettings
from gateway.errors import PriceUnavailable

CACHE_SIZE = 10_000


@dataclass(frozen=True, slots=True)
class PriceQuery:
    """What a hook is told about a request (and what its answer is kept under)."""

    method: str
    path: str  # canonical
    query: str  # raw
    headers: tuple[tuple[str, str], ...]  # the hook's selected headers, lowercase names


class PriceSource(Protocol):
    async def ask(self, hook: PriceHook, query: PriceQuery) -> str:
        """The price text the hook answers ("$0.003" or "free"); `PriceUnavailable` else."""

    async def close(self) -> None: ...


def atomic(text: str, decimals: int) -> int | None:
    """A price as written ("$0.003", "free") in atomic units; None: free."""
    if text.strip().lower() == "free":
        return None
    dollars = formats.parse_usd(text)
    with localcontext() as ctx:
        ctx.prec = 78
        units = dollars.scaleb(decimals)
        if units != units.to_integral_value():
            raise ValueError(f"{formats.quote(text)} is finer than the token's {decimals} decimals")
    return int(units) if units <= Decimal(2**256 - 1) else _too_big(text)


def _too_big(text: str) -> int:
    raise ValueError(f"{formats.quote(text)} is too large")


def with_amount(route: RouteSettings, amount: int | None) -> RouteSettings:
    """The route at this price: its one requirement with `amount`; free when None."""
    if amount is None:
        return dataclasses.replace(route, accepts=(), price_hook=None, price_by=())
    (template,) = route.accepts
    return dataclasses.replace(route, accepts=(dataclasses.replace(template, amount=amount),))


def by_rules(route: RouteSettings, query: str, headers: Mapping[str, str]) -> RouteSettings:
    """The first `price_by` rule whose value matches picks the price; else the route's own."""
    params = parse_qs(query, keep_blank_values=True) if query else {}
    for rule in route.price_by:
        if rule.source == "query":
            values = params.get(rule.name)
            value = values[0] if values else None
        else:
            value = headers.get(rule.name)
        if value is not None and value in rule.cases:
            return with_amount(route, rule.cases[value])
    return route


class Prices:
    """Resolves dynamic routes; one per generation (its cache and its hook client)."""

    def __init__(self, source: PriceSource, cache_size: int = CACHE_SIZE) -> None:
        self.source = source
        self._caches: dict[int, TTLCache[PriceQuery, str]] = {}
        self._waiting: dict[tuple[int, PriceQuery], asyncio.Future[str]] = {}
        self._cache_size = cache_size

    async def resolve(
        self,
        route: RouteSettings,
        method: str,
        path: str,
        query: str,
        headers: Mapping[str, str],
    ) -> RouteSettings:
        """The route at this request's price (a static route is returned as it is)."""
        if route.price_by:
            return by_rules(route, query, headers)
        hook = route.price_hook
        if hook is None:
            return route
        asked = PriceQuery(
            method, path, query, tuple((h, headers.get(h, "")) for h in hook.headers)
        )
        text = await self._price_text(route.index, hook, asked)
        try:
            amount = atomic(text, route.accepts[0].decimals)
        except ValueError as exc:
            raise PriceUnavailable(f"the price hook answered no price: {exc}") from None
        return with_amount(route, amount)

    async def _price_text(self, index: int, hook: PriceHook, asked: PriceQuery) -> str:
        cache = self._caches.get(index)
        if cache is None and hook.cache > 0:
            cache = self._caches[index] = TTLCache(maxsize=self._cache_size, ttl=hook.cache)
        if cache is not None and (hit := cache.get(asked)) is not None:
            return hit
        key = (index, asked)
        if (pending := self._waiting.get(key)) is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._waiting[key] = future
        try:
            text = await self.source.ask(hook, asked)
        except Exception as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: no "never retrieved" warning when nobody waited
            raise
        except BaseException:
            future.cancel()
            raise
        finally:
            del self._waiting[key]
        future.set_result(text)
        if cache is not None:
            cache[asked] = text
        return text

    async def close(self) -> None:
        await self.source.close()
