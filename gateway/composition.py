"""The composition root: one generation of the gateway's parts, built from settings.

A `Generation` is everything one config's requests share: the settings, the compiled route
table and challenges, the upstream pool, the payments (facilitator and store). A request
takes the current generation once, when it starts, and keeps it to its end (gateway/reload.py
swaps generations; gateway/app.py serves them).

`Parts` is the seam: how each stateful part is made from settings. Production uses the
defaults; tests pass fakes (`create_app(settings, parts=Parts(facilitator=...))`) instead of
patching module functions. A part a new generation may share with the previous one (when its
settings did not change) is reused, not rebuilt: `Rebuild` says which are made anew.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass

from x402.mechanisms.evm.batch_settlement.server import ChannelStorage

from gateway.config.settings import Settings
from gateway.facilitators import open_facilitator
from gateway.facilitators.chain import open_chain, settle_timeout
from gateway.facilitators.engine import EngineFacilitator
from gateway.facilitators.local_verify import LocalVerify
from gateway.generation import PAYMENT_HEADERS, Generation, canceller, storage_closer
from gateway.observe.logs import get_logger
from gateway.observe.metrics import Metrics
from gateway.payment.challenge import PreparedChallenges
from gateway.payment.channel_service import ClaimService, settings_key, start_claims, wanted
from gateway.payment.channels import Channels
from gateway.payment.engine import Payments
from gateway.payment.facilitator import Facilitator
from gateway.payment.limits import RateLimiter
from gateway.payment.price_hook import HttpPriceSource
from gateway.payment.prices import Prices, PriceSource
from gateway.payment.reconcile import ChainReader
from gateway.payment.retries import Retries
from gateway.payment.sessions import HEADER as SIWX_HEADER
from gateway.payment.sessions import Sessions
from gateway.payment.siwx_proof import Wallets
from gateway.proxy.cors import CorsPolicy
from gateway.proxy.routes import RouteTable
from gateway.proxy.upstream import Upstream
from gateway.store import PaymentStore, open_store
from gateway.store.buckets import TokenBuckets
from gateway.store.channel_writer import open_channel_writer
from gateway.store.channels import open_channel_storage
from gateway.store.claim_lock import open_claim_lock
from gateway.store.kept import KeptResponses
from gateway.store.sessions import open_sessions
from gateway.store.spend import SpendCounters

# The events of building a generation have always been the reload logger's: operators filter
# on logger names, so they stay.
log = get_logger("gateway.reload")


def default_store(settings: Settings) -> PaymentStore:
    return open_store(settings.store)


def default_channels(settings: Settings) -> ChannelStorage:
    """Batch-settlement channel state, beside the payment records."""
    return open_channel_storage(settings.store)


def default_facilitator(settings: Settings, metrics: Metrics) -> Facilitator:
    facilitator = open_facilitator(settings, metrics.facilitator_failed, metrics.engine.observe)
    if isinstance(facilitator, EngineFacilitator):
        metrics.engine.attach(facilitator, facilitator.stats.snapshot)
    if isinstance(facilitator, LocalVerify):
        facilitator.on_chain_read = metrics.chain_read
    return facilitator


@dataclass(frozen=True, slots=True)
class Parts:
    """How a generation's stateful parts are made from settings (the injection seam)."""

    store: Callable[[Settings], PaymentStore] = default_store
    facilitator: Callable[[Settings, Metrics], Facilitator] = default_facilitator
    upstream: Callable[[Settings], Upstream] = Upstream
    chain: Callable[[Settings], ChainReader | None] = open_chain  # None: no RPC configured
    prices: Callable[[], PriceSource] = HttpPriceSource
    channels: Callable[[Settings], ChannelStorage] = default_channels


@dataclass(frozen=True, slots=True)
class Rebuild:
    """Which parts a new generation cannot share with the running one."""

    facilitator: bool
    store: bool
    upstream: bool

    def names(self) -> list[str]:
        return [name for name in ("facilitator", "store", "upstream") if getattr(self, name)]


EVERYTHING = Rebuild(facilitator=True, store=True, upstream=True)


@dataclass(frozen=True, slots=True)
class Reuse:
    """The running generation, and which of its parts the new one must not share."""

    previous: Generation
    rebuild: Rebuild


async def build(
    settings: Settings, metrics: Metrics, generation: int, parts: Parts, reuse: Reuse | None = None
) -> Generation:
    """A started generation, sharing the parts of `reuse.previous` that `reuse.rebuild` does
    not name. On any failure the parts made so far are closed again."""
    previous, todo = (reuse.previous, reuse.rebuild) if reuse is not None else (None, EVERYTHING)
    async with contextlib.AsyncExitStack() as undo:
        builder = _Builder(settings, metrics, generation, parts, previous, todo, undo)
        store = builder.store()
        payments, refresher = await builder.payments(store)
        upstream = await builder.upstream()
        claims = builder.claims(store, payments)
        for problem in payments.unsupported(settings.routes):
            log.error("route_unsupported", problem=problem, generation=generation)
        built = Generation(
            settings=settings,
            routes=RouteTable(settings.routes, settings.case_insensitive_paths),
            challenges=PreparedChallenges(settings, supported=payments.facilitator.get_supported),
            upstream=upstream,
            payments=payments,
            metrics=metrics,
            drop_headers=(*PAYMENT_HEADERS, SIWX_HEADER, settings.payer_header),
            cors=CorsPolicy(settings.cors),
            generation=generation,
            refresher=refresher,
            sessions=_sessions(settings, store, previous),
            limiter=RateLimiter(
                settings,
                store if isinstance(store, TokenBuckets) else None,
                store if isinstance(store, SpendCounters) else None,
            ),
            prices=Prices(parts.prices()),
            retries=Retries(
                settings.idempotency, store if isinstance(store, KeptResponses) else None
            ),
            claims=claims,
        )
        undo.pop_all()  # started: from now on whoever retires it closes its parts
    return built


