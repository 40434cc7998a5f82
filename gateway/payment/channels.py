"""Payment channels on the payment step (issue 14): the SDK's `BatchSettlementEvmScheme`
registered on `Payments.server`, with the channel state in the store.

The SDK's server scheme keeps each channel's state (charged total, the payer's latest voucher,
the on-chain balance it last saw, a reservation while a request is in flight) through
`x402ResourceServer`'s verify/settle hooks. Those hooks are synchronous and read or write the
channel storage (Redis when the store is Redis: a network round trip each), so here every
hook runs in this module's thread pool and the server awaits it: the event loop never
blocks on them. What the hooks do is the SDK's own:

- verify: a voucher on a channel whose on-chain state is fresh is checked in process
  (channel terms, the payer's EIP-712 signature, cumulative amount against the balance): no
  facilitator round trip, no transaction; a deposit (and a voucher on a channel not seen, or
  not re-read from the chain for `onchain_state_ttl`) goes to the facilitator's /verify.
  A verified payment reserves its channel (one request at a time per channel).
- settle: a voucher is settled by adding the price to the channel's charged total in the
  store (no transaction: the claim scheduler claims the vouchers on chain later); a deposit is
  settled by the facilitator (the deposit transaction), after which the channel state is
  updated from the chain.
- a voucher whose cumulative amount is not the next one is refused with
  `invalid_batch_settlement_evm_cumulative_amount_mismatch` and a corrective 402 that carries
  the channel state and the last voucher the gateway holds (`corrective_headers`), from which
  the SDK's client resynchronises and signs the right voucher.
- a verified payment that is not served (the origin failed, the client left) has its
  reservation cleared through the SDK's cancellation hooks (`cancel`).
- a cooperative refund (the payer closes its channel) is verified, then answered by the
  gateway itself (the SDK's skip-handler directive, never forwarded) once the facilitator has
  sent the refund, which also claims what the channel's vouchers owe the receiver.

Receiver authorizer: the gateway's own key (`channels.authorizer_key`) signs claims and
refunds when set; else the facilitator's advertised `receiverAuthorizer` is used (its
/supported `extra`), and the gateway's `channels:` requirement is completed from it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import math
from collections.abc import Callable
from typing import Any

from x402 import x402ResourceServer
from x402.http.utils import encode_payment_required_header
from x402.mechanisms.evm.batch_settlement import SCHEME_BATCH_SETTLEMENT
from x402.mechanisms.evm.batch_settlement.authorizer_signer import LocalAuthorizerSigner
from x402.mechanisms.evm.batch_settlement.errors import (
    ERR_CUMULATIVE_AMOUNT_BELOW_CLAIMED,
    ERR_CUMULATIVE_AMOUNT_MISMATCH,
)
from x402.mechanisms.evm.batch_settlement.server.scheme import (
    BatchSettlementEvmScheme,
    BatchSettlementEvmSchemeServerConfig,
)
from x402.mechanisms.evm.batch_settlement.server.storage import ChannelStorage
from x402.mechanisms.evm.batch_settlement.types import is_refund_payload
from x402.mechanisms.evm.exact.register import register_exact_evm_server
from x402.mechanisms.evm.upto import UptoEvmServerScheme
from x402.schemas import (
    PaymentPayload,
    PaymentRequirements,
    SupportedKind,
    VerifiedPaymentCancelOptions,
)

from gateway.config.settings import Settings
from gateway.observe.logs import get_logger
from gateway.payment.channel_fast import FastVouchers
from gateway.payment.channel_terms import ChannelIds
from gateway.store.channel_writer import ChannelWriter

log = get_logger("gateway.channels")

# Reasons whose 402 carries the channel state the client resynchronises from.
CORRECTIVE = frozenset({ERR_CUMULATIVE_AMOUNT_MISMATCH, ERR_CUMULATIVE_AMOUNT_BELOW_CLAIMED})
HOOK_THREADS = 8  # storage round trips in flight at once; each is short
RESERVATION_MARGIN = 10  # seconds

_Hook = Callable[[Any], Any]


@dataclasses.dataclass(frozen=True, slots=True)
class _Failed:
    error: Exception


class RefusedBeforeSettle(ValueError):
    """The SDK refused a cooperative refund before anything was sent (no balance left, a
    stale voucher, the channel busy): nothing moved."""


class ThreadedScheme:
    """The SDK's server scheme as `x402ResourceServer` sees it, with each hook that touches
    the channel storage run in a thread pool and awaited (the server awaits what a hook
    returns). Everything else (price parsing, requirement building) is the SDK's, as is."""

    scheme = SCHEME_BATCH_SETTLEMENT

    def __init__(
        self,
        inner: BatchSettlementEvmScheme,
        pool: concurrent.futures.Executor,
        reservation: int | None = None,
    ) -> None:
        """`reservation`: the most seconds a verified request holds its channel (None: the
        SDK's own bound, the route's maxTimeoutSeconds)."""
        self.inner = inner
        self._pool = pool
        self._reservation = reservation
        # The hook last started for a payload (by its id, as the SDK keys its request
        # contexts): a request cancelled while its hook runs in a thread must wait for that
        # hook before cancelling the reservation the hook may still be making.
        self._running: dict[int, concurrent.futures.Future[Any]] = {}
        # A refund's settlement payload, prepared in the pool (see `_before_settle`).
        self._prepared: dict[int, Any] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def _run(self, hook: _Hook, context: Any) -> Any:
        key = id(context.payment_payload)
        future = self._pool.submit(hook, context)
        self._running[key] = future
        try:
            return await asyncio.wrap_future(future)
        finally:
            if future.done() and self._running.get(key) is future:
                del self._running[key]

    async def settled_hooks(self, payload: PaymentPayload) -> None:
        """Wait for a hook a cancelled request left running for `payload`."""
        future = self._running.pop(id(payload), None)
        if future is not None:
            await asyncio.wait([asyncio.wrap_future(future)])

    def validate_facilitator_support(
        self, network: str, kind: SupportedKind, extensions: list[str]
    ) -> str | None:
        """Never fail the server's start-up (the SDK raises on a problem, which would take
        every route down): a channel route without a known authorizer is not offered (see
        `gateway.payment.requirements.incomplete`), and `Payments.unsupported` says why."""
        problem = self.inner.validate_facilitator_support(network, kind, extensions)
        if problem:
            log.warning("channels_without_authorizer", network=network, problem=problem)
        return None

    async def before_verify(self, context: Any) -> Any:
        return await self._run(self.inner.before_verify, context)

    async def after_verify(self, context: Any) -> Any:
        return await self._run(self.inner.after_verify, self._reserving(context))

    def _reserving(self, context: Any) -> Any:
        """The after-verify context with the reservation's lifetime bounded: the SDK keeps a
        channel reserved for the route's `maxTimeoutSeconds` (300 s by default) in case a
        request never ends, so a gateway that died mid-request would lock its payer's channel
        for that long. A live request needs it at most for its origin's answer and its
        settlement; only the reservation reads this copy, never a facilitator."""
        reqs = context.requirements
        if self._reservation is None or reqs.max_timeout_seconds <= self._reservation:
            return context
        bounded = reqs.model_copy(update={"max_timeout_seconds": self._reservation})
        return dataclasses.replace(context, requirements=bounded)

    async def on_verify_failure(self, context: Any) -> Any:
        return await self._run(self.inner.on_verify_failure, context)

    async def on_verified_payment_canceled(self, context: Any) -> Any:
        return await self._run(self.inner.on_verified_payment_canceled, context)

    async def before_settle(self, context: Any) -> Any:
        return await self._run(self._before_settle, context)

    def _before_settle(self, context: Any) -> Any:
        """In the pool: the SDK's before-settle hook, then, for a cooperative refund, what
        its `enrich_settlement_payload` adds (it reads the channel storage, and the SDK
        calls it synchronously on the loop: it is prepared here and handed over there)."""
        result = self.inner.before_settle(context)
        payload = context.payment_payload
        if result is None and is_refund_payload(payload.payload):
            try:
                prepared: Any = self.inner.enrich_settlement_payload(context)
            except Exception as exc:  # noqa: BLE001  raised again where the SDK calls it
                prepared = _Failed(exc)
            self._prepared[id(payload)] = prepared
        return result

    def enrich_settlement_payload(self, context: Any) -> Any:
        """Called by the SDK on the loop: what `_before_settle` prepared in the pool; for
        anything but a refund the SDK's own answer, which touches no storage."""
        key = id(context.payment_payload)
        if key not in self._prepared:
            return self.inner.enrich_settlement_payload(context)
        prepared = self._prepared.pop(key)
        if not isinstance(prepared, _Failed):
            return prepared
        if isinstance(prepared.error, ValueError):  # the SDK's refusals (ERR_* reasons)
            raise RefusedBeforeSettle(str(prepared.error)) from prepared.error
        raise prepared.error

    async def after_settle(self, context: Any) -> Any:
        return await self._run(self.inner.after_settle, context)

    async def on_settle_failure(self, context: Any) -> Any:
        return await self._run(self.inner.on_settle_failure, context)

    async def enrich_payment_required_response(self, context: Any) -> Any:
        return await self._run(self.inner.enrich_payment_required_response, context)

    async def enrich_settlement_response(self, context: Any) -> Any:
        return await self._run(self.inner.enrich_settlement_response, context)


