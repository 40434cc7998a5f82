"""Request rates per payer and per client IP (`limits: {per_payer: 10/s, per_ip: 100/m}`).

Checked before anything is verified, so a flood costs no facilitator call: the IP before
the payment is even read; the payer (the address in the payment, once it matched the route's
own requirements locally) before the claim. The top-level rates count every priced route
against one bucket per payer / IP; a route's own `limits` add buckets of its own. All the
buckets of one check are taken in one store call (one Redis round trip), all or none.
"""

from __future__ import annotations

import datetime
import ipaddress
import time

from gateway.config.settings import Rate, Requirement, RouteSettings, Settings
from gateway.errors import ConfigError, StoreUnavailable, TooManyRequests
from gateway.observe.logs import get_logger
from gateway.proxy.headers import is_trusted
from gateway.store.buckets import Bucket, TokenBuckets, retry_after
from gateway.store.spend import SpendCounters

log = get_logger("gateway.limits")
MICRO_DECIMALS = 6
DAY = 86400

PREFIX = "x402:rate"


def _bucket(key: str, rate: Rate) -> Bucket:
    return Bucket(key, rate.per_second, rate.count)


def client_ip(peer: str | None, forwarded_for: list[str], settings: Settings) -> str:
    """The client's IP: the direct peer, or, behind proxies we trust, the last address in
    `X-Forwarded-For` that is not one of them (what a client writes there itself is further
    left and never believed)."""
    trusted = settings.trusted_proxies
    ip = peer or "unknown"
    if not is_trusted(peer, trusted):
        return ip
    hops = [h.strip() for value in forwarded_for for h in value.split(",") if h.strip()]
    for hop in reversed(hops):
        try:
            ipaddress.ip_address(hop)
        except ValueError:
            return ip  # garbage in the chain: count it against the last proxy we trust
        ip = hop
        if not is_trusted(hop, trusted):
            return hop
    return ip


class RateLimiter:
    """Who may send how many requests; the token arithmetic lives in the store."""

    def __init__(
        self,
        settings: Settings,
        buckets: TokenBuckets | None,
        spend: SpendCounters | None = None,
    ) -> None:
        self.rates = settings.limits.rates
        self.buckets = buckets
        self.spend = spend if self.rates.daily_spend else None
        self.enabled = self.rates.any or any(r.rate_limits.any for r in settings.routes)
        if self.enabled and buckets is None:
            raise ConfigError(["limits: this store cannot count request rates"])
        if self.rates.daily_spend and spend is None:
            raise ConfigError(["limits.daily_spend: this store cannot count spending"])

    def _for(self, route: RouteSettings, ip: str, payer: str | None) -> list[Bucket]:
        own, found = route.rate_limits, []
        here = f"{PREFIX}:route:{route.path}:{','.join(sorted(route.methods or ()))}"
        if own.per_ip is not None:
            found.append(_bucket(f"{here}:ip:{ip}", own.per_ip))
        if payer is not None and own.per_payer is not None:
            found.append(_bucket(f"{here}:payer:{payer.lower()}", own.per_payer))
        if route.free:
            return found
        if self.rates.per_ip is not None:
            found.append(_bucket(f"{PREFIX}:ip:{ip}", self.rates.per_ip))
        if payer is not None and self.rates.per_payer is not None:
            found.append(_bucket(f"{PREFIX}:payer:{payer.lower()}", self.rates.per_payer))
        return found

    async def check(
        self,
        route: RouteSettings,
        ip: str,
        payer: str | None = None,
        requirement: Requirement | None = None,
    ) -> None:
        """Count this request; `TooManyRequests` (429, `Retry-After`) when over a rate, or
        when the payment (`requirement`, the terms it matched) would pass the daily cap."""
        if not self.enabled or self.buckets is None:
            return
        if payer is not None and requirement is not None:
            await self.check_spend(payer, requirement, time.time())
        buckets = self._for(route, ip, payer)
        if not buckets:
            return
        wait = await self.buckets.take_tokens(buckets)
        if wait > 0:
            who = "this payer" if payer is not None else "this client"
            raise TooManyRequests(
                f"{who} is over its request rate; retry after {wait:.2f}s", retry_after(wait)
            )

    # --- daily spend per payer ----------------------------------------------------------

    async def check_spend(self, payer: str, req: Requirement, now: float) -> None:
        """429 when this payment would take the payer over `daily_spend` today (UTC).
        Counted after settlement, so payments in flight at once may overshoot by as many
        as the payer's rate lets through."""
        cap, price = self.rates.daily_spend, _micro(req)
        if self.spend is None or cap is None or price is None:
            return
        spent = await self.spend.spent(_spend_key(payer, now))
        if spent + price > cap:
            left = DAY - int(now) % DAY
            raise TooManyRequests(
                f"this payer has spent ${spent / 10**MICRO_DECIMALS:g} of its "
                f"${cap / 10**MICRO_DECIMALS:g} today (UTC)",
                left,
                reason="daily_spend_reached",
            )

    async def count_spend(self, payer: str, req: Requirement, now: float) -> None:
        """Add a settled payment to the payer's day; never fails the paid response."""
        if self.spend is None:
            return  # no `daily_spend`: nothing to count (nor a price to work out)
        price = _micro(req)
        if price is None:
            return
        try:
            await self.spend.add_spent(_spend_key(payer, now), price, 2 * DAY)
        except StoreUnavailable as exc:
            log.error("spend_not_counted", payer=payer, amount=price, error=exc.detail)


def _micro(req: Requirement) -> int | None:
    """A stablecoin price in millionths of a dollar; None for a token of unknown decimals."""
    if req.symbol == req.asset:
        return None
    scale: int = req.decimals - MICRO_DECIMALS
    factor: int = 10 ** abs(scale)
    return req.amount // factor if scale >= 0 else req.amount * factor


def _spend_key(payer: str, now: float) -> str:
    day = datetime.datetime.fromtimestamp(now, tz=datetime.UTC).strftime("%Y%m%d")
    return f"{PREFIX}:spend:{payer.lower()}:{day}"
