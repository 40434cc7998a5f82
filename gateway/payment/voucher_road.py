"""The voucher road's payment steps (issue 14): a plain channel voucher whose match was
remembered (`voucher_memo`: `match_requirement` took it from there, `MatchedPayment.channel`
is set) on a channel whose state is this process's memory, with claims in this process's
memory too. Only what such a voucher needs, in the full path's order and on its own parts:

- take: the voucher's own fields and signature (`channel_fast.FastVouchers.plain`), the
  claim on its identity (the store's set-if-absent), the channel reserved (the fast path's
  `_Reserve`, a plain call on the memory writer);
- settle: the fast path's commit as a plain call, recorded by the books, as `Payments.settle`
  does for a fast voucher on memory stores (`Books.settle` in place), without its layers;
- a failure, a hang-up: the engine's own steps (`Payments.end_early`, `abandon`).

`take` declines (None) with nothing left behind whenever the full path must decide: not such
a voucher, a facilitator not yet known, a voucher the fast path does not accept, a claim held
by a copy (the full path gives today's 409 or corrective 402), a channel it cannot reserve
(busy, stale on-chain state, a wrong amount: the SDK's path and its corrective 402).
On Redis (claims or channels) there is no road: every voucher takes the full path.
"""

from __future__ import annotations

import time

from x402.schemas import PaymentAbortedError, PaymentRequirements, SettleResponse

from gateway.config.settings import RouteSettings
from gateway.errors import SettlementFailed
from gateway.payment.channel_fast import FastVouchers
from gateway.payment.channel_payments import ChannelPayments
from gateway.payment.lifecycle import Supported
from gateway.payment.match import MatchedPayment
from gateway.payment.paid_claim import Claim, new_claim
from gateway.payment.settlement import Books
from gateway.store import PaymentStore
from gateway.store.memory import MemoryStore


class VoucherRoad:
    """One per generation whose claims and channel state are both in memory (`over`)."""

    def __init__(
        self,
        store: MemoryStore,
        fast: FastVouchers,
        channels: ChannelPayments,
        supported: Supported,
        books: Books,
    ) -> None:
        self._store = store
        self._fast = fast
        self._channels = channels
        self._supported = supported
        self._books = books

    @classmethod
    def over(
        cls, store: PaymentStore, channels: ChannelPayments, supported: Supported, books: Books
    ) -> VoucherRoad | None:
        """The road for these parts; None unless the claims and the channel state are both
        this process's memory (their writes never suspend)."""
        fast = channels.channels.fast if channels.channels is not None else None
        if not isinstance(store, MemoryStore) or fast is None or not fast.in_memory:
            return None
        return cls(store, fast, channels, supported, books)

    async def take(
        self, matched: MatchedPayment, route: RouteSettings, request_id: str
    ) -> Claim | None:
        """The voucher checked, claimed and its channel reserved, as the full path's claim
        and verify would leave them; None (nothing taken) when the full path must decide."""
        paid = matched.channel
        if paid is None or paid.kind != "voucher" or not self._supported.ready:
            return None
        started = time.perf_counter()
        reqs = self._channels.fast_requirements(matched)
        if not isinstance(reqs, PaymentRequirements):
            return None
        voucher = self._fast.plain(matched.payload.payload, reqs, paid.voucher)
        if voucher is None:
            return None
        claim = new_claim(matched, route, request_id, self._store.holder)
        if await self._store.claim(claim.key, claim.record, claim.ttl) is not None:
            return None  # a copy holds it (in flight, or used): the full path's answer
        claim.hold = self._fast.hold(voucher)
        if not await self._fast.reserve(claim.hold, reqs):
            await self._store.release(claim.key, request_id)
            return None
        claim.timings.verify = time.perf_counter() - started
        return claim

    async def settle(self, claim: Claim, amount: int | None = None) -> SettleResponse:
        """Charge a claim `take` reserved and record it (`Books.settle` in place: nothing
        here suspends, so no `settling` record, only the check that the claim is still
        ours); a refused charge is recorded `failed` and raised as `SettlementFailed`.
        `amount`: `gateway.paid`'s metered amount, None here (the road takes no metered
        route)."""
        assert amount is None, "a metered amount on the voucher road"
        hold, reqs = claim.hold, claim.matched.requirements
        assert hold is not None and isinstance(reqs, PaymentRequirements)
        self._books.still_ours(claim)
        started = time.perf_counter()
        try:
            settled = self._fast.commit_now(hold, reqs)
        except PaymentAbortedError as exc:
            await self._books.record(claim, "failed", reason=exc.reason)
            raise SettlementFailed(str(exc), reason=exc.reason) from exc
        finally:
            claim.timings.settle = time.perf_counter() - started
        claim.settled = settled
        await self._books.record(claim, "settled", transaction=settled.transaction)
        return settled
