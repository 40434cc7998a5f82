"""One generation of the gateway's parts: what a generation's requests share, and how its
parts are closed (built by gateway/composition.py, swapped by gateway/reload.py, served by
gateway/app.py)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from x402.mechanisms.evm.batch_settlement.server import ChannelStorage

from gateway.config.settings import Settings
from gateway.observe.metrics import Metrics
from gateway.payment.challenge import PreparedChallenges
from gateway.payment.channel_service import ClaimService
from gateway.payment.engine import Payments
from gateway.payment.limits import RateLimiter
from gateway.payment.prices import Prices
from gateway.payment.retries import Retries
from gateway.payment.sessions import Sessions
from gateway.proxy.cors import CorsPolicy
from gateway.proxy.routes import RouteTable
from gateway.proxy.upstream import Upstream
from gateway.serving.state import InFlight
from gateway.store.channels import close_channel_storage

PAYMENT_HEADERS = ("PAYMENT-SIGNATURE", "X-PAYMENT")

Close = Callable[[], Awaitable[None]]


@dataclass(frozen=True, slots=True, eq=False)
class Generation:
    """Everything one generation's requests share."""

    settings: Settings
    routes: RouteTable
    challenges: PreparedChallenges
    upstream: Upstream
    payments: Payments
    metrics: Metrics
    drop_headers: tuple[str, ...]
    cors: CorsPolicy  # the `cors:` policy of the gateway's own answers
    generation: int
    refresher: asyncio.Task[None]
    limiter: RateLimiter
    prices: Prices
    retries: Retries
    users: InFlight = dataclasses.field(default_factory=InFlight)  # its requests in flight
    sessions: Sessions | None = None  # SIWX sign-in, when a route has `access`
    claims: ClaimService | None = None  # the channel claim schedule (issue 14)

    def shared_parts(self) -> list[tuple[object, Close]]:
        """(part, close) for each part a generation may share with another, in closing
        order. Each part is its own entry, closed once no live generation lists it
        (gateway/reload.py): the channels (their hook threads) go with the payments that
        hold them, the channel storage only once neither these nor a claim schedule of any
        live generation reads it."""
        payments, claims = self.payments, self.claims
        channels = payments.channels
        return [
            *([(claims, claims.close)] if claims is not None else []),
            (self.refresher, canceller(self.refresher)),
            (self.upstream, self.upstream.close),
            (payments.facilitator, payments.facilitator.close),
            *([(channels, channels.close)] if channels is not None else []),
            (payments.store, payments.store.close),
            *([(chain, chain.close)] if (chain := payments.chain) is not None else []),
            (self.prices, self.prices.close),
            *[(storage, storage_closer(storage)) for storage in self.channel_storages()],
        ]

    def channel_storages(self) -> list[ChannelStorage]:
        """The channel storage(s) this generation reads: its channels', its reconciler's
        and its claim schedule's (one object when it has them all)."""
        charges = self.payments.reconciler.channels
        found = [
            *([channels.storage] if (channels := self.payments.channels) is not None else []),
            *([charges.storage] if charges is not None else []),
            *([claims.scheduler.storage] if (claims := self.claims) is not None else []),
        ]
        return list({id(storage): storage for storage in found}.values())


def storage_closer(storage: ChannelStorage) -> Close:
    async def close() -> None:
        await close_channel_storage(storage)

    return close


def canceller(task: asyncio.Task[None]) -> Close:
    async def cancel() -> None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    return cancel
