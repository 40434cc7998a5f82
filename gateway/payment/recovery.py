"""Reconciling one stale claim against the chain and writing what it says: the I/O around
`gateway.payment.reconcile.decide`. Used inline by a request that finds a claim whose holder
died mid-settlement, and by `x402-gateway payments --reconcile`. A channel payment's record
is reconciled against the channel state (`decide_channel`), never the chain."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from gateway.errors import ChainUnavailable, StoreUnavailable
from gateway.formats import chain_id
from gateway.observe.logs import get_logger
from gateway.payment.claims import MAY_BE_CHARGED, Verdict, on_conflict
from gateway.payment.match import PaymentIdentity
from gateway.payment.reconcile import Action, ChainReader, ChainState, decide, decide_channel
from gateway.store import PaymentRecord, PaymentStore
from gateway.store.channels import ChannelCharges

log = get_logger("gateway.payments")

RECONCILABLE = MAY_BE_CHARGED | {"settlement_pending"}


@dataclass(frozen=True, slots=True)
class Reconciler:
    store: PaymentStore
    chain: ChainReader | None  # None: no RPC, nothing can be reconciled
    window: float  # seconds after `settling` before "not used" is believed
    bound: float  # seconds one chain read may take
    channels: ChannelCharges | None = None  # the channel state (None: channel records wait)

    async def chain_state(self, record: PaymentRecord) -> ChainState | None:
        """What the chain says of the record's authorization; None when it cannot be asked."""
        chain = self.chain
        if chain is None or not chain.covers(record.network):
            return None
        try:
            async with asyncio.timeout(self.bound):
                return await chain.authorization(
                    record.network, record.asset, record.payer, record.nonce
                )
        except (TimeoutError, ChainUnavailable) as exc:
            log.warning("reconcile_chain_unavailable", network=record.network, error=str(exc))
            return None

    async def run(self, key: str, held: PaymentRecord) -> PaymentRecord:
        """The claim's record after asking the chain (a channel payment's: the channel
        state): `settled` (with the transaction found), `released` (unused, and the settle
        window is over) or `held` unchanged. A record that
        changed meanwhile (another replica reconciled it) is left alone."""
        if held.status not in RECONCILABLE:
            return held
        new = await self._resolved(held)
        if new is None or not await self.store.replace(key, held, new, 0):
            return held
        log.info(
            "payment_reconciled",
            request_id=held.request_id,
            status=new.status,
            previous=held.status,
            transaction=new.transaction,
            payer=held.payer,
        )
        return new

    async def _resolved(self, held: PaymentRecord) -> PaymentRecord | None:
        """The record's next state, or None while it is not known."""
        if held.channel is not None and held.cumulative is not None:
            return await self._resolved_channel(held, held.channel, int(held.cumulative))
        state = await self.chain_state(held)
        action = decide(state, settling_since=held.updated_at, now=time.time(), window=self.window)
        if action is Action.SETTLED:
            assert state is not None
            return held.with_status("settled", transaction=state.transaction, reason="reconciled")
        if action is Action.RELEASE:
            return held.with_status("released", reason="reconciled_unused")
        return None

    async def _resolved_channel(
        self, held: PaymentRecord, channel: str, cumulative: int
    ) -> PaymentRecord | None:
        charged = await self.channel_charged(channel)
        action = decide_channel(
            charged, cumulative, settling_since=held.updated_at, now=time.time(), window=self.window
        )
        if action is Action.SETTLED:
            return held.with_status("settled", reason="reconciled_channel_charged")
        if action is Action.RELEASE:
            return held.with_status("released", reason="reconciled_channel_uncharged")
        return None

    async def channel_charged(self, channel: str) -> int | None:
        """The channel's charged cumulative amount; None when it cannot be read (or the
        channel is not in the store)."""
        if self.channels is None:
            return None
        try:
            async with asyncio.timeout(self.bound):
                return await self.channels.charged(channel)
        except (TimeoutError, StoreUnavailable) as exc:
            log.warning("reconcile_channel_unavailable", channel=channel, error=str(exc))
            return None


def claim_key(record: PaymentRecord) -> str:
    """The store key of the claim a record belongs to (as `match` names it)."""
    cid = chain_id(record.network)
    identity = PaymentIdentity(cid or 0, record.asset.lower(), record.payer.lower(), record.nonce)
    return identity.key


async def reconcile_recent(
    reconciler: Reconciler, limit: int
) -> list[tuple[PaymentRecord, PaymentRecord]]:
    """Reconcile every recent record left in flight by a holder that is gone: those that may
    be charged against the chain, those that cannot be simply released. (old, new) for each
    record changed; a record whose claim moved on meanwhile is left alone."""
    store = reconciler.store
    changed: list[tuple[PaymentRecord, PaymentRecord]] = []
    for held in await store.recent(limit):
        if held.in_flight and await store.alive(held.holder):
            continue
        verdict = on_conflict(held.status, holder_alive=False)
        key = claim_key(held)
        if verdict is Verdict.TAKE_OVER and held.status != "released":
            new = held.with_status("released", reason="holder_gone")
            if await store.replace(key, held, new, 0):
                log.info("claim_released", request_id=held.request_id, reason="holder_gone")
                changed.append((held, new))
        elif held.status in RECONCILABLE:
            new = await reconciler.run(key, held)
            if new is not held:
                changed.append((held, new))
    return changed
