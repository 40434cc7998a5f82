"""A generation's payment work off the request path: what the facilitators support (read at
start, retried until known) and the background reconciling of dead holders' claims."""

from __future__ import annotations

import asyncio
import random

from x402 import x402ResourceServer

from gateway.config.settings import RouteSettings
from gateway.errors import StoreUnavailable
from gateway.observe.logs import get_logger
from gateway.payment.facilitator import Facilitator
from gateway.payment.recovery import Reconciler, reconcile_recent
from gateway.payment.requirements import completed, incomplete, requirement_v2

log = get_logger("gateway.payments")

# The background reconciler: every ~30 s (jittered: replicas out of step), the newest records.
RECONCILE_EVERY = 30.0
RECONCILE_RECENT = 1000


class Supported:
    """What the facilitators support, and whether it is known yet (`ready`)."""

    def __init__(self, facilitator: Facilitator, server: x402ResourceServer) -> None:
        self.facilitator = facilitator
        self.server = server
        self.ready = False

    async def refresh(self) -> list[str]:
        errors = await self.facilitator.refresh_supported()
        if self.facilitator.get_supported().kinds:
            # Non-blocking here: our facilitator clients answer get_supported() from a cache.
            self.server.initialize()
            self.ready = True
        return errors

    async def keep_refreshing(self, interval: float = 5.0) -> None:
        """Until /supported has been read once, retry in the background."""
        while not self.ready:
            await asyncio.sleep(interval)
            errors = await self.refresh()
            if errors:
                log.warning("facilitator_supported_failed", errors=errors)

    def unsupported(self, routes: tuple[RouteSettings, ...]) -> list[str]:
        """Routes no facilitator can take payment for: one line each."""
        supported = self.facilitator.get_supported()
        kinds = {(k.scheme, k.network) for k in supported.kinds}
        return [
            f"routes[{r.index}] {r.path}: no facilitator supports {req.scheme} on {req.network}"
            for r in routes
            for req in r.accepts
            if (req.scheme, req.network) not in kinds
        ] + [
            f"routes[{r.index}] {r.path}: {req.scheme} on {req.network} is not offered: no "
            "receiver authorizer (set channels.authorizer_key, or use a facilitator that "
            "advertises one)"
            for r in routes
            for req in r.accepts
            if (req.scheme, req.network) in kinds
            and incomplete(completed(requirement_v2(req), supported))
        ]


async def keep_reconciling(reconciler: Reconciler, interval: float, limit: int) -> None:
    """Resolve what dead holders left in flight among the newest records, without waiting
    for a retry. Bounded reads of the history stream, never a SCAN; an older stale claim is
    still resolved by the first request that meets it."""
    while True:
        await asyncio.sleep(interval * (0.5 + random.random()))  # noqa: S311  jitter
        try:
            await reconcile_recent(reconciler, limit)
        except StoreUnavailable as exc:
            log.warning("reconcile_store_unavailable", error=exc.detail)
