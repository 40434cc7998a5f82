"""The durable claim schedule for batch-settlement channels (issue 14, claims).

Every few seconds the schedule reads the channel storage (the SDK's `ChannelStorage`: Redis
when the store is, shared by every replica), works out which targets are due
(`gateway.payment.channel_claims`), and, holding the claim lock (`gateway.store.claim_lock`:
one replica at a time), claims them through the SDK's `BatchSettlementChannelManager` and
then settles the claimed funds to the receiver. The storage is the whole schedule: a
gateway restarted after a SIGKILL claims every voucher it served on its first round.

A failed claim or settle is retried with backoff; nothing is dropped. A settle is owed from
just before a claim is sent until a settle succeeds (or finds nothing to settle): that is a
mark in the lock's store, so a crash between the claim and the settle still settles.

The SDK's manager runs off the gateway's event loop (`gateway.payment.channel_bridge`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from x402.mechanisms.evm.batch_settlement.authorizer_signer import AuthorizerSigner
from x402.mechanisms.evm.batch_settlement.errors import ERR_NOTHING_TO_SETTLE
from x402.mechanisms.evm.batch_settlement.server import (
    BatchSettlementChannelManager,
    Channel,
    ChannelStorage,
    ClaimOptions,
    RefundResult,
)
from x402.mechanisms.evm.batch_settlement.server.channel_manager_common import (
    AutoSettlementContext,
)
from x402.mechanisms.evm.batch_settlement.utils import normalize_channel_id

from gateway.errors import GatewayError
from gateway.observe.channel_metrics import ChannelMetrics
from gateway.observe.logs import get_logger
from gateway.payment.channel_bridge import off_loop, sdk_manager
from gateway.payment.channel_claims import (
    BACKOFF_BASE,
    BACKOFF_CAP,
    ClaimPolicy,
    Due,
    Grouper,
    Target,
    asked,
    atomic,
    due,
    unclaimed,
)
from gateway.payment.facilitator import Facilitator
from gateway.store.backoff import Backoff
from gateway.store.claim_lock import ClaimLock, Lease, keep_renewing

log = get_logger("gateway.channels")

LEASE = 30.0  # seconds a claim round holds the lock between renewals (renewed every 10 s)
MAX_TICK = 5.0  # the storage is read at least this often (claim_over, withdrawals)
STOP_WAIT = 60.0  # a round in flight at shutdown gets this long to finish its transactions
# A claim or settle the facilitator refused, or that could not reach it or the store.
CLAIM_ERRORS = (RuntimeError, GatewayError)


@dataclass(frozen=True, slots=True)
class Outcome:
    """One target's claim (and settle) in a round, for the CLI and the tests."""

    target: Target
    reason: str
    vouchers: int = 0
    amount: int = 0
    claims: tuple[str, ...] = ()  # claim transactions
    settle: str | None = None  # the settle transaction
    error: str | None = None


