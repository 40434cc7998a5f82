"""The channel (`batch-settlement`) side of a payment's claim, verify, settle and release.

`Payments` (gateway/payment/engine.py) asks here at each step; every method is a no-op (or
False, None, {}) for other schemes and when no route takes channels, so the engine's flow
reads the same for every payment.
"""

from __future__ import annotations

from collections.abc import Callable

from x402 import x402ResourceServer
from x402.mechanisms.evm.batch_settlement import SCHEME_BATCH_SETTLEMENT
from x402.mechanisms.evm.batch_settlement.errors import ERR_CUMULATIVE_AMOUNT_MISMATCH
from x402.schemas import PaymentPayload, PaymentRequirements, SettleResponse, SupportedResponse
from x402.schemas.v1 import PaymentRequirementsV1

from gateway.config.settings import Requirement
from gateway.errors import PaymentError
from gateway.payment.channel_terms import ChannelIds
from gateway.payment.channels import CORRECTIVE, Channels, corrective_headers
from gateway.payment.match import MatchedPayment
from gateway.payment.paid_claim import Claim
from gateway.payment.requirements import for_facilitator

Requirements = PaymentRequirements | PaymentRequirementsV1


class ChannelPayments:
    """The batch-settlement steps of `Payments`, on its server and facilitator's /supported."""

    def __init__(
        self, server: x402ResourceServer, supported: Callable[[], SupportedResponse]
    ) -> None:
        self.server = server
        self.supported = supported  # the facilitator's /supported, from its cache
        self.channels: Channels | None = None  # batch-settlement, when a route takes it
        # The fast path's last completed requirements: (route requirement, /supported, them).
        self._completed: tuple[Requirement, SupportedResponse, Requirements] | None = None

    @property
    def ids(self) -> ChannelIds | None:
        """The channel ids this generation has computed (for `match_requirement`)."""
        return self.channels.ids if self.channels is not None else None

    def use(self, channels: Channels) -> None:
        """Take batch-settlement payments (gateway/payment/channels.py); before `start()`."""
        channels.register(self.server)
        self.channels = channels

    def requirements(self, claim: Claim) -> Requirements:
        """The claim's requirements as the facilitator completes them."""
        return for_facilitator(claim.matched.requirements, self.supported())

    async def close(self) -> None:
        if self.channels is not None:
            await self.channels.close()

    async def fast_voucher(self, claim: Claim) -> bool:
        """A plain voucher on a channel with fresh state: checked and its channel reserved
        on the loop (one store round trip); False when the SDK's path must decide."""
        fast = self.channels.fast if self.channels is not None else None
        if fast is None or claim.matched.requirement.scheme != SCHEME_BATCH_SETTLEMENT:
            return False
        reqs, paid = self.fast_requirements(claim.matched), claim.matched.channel
        parsed = paid.voucher if paid is not None else None  # read by the match already
        voucher = fast.plain(claim.matched.payload.payload, reqs, parsed)  # type: ignore[arg-type]
        if voucher is None or not isinstance(reqs, PaymentRequirements):
            return False
        claim.hold = fast.hold(voucher)  # set first: a hang-up meanwhile releases it
        if await fast.reserve(claim.hold, reqs):
            return True
        claim.hold = None
        return False

    def fast_requirements(self, matched: MatchedPayment) -> Requirements:
        """`requirements(claim)` for the fast path, which only reads them (never handed to
        the SDK, whose schemes may change requirements in place): completed once per route
        requirement and /supported answer (both by identity: a reload or a refreshed
        /supported is a new object), not copied per voucher."""
        req, supported = matched.requirement, self.supported()
        kept = self._completed
        if kept is not None and kept[0] is req and kept[1] is supported:
            return kept[2]
        reqs = for_facilitator(matched.requirements, supported)
        self._completed = (req, supported, reqs)
        return reqs

    async def commit(self, claim: Claim, reqs: Requirements) -> SettleResponse | None:
        """The fast path's charge of a reserved voucher; None: the SDK's settlement decides."""
        fast = self.channels.fast if self.channels is not None else None
        if claim.hold is not None and fast is not None and isinstance(reqs, PaymentRequirements):
            return await fast.commit(claim.hold, reqs)
        return None

    def commits_in_place(self, claim: Claim) -> bool:
        """The claim's charge is a fast-path commit on channel state in this process's
        memory: a plain call, nothing awaited (`Payments.settle`)."""
        fast = self.channels.fast if self.channels is not None else None
        return claim.hold is not None and fast is not None and fast.in_memory

    async def corrective(self, matched: MatchedPayment, reason: str) -> dict[str, str]:
        """A channel voucher on a stale cumulative amount: the 402 carries the channel's
        state for the payer's client to resynchronise (the SDK's corrective 402)."""
        payload = matched.payload
        if reason not in CORRECTIVE or not isinstance(payload, PaymentPayload):
            return {}
        reqs = for_facilitator(matched.requirements, self.supported())
        assert isinstance(reqs, PaymentRequirements)
        return await corrective_headers(self.server, payload, reqs, reason)

    async def voucher_used(self, matched: MatchedPayment) -> PaymentError:
        """A channel voucher (or deposit) whose amount was already charged: the SDK's own
        answer, a corrective 402 with the channel's state, from which a client that lost its
        state signs the next voucher (a 409 would leave it stuck on the old amount)."""
        reason = ERR_CUMULATIVE_AMOUNT_MISMATCH
        headers = await self.corrective(matched, reason)
        return PaymentError(
            "this voucher's amount was already charged", reason=reason, headers=headers
        )

    async def cancel(self, claim: Claim) -> None:
        """A channel payment's reservation is cleared (its channel free for the next call)."""
        payload, reqs = claim.matched.payload, self.requirements(claim)
        if self.channels is None or reqs.scheme != SCHEME_BATCH_SETTLEMENT:
            return
        if claim.hold is not None and self.channels.fast is not None:
            await self.channels.fast.cancel(claim.hold)
            return
        assert isinstance(payload, PaymentPayload) and isinstance(reqs, PaymentRequirements)
        await self.channels.cancel(self.server, payload, reqs)