def _sessions(
    settings: Settings, store: PaymentStore, previous: Generation | None
) -> Sessions | None:
    """SIWX state lives beside the payment records (the same Redis when they are there). A
    generation that shares the previous one's store shares its session state too: a reload
    must not forget who paid, nor which sign-in nonces are spent (a memory store's are only
    in this object)."""
    if not any(route.access is not None for route in settings.routes):
        return None
    shared = previous.sessions if previous is not None else None
    if shared is not None and previous is not None and previous.payments.store is store:
        return Sessions(settings, shared.store, shared.wallets)
    return Sessions(settings, open_sessions(store), Wallets())


def _shared_storage(previous: Generation | None, store: PaymentStore) -> ChannelStorage | None:
    """The channel storage of `previous`, when it may be shared: a generation that shares
    the previous one's store shares its channel state too (a memory store's is only in that
    object, and the channels' vouchers are money not yet claimed)."""
    if previous is None or previous.payments.store is not store:
        return None
    storages = previous.channel_storages()
    return storages[0] if storages else None


@dataclass(frozen=True, slots=True)
class _Builder:
    """One build: each part is made anew (and undone on failure) or taken from `previous`."""

    settings: Settings
    metrics: Metrics
    generation: int
    parts: Parts
    previous: Generation | None
    todo: Rebuild
    undo: contextlib.AsyncExitStack

    def _reuses(self, part: str) -> Generation | None:
        """The previous generation, when its `part` may be shared."""
        if self.previous is None or getattr(self.todo, part):
            return None
        return self.previous

    def store(self) -> PaymentStore:
        if (previous := self._reuses("store")) is not None:
            return previous.payments.store
        store = self.parts.store(self.settings)
        self.undo.push_async_callback(store.close)
        return store

    async def payments(self, store: PaymentStore) -> tuple[Payments, asyncio.Task[None]]:
        previous = self.previous
        if previous is not None and not (self.todo.facilitator or self.todo.store):
            return previous.payments, previous.refresher
        chain = self.parts.chain(self.settings)
        if chain is not None:
            self.undo.push_async_callback(chain.close)
        window = settle_timeout(self.settings)
        if (previous := self._reuses("facilitator")) is not None:
            payments = Payments(previous.payments.facilitator, store, chain, window)
            self.channels(payments)
            problems = await payments.refresh()
        else:
            facilitator = self.parts.facilitator(self.settings, self.metrics)
            self.undo.push_async_callback(facilitator.close)
            payments = Payments(facilitator, store, chain, window)
            self.channels(payments)
            problems = await payments.start()
        if isinstance(payments.facilitator, LocalVerify):  # one signature check per payment
            payments.signatures = payments.facilitator.signatures
        for problem in problems:
            log.warning("facilitator_unavailable", problem=problem, generation=self.generation)
        refresher = asyncio.create_task(payments.background())  # refresh, reconcile
        self.undo.push_async_callback(canceller(refresher))
        return payments, refresher

    def channel_storage(self, store: PaymentStore) -> ChannelStorage:
        """The channel state beside the payment records: the previous generation's when it
        shares the store, else opened here (and closed again if this build fails; once
        started, by whoever retires the last generation that reads it)."""
        shared = _shared_storage(self.previous, store)
        if shared is not None:
            return shared
        storage = self.parts.channels(self.settings)
        self.undo.push_async_callback(storage_closer(storage))
        return storage

    def channels(self, payments: Payments) -> None:
        """Batch-settlement for the routes with `channel:` (the same Redis as the payment
        records when they are there; this process's memory otherwise)."""
        if not any(route.channel is not None for route in self.settings.routes):
            if wanted(self.settings):  # channels served before: their records still reconcile
                payments.read_channels(self.channel_storage(payments.store))
            return
        storage = self.channel_storage(payments.store)
        channels = Channels(
            self.settings, storage, writer=open_channel_writer(storage, payments.store)
        )
        self.undo.push_async_callback(channels.close)
        payments.use_channels(channels)

    def claims(self, store: PaymentStore, payments: Payments) -> ClaimService | None:
        """The claim schedule: the running one when this generation changes none of its
        parts, else a new one (sharing the lock, so the two never claim at once)."""
        previous = self.previous.claims if self.previous is not None else None
        if (
            previous is not None
            and self.previous is not None
            and self.previous.payments is payments
            and previous.settings_key == settings_key(self.settings)
        ):
            return previous
        if not wanted(self.settings):
            return None
        same_store = self.previous is not None and self.previous.payments.store is store
        lock = previous.lock if previous is not None and same_store else open_claim_lock(store)
        # The channel state the payments read (the routes' channels; with no channel route
        # and a Redis store, those served before: still owed), else opened for the claims.
        charges = payments.reconciler.channels
        storage = charges.storage if charges is not None else self.channel_storage(store)
        claims = start_claims(
            self.settings, storage, payments.facilitator, lock, self.metrics.channels
        )
        self.undo.push_async_callback(claims.close)
        return claims

    async def upstream(self) -> Upstream:
        if (previous := self._reuses("upstream")) is not None:
            return previous.upstream
        upstream = self.parts.upstream(self.settings)
        await upstream.start()
        self.undo.push_async_callback(upstream.close)
        return upstream