class Channels:
    """The batch-settlement schemes of one generation (one per network with a channel
    route), their channel storage and their thread pool."""

    def __init__(
        self,
        settings: Settings,
        storage: ChannelStorage,
        *,
        writer: ChannelWriter | None = None,
    ) -> None:
        """`storage` is not closed with these channels: generations may share it (its
        opener closes it, gateway/composition.py); `writer`: changes `storage` from the loop
        (the voucher fast path; None: none)."""
        self.storage = storage
        self._pool = concurrent.futures.ThreadPoolExecutor(
            HOOK_THREADS, thread_name_prefix="x402-channels"
        )
        key = settings.channels.authorizer_key
        config = BatchSettlementEvmSchemeServerConfig(
            storage=storage,
            receiver_authorizer_signer=LocalAuthorizerSigner(key) if key else None,
            withdraw_delay=settings.channels.withdraw_delay,
            enforce_min_deposit=True,
        )
        receivers: dict[str, str] = {}
        for route in settings.routes:
            for req in route.accepts:
                if req.scheme == SCHEME_BATCH_SETTLEMENT:
                    receivers.setdefault(req.network, req.pay_to)
        # The receiver is only the default of the SDK's channel manager (claims): verify and
        # settle check each payment against its own route's requirement.
        reservation = reservation_seconds(settings)
        self.schemes = {
            network: ThreadedScheme(
                BatchSettlementEvmScheme(receiver, config), self._pool, reservation
            )
            for network, receiver in receivers.items()
        }
        self.ids = ChannelIds()  # each channel's id computed once (gateway.payment.match)
        # A plain voucher on a fresh channel, served on the loop (gateway/payment/channel_fast.py).
        self.fast = (
            FastVouchers(writer, config_ttl_ms(self.schemes), reservation)
            if writer is not None and self.schemes
            else None
        )

    def register(self, server: x402ResourceServer) -> None:
        for network, scheme in self.schemes.items():
            registered: Any = scheme  # the SDK's SchemeNetworkServer protocol, by duck typing
            server.register(network, registered)
            # The SDK looks a scheme up in the network's own entry when there is one, with
            # no fall-back to "eip155:*": without these, `exact` and `upto` payments on this
            # network (any route, the channel route's own `exact` too) would find no scheme.
            register_exact_evm_server(server, network)
            upto: Any = UptoEvmServerScheme()  # type: ignore[no-untyped-call]  # SDK untyped
            server.register(network, upto)

    def sdk_scheme(self, network: str) -> BatchSettlementEvmScheme | None:
        """The SDK's own scheme for `network` (for its channel manager: claims, refunds)."""
        threaded = self.schemes.get(network)
        return threaded.inner if threaded is not None else None

    async def cancel(
        self,
        server: x402ResourceServer,
        payload: PaymentPayload,
        requirements: PaymentRequirements,
        reason: str = "handler_failed",
    ) -> None:
        """A verified channel payment will not be served: clear its channel reservation
        (the SDK's cancellation hooks), after any hook still running for it."""
        scheme = self.schemes.get(str(requirements.network))
        if scheme is None:
            return
        await scheme.settled_hooks(payload)
        options = VerifiedPaymentCancelOptions(reason=reason)  # type: ignore[arg-type]
        await server.create_payment_cancellation_dispatcher(payload, requirements).cancel(options)

    async def close(self) -> None:
        """Stop the hook threads (after the hooks running); the storage stays open."""
        await asyncio.to_thread(self._pool.shutdown, wait=True, cancel_futures=True)


def config_ttl_ms(schemes: dict[str, ThreadedScheme]) -> int:
    """How long the SDK trusts a channel's on-chain state (one config for every network)."""
    return min(scheme.inner.get_onchain_state_ttl_ms() for scheme in schemes.values())


def reservation_seconds(settings: Settings) -> int:
    """How long a verified request may hold its channel: reaching the origin, its answer's
    head (each byte within `timeouts.read`), and the settlement (a deposit's transaction,
    within the facilitator's timeout), with a margin."""
    settle = max((f.timeout for f in settings.facilitators), default=30.0)
    return (
        math.ceil(settings.timeouts.connect + settings.timeouts.read + settle) + RESERVATION_MARGIN
    )


async def corrective_headers(
    server: x402ResourceServer,
    payload: PaymentPayload,
    requirements: PaymentRequirements,
    reason: str,
) -> dict[str, str]:
    """The `PAYMENT-REQUIRED` header of a corrective 402: the SDK's scheme puts the
    channel's state and the last voucher the gateway holds into the requirement's `extra`."""
    required = await server.create_payment_required_response(
        [requirements],
        resource=payload.resource,
        error=reason,
        payment_payload=payload,
    )
    return {"PAYMENT-REQUIRED": encode_payment_required_header(required)}
