"""The claim schedule as a part of a running gateway: made from settings, run as a background
task, stopped by letting a round in flight finish (issue 14, claims).

It runs wherever channels may exist: when a route takes `channel:` payments, and whenever
the store is shared (Redis), since channels served under an older config (a route since
removed by a reload, or another replica's) are still owed to the receiver.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from x402.mechanisms.evm.batch_settlement.authorizer_signer import LocalAuthorizerSigner
from x402.mechanisms.evm.batch_settlement.server import ChannelStorage

from gateway.config.settings import Settings
from gateway.observe.channel_metrics import ChannelMetrics
from gateway.observe.logs import get_logger
from gateway.payment.channel_claims import ClaimPolicy
from gateway.payment.channel_scheduler import ClaimScheduler
from gateway.payment.facilitator import Facilitator
from gateway.store.claim_lock import ClaimLock
from gateway.store.redis_url import parse_redis_url

log = get_logger("gateway.channels")


@dataclass(eq=False)
class ClaimService:
    scheduler: ClaimScheduler
    task: asyncio.Task[None]
    lock: ClaimLock
    settings_key: tuple[object, ...]

    async def close(self) -> None:
        """Stop the schedule (after a round in flight); the storage stays open (its opener
        closes it: gateway/composition.py)."""
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task
        await self.scheduler.wait_idle()


def wanted(settings: Settings) -> bool:
    """Whether this gateway may hold channels to claim: a channel route, or a store channels
    can live in (one Redis server; a Sentinel or Cluster store holds none: the config refuses
    channel routes on one)."""
    if any(r.channel is not None for r in settings.routes):
        return True
    return settings.store != "memory" and parse_redis_url(settings.store).kind == "single"


def schedule_warnings(settings: Settings) -> list[str]:
    """What in the config puts served vouchers at risk (for `check` and the start-up log)."""
    channels = settings.channels
    routes = any(r.channel is not None for r in settings.routes)
    found = []
    if routes and channels.claim_every * 3 > channels.withdraw_delay:
        found.append(
            f"channels.claim_every ({channels.claim_every:g}s) is more than a third of "
            f"withdraw_delay ({channels.withdraw_delay}s): vouchers served near the end of a "
            "payer's withdrawal may not be claimed before it can be finalized"
        )
    if routes and settings.store == "memory":
        found.append(
            "store: memory keeps channel state in this process: vouchers served and not yet "
            "claimed are lost if it dies (use redis:// for channels that survive a restart)"
        )
    return found


def claim_networks(settings: Settings) -> list[str]:
    """Every EVM network the config names: a channel is claimed on the one it lives on."""
    named = {settings.network, *settings.networks}
    named |= {req.network for route in settings.routes for req in route.accepts}
    return sorted(n for n in named if n.startswith("eip155:"))


def settings_key(settings: Settings) -> tuple[object, ...]:
    """What the schedule is made of: a reload that changes none of it keeps the schedule."""
    return (settings.channels, tuple(claim_networks(settings)), _decimals(settings))


def start_claims(
    settings: Settings,
    storage: ChannelStorage,
    facilitator: Facilitator,
    lock: ClaimLock,
    metrics: ChannelMetrics | None,
) -> ClaimService:
    """A started schedule (must be called on the running loop)."""
    for problem in schedule_warnings(settings):
        log.warning("channels_config", problem=problem)
    scheduler = make_scheduler(settings, storage, facilitator, lock, metrics)
    task = asyncio.create_task(scheduler.run(), name="channel-claims")
    return ClaimService(scheduler, task, lock, settings_key(settings))


def make_scheduler(  # noqa: PLR0913  the schedule's parts; metrics and logger optional
    settings: Settings,
    storage: ChannelStorage,
    facilitator: Facilitator,
    lock: ClaimLock,
    metrics: ChannelMetrics | None = None,
    *,
    logger: Any = None,
) -> ClaimScheduler:
    channels = settings.channels
    key = channels.authorizer_key
    return ClaimScheduler(
        storage=storage,
        facilitator=facilitator,
        lock=lock,
        policy=ClaimPolicy(every=channels.claim_every, over=channels.claim_over),
        networks=claim_networks(settings),
        authorizer=LocalAuthorizerSigner(key) if key is not None else None,
        decimals=decimals_of(settings),
        metrics=metrics,
        logger=logger,
    )


def decimals_of(settings: Settings) -> Callable[[str, str], int]:
    found = dict(_decimals(settings))
    return lambda network, token: found.get((network, token.lower()), 6)


def _decimals(settings: Settings) -> tuple[tuple[tuple[str, str], int], ...]:
    """(network, token) -> decimals, from the priced routes (USDC's 6 for any other)."""
    found = {
        (req.network, req.asset.lower()): req.decimals
        for route in settings.routes
        for req in route.accepts
    }
    return tuple(sorted(found.items()))