@dataclass
class ClaimScheduler:
    storage: ChannelStorage
    facilitator: Facilitator
    lock: ClaimLock
    policy: ClaimPolicy
    networks: Sequence[str]
    authorizer: AuthorizerSigner | None = None  # None: the facilitator signs the claims
    decimals: Callable[[str, str], int] = lambda _network, _token: 6
    metrics: ChannelMetrics | None = None
    clock: Callable[[], float] = time.time
    logger: Any = None  # None: the gateway's log ("gateway.channels")
    _grouper: Grouper = field(init=False)
    _retries: dict[Target, Backoff] = field(default_factory=dict, init=False)
    _managers: dict[Target, BatchSettlementChannelManager] = field(default_factory=dict, init=False)
    _first_seen: dict[Target, float] = field(default_factory=dict, init=False)
    _round: asyncio.Task[list[Outcome]] | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self._grouper = Grouper(self.networks)
        self._log = self.logger if self.logger is not None else log

    @property
    def interval(self) -> float:
        return max(0.05, min(MAX_TICK, self.policy.every / 4))

    # --- life ---------------------------------------------------------------------------

    async def run(self) -> None:
        """Claim what is due, forever (a background task; cancel to stop)."""
        while True:
            try:
                await self.tick()
            except CLAIM_ERRORS as exc:  # the store could not be read: next tick
                self._log.warning("channels_round_failed", error=str(exc))
            await asyncio.sleep(self.interval)

    async def tick(self) -> list[Outcome]:
        """One round, shielded: a cancelled caller does not cut a claim transaction short."""
        self._round = asyncio.ensure_future(self._tick())
        return await asyncio.shield(self._round)

    async def wait_idle(self, limit: float = STOP_WAIT) -> None:
        """Let a round in flight end (its claim and settle transactions)."""
        if self._round is not None and not self._round.done():
            with contextlib.suppress(TimeoutError, *CLAIM_ERRORS):  # logged by the round
                async with asyncio.timeout(limit):
                    await asyncio.shield(self._round)

    # --- a round --------------------------------------------------------------------------

    async def _tick(self) -> list[Outcome]:
        groups = await self._groups()
        marks = await self.lock.marks()
        if not self._planned(groups, marks):
            return []
        done = await self._locked(lambda lease, fresh: self._claim_due(lease, groups, fresh))
        return done or []  # None: another replica is claiming them

    async def claim_now(self, only: frozenset[str] | None = None) -> list[Outcome] | None:
        """Claim every owing channel now (or the named ones), then settle: `channels claim`.
        None: another process holds the claim lock (a gateway's round: try again)."""
        groups = await self._groups()
        picked = [d for t, chs in sorted(groups.items()) if (d := asked(t, chs, only))]

        async def work(lease: Lease, _marks: dict[str, str]) -> list[Outcome]:
            return [await self._claim(lease, d) for d in picked]

        return await self._locked(work)

    async def refund(self, channel_ids: Sequence[str]) -> list[RefundResult] | None:
        """Cooperative refund (the SDK's: claims what is owed, returns the rest to the payer
        and forgets the channel), for channels an operator closes. None: lock busy."""
        wanted = {normalize_channel_id(i) for i in channel_ids}
        groups = await self._groups()
        results: list[RefundResult] = []

        async def work(lease: Lease, _marks: dict[str, str]) -> list[Outcome]:
            for target, channels in sorted(groups.items()):
                ids = [c.channel_id for c in channels if _id(c) in wanted]
                if ids and await self.lock.held(lease):
                    results.extend(await off_loop(self._manager(target).refund(ids)))
            return []

        if await self._locked(work) is None:
            return None
        return results

    async def _groups(self) -> dict[Target, list[Channel]]:
        channels = await asyncio.to_thread(self.storage.list)
        groups, strays = self._grouper.group(channels)
        if strays:
            self._log.warning("channels_unknown_network", channels=len(strays))
        if self.metrics is not None:
            self.metrics.owed([_row(t, chs) for t, chs in groups.items()], len(strays))
        return groups

    def _planned(self, groups: dict[Target, list[Channel]], marks: dict[str, str]) -> list[Due]:
        now = self.clock()
        planned = []
        for target, channels in sorted(groups.items()):
            if self._retry(target).wait_left(now):
                continue
            found = due(
                target,
                channels,
                now_ms=int(now * 1000),
                last_claim_ms=self._last_claim_ms(target, marks, now),
                over_atomic=atomic(self.policy.over, self.decimals(target.network, target.token)),
                every=self.policy.every,
            )
            if found is None and f"{target.key}|settle" in marks:
                found = Due(target, frozenset(), "settle", 0)  # a settle still owed
            if found is not None:
                planned.append(found)
        return planned

    async def _claim_due(
        self, lease: Lease, groups: dict[Target, list[Channel]], marks: dict[str, str]
    ) -> list[Outcome]:
        # Planned again with the marks read under the lock: another replica may have just
        # claimed these targets.
        return [await self._claim(lease, d) for d in self._planned(groups, marks)]

    async def _locked(
        self,
        work: Callable[[Lease, dict[str, str]], Awaitable[list[Outcome]]],
    ) -> list[Outcome] | None:
        """`work` holding the lock; None when another replica holds it."""
        lease = await self.lock.acquire(LEASE)
        if lease is None:
            return None
        lost = asyncio.Event()
        renewer = asyncio.create_task(keep_renewing(self.lock, lease, lost))
        try:
            return await work(lease, await self.lock.marks())
        finally:
            renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewer
            with contextlib.suppress(*CLAIM_ERRORS):
                await self.lock.release(lease)

    async def _claim(self, lease: Lease, plan: Due) -> Outcome:
        target, retry = plan.target, self._retry(plan.target)
        outcome = Outcome(target, plan.reason)
        try:
            if plan.channel_ids:
                outcome = await self._send_claims(lease, plan)
            if outcome.error is None:
                outcome = await self._settle(lease, outcome)
        except CLAIM_ERRORS as exc:
            delay = retry.failed(self.clock(), str(exc))
            self._log.warning(
                "channels_claim_failed", target=target.key, error=str(exc), retry_in=delay
            )
            if not outcome.claims:
                self._count_claim("failed", plan.reason)
            return dataclasses.replace(outcome, error=str(exc))
        retry.succeeded()
        return outcome

    async def _send_claims(self, lease: Lease, plan: Due) -> Outcome:
        target = plan.target
        if not await self.lock.held(lease):
            return Outcome(target, plan.reason, error="claim lock lost")
        # Owed before the claim is sent: a crash right after it still settles next time.
        await self.lock.mark(lease, f"{target.key}|settle", "1")
        chosen = plan.channel_ids

        def select(channels: list[Channel], _ctx: AutoSettlementContext) -> list[Channel]:
            return [c for c in channels if _id(c) in chosen]

        results = await off_loop(
            self._manager(target).claim(ClaimOptions(select_claim_channels=select))
        )
        await self.lock.mark(lease, f"{target.key}|claimed", str(int(self.clock() * 1000)))
        vouchers = sum(r.vouchers for r in results)
        self._log.info(
            "channels_claimed",
            target=target.key,
            reason=plan.reason,
            vouchers=vouchers,
            amount=plan.amount,
            transactions=[r.transaction for r in results],
        )
        if self.metrics is not None and results:
            self._count_claim("claimed", plan.reason, len(results))
            self.metrics.claimed_vouchers.labels(target.network, target.token).inc(vouchers)
            self.metrics.claimed.labels(target.network, target.token).inc(plan.amount)
            self.metrics.last_claim.set(self.clock())
        return Outcome(
            target,
            plan.reason,
            vouchers=vouchers,
            amount=plan.amount if results else 0,
            claims=tuple(r.transaction for r in results),
        )

    async def _settle(self, lease: Lease, outcome: Outcome) -> Outcome:
        target = outcome.target
        try:
            done = await off_loop(self._manager(target).settle())
        except RuntimeError as exc:
            if ERR_NOTHING_TO_SETTLE not in str(exc):
                if self.metrics is not None:
                    self.metrics.settles.labels("failed").inc()
                raise
            transaction = None  # settled already (by another round, or anyone: settle is open)
        else:
            transaction = done.transaction
            self._log.info("channels_settled", target=target.key, transaction=transaction)
            if self.metrics is not None:
                self.metrics.settles.labels("settled").inc()
        await self.lock.mark(lease, f"{target.key}|settle", None)
        return dataclasses.replace(outcome, settle=transaction)

    # --- the SDK's manager -----------------------------------------------------------------

    def _manager(self, target: Target) -> BatchSettlementChannelManager:
        manager = self._managers.get(target)
        if manager is None:
            manager = sdk_manager(target, self.storage, self.authorizer, self.facilitator)
            self._managers[target] = manager
        return manager

    def _last_claim_ms(self, target: Target, marks: dict[str, str], now: float) -> int:
        """When the target was last claimed; never: when this process first saw it (so a
        new channel's first voucher waits `claim_every` like the others)."""
        mark = marks.get(f"{target.key}|claimed")
        if mark is not None:
            return int(mark)
        return int(self._first_seen.setdefault(target, now) * 1000)

    def _retry(self, target: Target) -> Backoff:
        """A target's failures in a row: the next attempt waits longer each time (jittered,
        capped); one success resets it. A failed claim is never dropped, only delayed."""
        return self._retries.setdefault(target, Backoff(BACKOFF_BASE, BACKOFF_CAP))

    def _count_claim(self, outcome: str, reason: str, transactions: int = 1) -> None:
        if self.metrics is not None:
            self.metrics.claims.labels(outcome, reason).inc(transactions)


def _row(target: Target, channels: list[Channel]) -> tuple[tuple[str, str, str], int, int, int]:
    owed = sum(unclaimed(c) for c in channels)
    withdrawing = sum(1 for c in channels if c.withdraw_requested_at > 0)
    return (target.network, target.receiver, target.token), owed, len(channels), withdrawing


def _id(channel: Channel) -> str:
    return normalize_channel_id(channel.channel_id)
