"""The voucher fast path (issue 14): a plain voucher on a channel the gateway already holds
fresh state for, served on the event loop with one store round trip to reserve the channel
and one to charge it, instead of the SDK's hooks in a thread pool (~8 round trips, ~6 ms).

It does what the SDK's `BatchSettlementEvmScheme` does for such a voucher, step for step
(x402/mechanisms/evm/batch_settlement/server/verify.py `handle_before_verify`,
`_verify_voucher_locally`, `handle_after_verify`; settle.py `handle_before_settle`;
`clear_pending_request`), on the same stored channel record, and nothing else:

- checks: the channel id bound to its config and the config to the route's requirement (the
  SDK's own functions, once per channel and requirement: cached), the payer authorizer's
  ECDSA signature (`gateway.payment.voucher_check`, coincurve);
- reserve, atomically: the channel exists, its on-chain state was read within the SDK's
  `onchain_state_ttl`, no live reservation, cumulative = charged + price, <= balance,
  > claimed; then the SDK's reservation (pending request, the new voucher and signature);
- commit, atomically: the reservation is still ours, charged + price <= the signed amount;
  charged += price, the reservation cleared; the settle response the SDK gives;
- cancel: our reservation cleared (the origin failed, the client left).

Whatever it does not accept (a deposit, a refund, an unknown or stale channel, a busy
channel, a wrong amount, a contract-wallet signature, anything malformed) it hands back
untouched, and the SDK's path decides, with its own reasons and corrective 402.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from cachetools import LRUCache
from x402.mechanisms.evm.batch_settlement import SCHEME_BATCH_SETTLEMENT
from x402.mechanisms.evm.batch_settlement.errors import (
    ERR_CHANNEL_BUSY,
    ERR_CHARGE_EXCEEDS_SIGNED_CUMULATIVE,
    ERR_MISSING_CHANNEL,
)
from x402.mechanisms.evm.batch_settlement.facilitator.utils import validate_channel_config
from x402.mechanisms.evm.batch_settlement.server.storage import (
    Channel,
    ChannelUpdateResult,
    PendingRequest,
)
from x402.mechanisms.evm.batch_settlement.utils import channel_id_binding_error
from x402.mechanisms.evm.utils import create_nonce, get_evm_chain_id
from x402.schemas import PaymentAbortedError, PaymentRequirements, SettleResponse

from gateway.errors import StoreUnavailable
from gateway.observe.logs import get_logger
from gateway.payment.eip3009 import Domain
from gateway.payment.recent import keep
from gateway.payment.voucher_check import (
    Parsed,
    Voucher,
    domain,
    parse_plain,
    signed_by_authorizer,
)
from gateway.store.channel_writer import ChannelWriter, MemoryChannelWriter

log = get_logger("gateway.channels")

CACHED_CONFIGS = 4096  # (channel, requirement) pairs whose binding was checked
# The SDK's bounds on a reservation's lifetime (verify.py `_pending_expires_at`).
MIN_PENDING_MS = 5_000
MAX_PENDING_MS = 10 * 60 * 1000


@dataclass(slots=True)
class Hold:
    """A voucher whose channel this request reserves (its pending request's id)."""

    voucher: Voucher
    pending_id: str
    # The reservation's write, as a task of its own: a request cancelled while it is in
    # flight must wait for it before clearing what it may have written (`cancel`).
    writing: asyncio.Task[ChannelUpdateResult] | None = None


def _domain_on(network: str) -> Domain | None:
    """The batch-settlement domain on `network`; None: not an EVM chain the SDK knows."""
    try:
        return domain(get_evm_chain_id(network))
    except ValueError:
        return None


def _now_ms() -> int:
    return int(time.time() * 1000)


class FastVouchers:
    """One per generation (built with its `Channels`): its caches live as long as it."""

    def __init__(self, writer: ChannelWriter, onchain_ttl_ms: int, reservation: int | None) -> None:
        """`onchain_ttl_ms`: the SDK scheme's `get_onchain_state_ttl_ms()`; `reservation`:
        the most seconds a request holds its channel (None: the route's timeout)."""
        self._writer = writer
        self._ttl_ms = onchain_ttl_ms
        self._reservation = reservation
        # Bounded, oldest first out (an `in` in C: cachetools' `__contains__` is Python).
        self._bound: OrderedDict[tuple[Any, ...], bool] = OrderedDict()
        # The networks are the routes' (config): a C-level cache, once per voucher.
        self._domains = functools.lru_cache(maxsize=64)(_domain_on)
        self._configs: LRUCache[str, Parsed] = LRUCache(CACHED_CONFIGS)  # parsed, by repr

    # --- verify ---------------------------------------------------------------------------

    def plain(
        self, payload: Any, reqs: PaymentRequirements, parsed: Voucher | None = None
    ) -> Voucher | None:
        """The voucher in `payload` when it is plain, bound to `reqs` and signed by its
        payer authorizer; else None. `parsed`: `payload`'s voucher as `parse_plain` gives
        it, read already by the match (`ChannelPayment.voucher`); None: parsed here."""
        if reqs.scheme != SCHEME_BATCH_SETTLEMENT or not reqs.amount.isdigit():
            return None
        voucher = parsed if parsed is not None else parse_plain(payload, self._configs)
        if voucher is None or not self._bound_to(voucher, reqs):
            return None
        on = self._domains(str(reqs.network))
        return voucher if on is not None and signed_by_authorizer(voucher, on) else None

    def _bound_to(self, voucher: Voucher, reqs: PaymentRequirements) -> bool:
        extra = reqs.extra or {}
        key = (
            str(reqs.network),
            voucher.claimed_id,
            voucher.config_key,
            reqs.pay_to,
            reqs.asset,
            str(extra.get("receiverAuthorizer")),
            str(extra.get("withdrawDelay")),
        )
        if key in self._bound:
            return True
        config, claimed = voucher.config, voucher.claimed_id
        try:
            bound = channel_id_binding_error(config, claimed, reqs.network) is None
            bound = bound and validate_channel_config(config, claimed, reqs) is None
        except (ValueError, TypeError):
            return False
        if bound:
            keep(self._bound, key, True, CACHED_CONFIGS)
        return bound

    @staticmethod
    def hold(voucher: Voucher) -> Hold:
        """A new reservation for `voucher`, not yet written (`reserve`)."""
        return Hold(voucher, create_nonce())

    async def reserve(self, hold: Hold, reqs: PaymentRequirements) -> bool:
        """Reserve the voucher's channel; False when the SDK's path must decide. The write
        is shielded: a caller cancelled meanwhile hands `hold` to `cancel`, which waits."""
        voucher = hold.voucher
        step = _Reserve(
            voucher, int(reqs.amount), hold.pending_id, self._ttl_ms, self._lifetime(reqs)
        )
        if isinstance(self._writer, MemoryChannelWriter):
            # A plain call: it ends before any hang-up can be delivered, and leaves nothing
            # in flight for `cancel` to wait for (no task, no shield: two loop turns less).
            return self._writer.change_now(voucher.channel_id, step)
        hold.writing = asyncio.ensure_future(self._writer.update(voucher.channel_id, step))
        result = await asyncio.shield(hold.writing)
        return result.status == "updated"

    @property
    def in_memory(self) -> bool:
        """The channel state is this process's memory: its writes never suspend."""
        return isinstance(self._writer, MemoryChannelWriter)

    def _lifetime(self, reqs: PaymentRequirements) -> int:
        seconds = reqs.max_timeout_seconds or 0
        if self._reservation is not None:
            seconds = min(seconds, self._reservation)
        return min(MAX_PENDING_MS, max(MIN_PENDING_MS, max(0, seconds) * 1000))

    # --- settle / cancel ------------------------------------------------------------------

    async def commit(self, hold: Hold, reqs: PaymentRequirements) -> SettleResponse:
        """Charge the price on the reserved channel: the SDK's voucher settlement (no
        transaction). Raises `PaymentAbortedError` with the SDK's reason when it cannot."""
        step = _Commit(hold, int(reqs.amount))
        await self._writer.update(hold.voucher.channel_id, step)
        return _committed(step, reqs)

    def commit_now(self, hold: Hold, reqs: PaymentRequirements) -> SettleResponse:
        """`commit` as a plain call, on channel state in memory (`in_memory`)."""
        assert isinstance(self._writer, MemoryChannelWriter)
        step = _Commit(hold, int(reqs.amount))
        self._writer.change_now(hold.voucher.channel_id, step)
        return _committed(step, reqs)

    async def cancel(self, hold: Hold) -> None:
        """Clear this request's reservation (if it is still the channel's), once its write
        has ended."""
        writing = hold.writing
        if writing is not None:
            await asyncio.wait([writing])
            if not writing.cancelled():
                writing.exception()  # raised to the request already (or it was cancelled)
        try:
            await self._writer.update(hold.voucher.channel_id, _Cancel(hold.pending_id))
        except StoreUnavailable as exc:
            # The reservation lapses by itself (its bounded lifetime); the claim's release
            # goes on, as after the SDK's own cancellation hooks.
            log.warning("channel_reservation_not_cleared", error=exc.detail)


class _Reserve:
    """The SDK's before-verify, local verify and after-verify on an existing channel with
    fresh on-chain state, as one pure update; returns what it was given to decline.
    `in_place`: the same on the stored record itself (`MemoryChannels.change`)."""

    def __init__(
        self, voucher: Voucher, price: int, pending_id: str, ttl_ms: int, lifetime_ms: int
    ) -> None:
        self.voucher, self.price, self.pending_id = voucher, price, pending_id
        self.ttl_ms, self.lifetime_ms = ttl_ms, lifetime_ms

    def __call__(self, current: Channel | None) -> Channel | None:
        now = _now_ms()
        if current is None or not self._acceptable(current, now):
            return current
        following = current.copy()
        self._apply(following, now)
        return following

    def in_place(self, stored: Channel | None) -> bool:
        now = _now_ms()
        if stored is None or not self._acceptable(stored, now):
            return False
        self._apply(stored, now)
        return True

    def _apply(self, channel: Channel, now: int) -> None:
        v = self.voucher
        channel.channel_config = v.config
        channel.signed_max_claimable = str(v.max_claimable)
        channel.signature = v.signature
        channel.last_request_timestamp = now
        channel.pending_request = PendingRequest(
            pending_id=self.pending_id,
            signed_max_claimable=str(v.max_claimable),
            expires_at=now + self.lifetime_ms,
        )

    def _acceptable(self, current: Channel, now: int) -> bool:
        synced = current.onchain_synced_at
        if synced is None or now - synced > self.ttl_ms:
            return False  # the SDK re-reads the chain (through the facilitator) first
        pending = current.pending_request
        if pending is not None and pending.expires_at > now:
            return False  # busy
        amount = self.voucher.max_claimable
        if amount != int(current.charged_cumulative_amount) + self.price:
            return False  # the SDK's corrective 402
        return int(current.total_claimed) < amount <= int(current.balance)


class _Commit:
    """The SDK's before-settle for a voucher, as one pure update; records its outcome.
    `in_place`: the same on the stored record itself (`MemoryChannels.change`)."""

    def __init__(self, hold: Hold, price: int) -> None:
        self.hold, self.price = hold, price
        self.refused: str | None = None
        self.payer = ""
        self.state: dict[str, str | int] | None = None  # the receipt's, once charged
        self.wrote: int | None = None  # the charge's `lastRequestTimestamp`, once decided

    def __call__(self, current: Channel | None) -> Channel | None:
        if not self._decide(current):
            return current
        assert current is not None
        following = current.copy()
        self._apply(following)
        return following

    def in_place(self, stored: Channel | None) -> bool:
        if not self._decide(stored):
            return False
        assert stored is not None
        self._apply(stored)
        return True

    def _decide(self, current: Channel | None) -> bool:
        """Whether the record changes; the refusal (if any) noted."""
        self.refused, self.state = None, None  # it may run again on a newer state
        if current is None:
            self.refused = ERR_MISSING_CHANNEL
            return False
        if _holds(current, self.hold.pending_id):
            return True
        if self._landed(current):
            # This very charge is there: it was written, its answer lost, and the command
            # sent again (redis-py's retry) decided on the state it made. A success, with
            # nothing more to write; never "busy" (refused) for a payer who was charged.
            self._receipt(current, self.hold.voucher.max_claimable)
            return False
        self.refused = ERR_CHANNEL_BUSY
        return False

    def _landed(self, current: Channel) -> bool:
        """`current` is the state this charge wrote (to the millisecond of its timestamp, on
        this voucher's amount and signature), not one another request made."""
        voucher = self.hold.voucher
        return (
            self.wrote is not None
            and current.last_request_timestamp == self.wrote
            and current.pending_request is None
            and current.signature == voucher.signature
            and int(current.charged_cumulative_amount) == voucher.max_claimable
        )

    def _apply(self, channel: Channel) -> None:
        voucher = self.hold.voucher
        charged = int(channel.charged_cumulative_amount) + self.price
        channel.pending_request = None
        if charged > voucher.max_claimable:
            self.refused = ERR_CHARGE_EXCEEDS_SIGNED_CUMULATIVE  # the reservation is cleared
            return
        channel.charged_cumulative_amount = str(charged)
        channel.signed_max_claimable = str(voucher.max_claimable)
        channel.signature = voucher.signature
        channel.last_request_timestamp = self.wrote = _now_ms()
        self._receipt(channel, charged)

    def _receipt(self, channel: Channel, charged: int) -> None:
        # Read here, under the storage's lock (the record is not ours to keep): fields this
        # charge does not change, so the same before and after it.
        self.payer = channel.channel_config.payer.lower()
        self.state = {
            "channelId": channel.channel_id,
            "balance": channel.balance,
            "totalClaimed": channel.total_claimed,
            "withdrawRequestedAt": channel.withdraw_requested_at,
            "refundNonce": str(channel.refund_nonce),
            "chargedCumulativeAmount": str(charged),
        }


def _holds(channel: Channel, pending_id: str) -> bool:
    """The channel's reservation is `pending_id`'s."""
    pending = channel.pending_request
    return pending is not None and pending.pending_id == pending_id


class _Cancel:
    """The SDK's `clear_pending_request` on a channel that exists."""

    def __init__(self, pending_id: str) -> None:
        self.pending_id = pending_id

    def __call__(self, current: Channel | None) -> Channel | None:
        if current is None or current.pending_request is None:
            return current
        if current.pending_request.pending_id != self.pending_id:
            return current
        following = current.copy()
        following.pending_request = None
        return following


def _committed(step: _Commit, reqs: PaymentRequirements) -> SettleResponse:
    """The SDK's settle response for a voucher `step` charged, or its refusal."""
    if step.refused is not None or step.state is None:
        raise PaymentAbortedError(step.refused or ERR_CHANNEL_BUSY)
    return SettleResponse(
        success=True,
        payer=step.payer,
        transaction="",
        network=reqs.network,
        amount="",
        extra={"channelState": step.state, "chargedAmount": reqs.amount},
    )
