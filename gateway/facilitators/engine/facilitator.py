"""The engine behind the gateway's facilitator interface (as `local.py` and `remote.py`).

Answers: a bad payment is a VerifyResponse/SettleResponse with the SDK's reason; a node
that cannot be used before anything was broadcast raises `FacilitatorUnavailable`; after a
broadcast whose outcome is not known yet, settle answers `settlement_pending` (never a
failure: the payer may have been charged). The same authorization settled twice at once:
the second call is told the nonce is in use; a retry after a `settlement_pending` answer
waits for the transaction already sent instead of sending another.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from cachetools import LRUCache, TTLCache
from eth_utils.address import to_checksum_address
from x402.mechanisms.evm.constants import ERR_NONCE_ALREADY_USED, ERR_SETTLEMENT_PENDING
from x402.mechanisms.evm.v1.constants import V1_NETWORK_CHAIN_IDS
from x402.schemas import SettleResponse, SupportedKind, SupportedResponse, VerifyResponse

from gateway.payment import eip3009
from gateway.payment.eip3009 import Authorization, Malformed

from ...errors import FacilitatorUnavailable
from .calls import transfer_call
from .delegate import Delegate, Payload, Requirements, unsupported_settle, unsupported_verify
from .options import EngineOptions
from .rpc import Call, RpcClient, RpcError, RpcUnavailable, quantity
from .settle import Settler, wait
from .signer import SettlerKey
from .stats import EngineStats, KeyState, Observer
from .txs import Kind, Outcome, Payment
from .verify import Route, chain_reason, is_native, read_chain, route
from .watcher import Watcher

Identity = tuple[str, str, bytes]  # (token, payer, EIP-3009 nonce)


class EngineFacilitator:
    """Verifies and settles exact EIP-3009 payments on one chain with its own settler keys."""

    def __init__(
        self,
        options: EngineOptions,
        *,
        delegate: Delegate | None = None,
        observer: Observer | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.options = options
        self.stats = EngineStats(observer=observer)
        self._delegate = delegate
        self._clock = clock
        self._rpc = RpcClient(
            options.rpc_url, timeout=options.rpc_timeout, batch_limit=options.rpc_batch_limit
        )
        self._chain_id = options.chain_id
        self._keys: list[SettlerKey] = []
        if self._chain_id is not None:
            self._keys = [SettlerKey(k, self._chain_id) for k in options.keys]
        self._watcher: Watcher | None = None
        self._settler: Settler | None = None
        self._in_flight: dict[Identity, Payment] = {}
        # Payments whose settle() was answered settlement_pending: a retry of the same
        # authorization gets their real outcome (as the SDK's pending-settlement store).
        self._told_pending: TTLCache[Identity, Payment] = TTLCache(maxsize=100_000, ttl=3600)
        self._tokens_with_code: set[str] = set()
        self._routes: LRUCache[tuple[object, ...], Route | str] = LRUCache(maxsize=512)

    # --- life ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the session, start the watcher. Touches the node only when the chain id was
        not given (a gateway whose chain is down still starts and serves challenges)."""
        if self._settler is not None:
            return
        await self._rpc.start()
        if self._delegate is not None:
            await self._delegate.start()
        if self._chain_id is None:
            self._chain_id = quantity(await self._node("eth_chainId"))
            self._keys = [SettlerKey(k, self._chain_id) for k in self.options.keys]
        self._watcher = Watcher(self._rpc, self._keys, self.options, self.stats)
        self._settler = Settler(self._rpc, self._keys, self.options, self.stats, self._watcher)
        self._watcher.start()

    async def close(self) -> None:
        """Stop batching and watching. Payments still in flight get `settlement_pending`
        from their settle() call (their transactions may still land)."""
        settler, self._settler = self._settler, None
        if settler is not None:
            await settler.close()
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            await watcher.close()
        for payment in list(self._in_flight.values()):
            payment.resolve(Outcome(Kind.PENDING, payment.transaction, None, "engine closed"))
        await self._rpc.close()
        if self._delegate is not None:
            await self._delegate.close()

    async def __aenter__(self) -> EngineFacilitator:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @property
    def addresses(self) -> list[str]:
        return [k.address for k in self._keys]

    @property
    def network(self) -> str:
        return f"eip155:{self._require_chain()}"

    def key_states(self) -> list[KeyState]:
        return [
            KeyState(k.address, k.balance, k.in_flight, k.nonces.next if k.nonces.synced else None)
            for k in self._keys
        ]

    # --- the facilitator protocol -------------------------------------------------------

    def get_supported(self) -> SupportedResponse:
        chain_id = self._require_chain()
        kinds = [SupportedKind(x402_version=2, scheme="exact", network=f"eip155:{chain_id}")]
        v1 = self._v1_name()
        if v1 is not None:
            kinds.append(SupportedKind(x402_version=1, scheme="exact", network=v1))
        signers = {"eip155:*": self.addresses}
        extensions: list[str] = []
        if self._delegate is not None:
            other = self._delegate.get_supported()
            kinds += [k for k in other.kinds if k not in kinds]
            for family, addresses in other.signers.items():
                signers.setdefault(family, [])
                signers[family] += [a for a in addresses if a not in signers[family]]
            extensions = list(other.extensions)
        return SupportedResponse(kinds=kinds, extensions=extensions, signers=signers)

    async def refresh_supported(self) -> list[str]:
        try:
            await self.ping()
        except FacilitatorUnavailable as exc:
            return [exc.detail]
        return []

    async def ping(self) -> None:
        """Ready: the node answers, is our chain, and every settler holds its gas floor."""
        calls = [Call("eth_chainId")] + [
            Call("eth_getBalance", (k.address, "latest")) for k in self._keys
        ]
        try:
            answers = await self._rpc.batch(calls)
        except RpcUnavailable as exc:
            raise FacilitatorUnavailable(f"RPC {self.options.rpc_url}: {exc}") from exc
        if any(isinstance(a, RpcError) for a in answers):
            raise FacilitatorUnavailable(f"RPC {self.options.rpc_url}: {answers}")
        chain_id = quantity(answers[0])
        if chain_id != self._chain_id:
            raise FacilitatorUnavailable(
                f"RPC {self.options.rpc_url} is chain {chain_id}, not {self._chain_id}"
            )
        low = []
        for key, answer in zip(self._keys, answers[1:], strict=True):
            key.balance = quantity(answer)
            if key.balance < self.options.min_gas_balance:
                low.append(f"{key.address} holds {key.balance} wei")
        if low:
            raise FacilitatorUnavailable(
                f"settler gas below {self.options.min_gas_balance} wei: {', '.join(low)}"
            )

    async def verify(self, payload: Payload, requirements: Requirements) -> VerifyResponse:
        chain_id = self._require_chain()
        if not is_native(payload, requirements, chain_id, self._v1_name()):
            if self._delegate is not None:
                return await self._delegate.verify(payload, requirements)
            return unsupported_verify(f"{requirements.scheme} on {requirements.network}")
        checked = self._local(payload, requirements)
        if isinstance(checked, VerifyResponse):
            return checked
        rt, auth, sig, payer = checked
        if self._settling((rt.token, auth.payer, auth.nonce)) is not None:
            return VerifyResponse(
                is_valid=False,
                invalid_reason=ERR_NONCE_ALREADY_USED,
                invalid_message="this authorization is being settled",
                payer=payer,
            )
        ask_token = rt.token not in self._tokens_with_code
        try:
            view = await read_chain(self._rpc, rt, auth, self._keys[0].address, ask_token)
        except (RpcUnavailable, RpcError) as exc:
            raise FacilitatorUnavailable(f"RPC {self.options.rpc_url}: {exc}") from exc
        if view.token_has_code:
            self._tokens_with_code.add(rt.token)
        reason, message = chain_reason(view, sig, auth.value)
        if reason is None:
            return VerifyResponse(is_valid=True, payer=payer)
        return VerifyResponse(
            is_valid=False, invalid_reason=reason, invalid_message=message, payer=payer
        )

    async def settle(self, payload: Payload, requirements: Requirements) -> SettleResponse:
        chain_id = self._require_chain()
        network = str(requirements.network)
        if not is_native(payload, requirements, chain_id, self._v1_name()):
            if self._delegate is not None:
                return await self._delegate.settle(payload, requirements)
            return unsupported_settle(f"{requirements.scheme} on {network}", network)
        checked = self._local(payload, requirements)
        if isinstance(checked, VerifyResponse):
            return SettleResponse(
                success=False,
                error_reason=checked.invalid_reason,
                error_message=checked.invalid_message,
                payer=checked.payer,
                transaction="",
                network=network,
            )
        rt, auth, _, payer = checked
        payment = self._payment(rt, auth)
        if payment is None:
            return SettleResponse(
                success=False,
                error_reason=ERR_NONCE_ALREADY_USED,
                error_message="this authorization is being settled",
                payer=payer,
                transaction="",
                network=network,
            )
        outcome = await wait(payment, self.options.confirmation_timeout)
        if outcome.kind is Kind.PENDING:
            self._told_pending[payment.identity] = payment
        return self._answer(outcome, rt.network, payer)

    # --- inside -------------------------------------------------------------------------

    def _local(
        self, payload: Payload, requirements: Requirements
    ) -> VerifyResponse | tuple[Route, Authorization, eip3009.Sig, str]:
        """Everything that needs no chain: requirements, terms, window, signature."""
        rt = self._route(payload, requirements)
        try:
            auth = eip3009.parse(payload.payload)
        except Malformed as exc:
            return VerifyResponse(
                is_valid=False, invalid_reason=eip3009.ERR_INVALID_PAYLOAD, invalid_message=str(exc)
            )
        payer = to_checksum_address(auth.payer)
        if isinstance(rt, str):
            return VerifyResponse(is_valid=False, invalid_reason=rt, payer=payer)
        reason = eip3009.terms_reason(
            auth,
            pay_to=rt.pay_to,
            amount=rt.amount,
            now=int(self._clock()),
            margin=self.options.valid_before_margin,
        )
        if reason is not None:
            return VerifyResponse(is_valid=False, invalid_reason=reason, payer=payer)
        sig = eip3009.check_signature(auth, rt.domain)
        if sig is eip3009.Sig.COUNTERFACTUAL:
            return VerifyResponse(
                is_valid=False, payer=payer, invalid_reason=eip3009.signature_reason(sig, False)
            )
        return rt, auth, sig, payer

    def _route(self, payload: Payload, requirements: Requirements) -> Route | str:
        key = (
            payload.get_network(),
            requirements.network,
            requirements.asset,
            requirements.pay_to,
            requirements.get_amount(),
            repr(requirements.extra),
        )
        found = self._routes.get(key)
        if found is None:
            found = route(payload, requirements, self._require_chain())
            self._routes[key] = found
        return found

    def _settling(self, identity: Identity) -> Payment | None:
        payment = self._in_flight.get(identity)
        return payment if payment is not None and not payment.future.done() else None

    def _payment(self, rt: Route, auth: Authorization) -> Payment | None:
        """The payment to wait for: the one a settlement_pending answer was given for (a
        retry: its real outcome), the one in flight if nobody waits on it, or a new one.
        None while another call waits on this authorization (one payment, one answer)."""
        identity = (rt.token, auth.payer, auth.nonce)
        told = self._told_pending.pop(identity, None)
        if told is not None:
            return told
        existing = self._settling(identity)
        if existing is not None:
            return None if existing.waiters else existing
        settler = self._require_settler()
        inner, _ = eip3009.inner_signature(auth.signature)
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        payment = Payment(auth, rt.token, transfer_call(rt.token, auth, inner), future)
        self._in_flight[identity] = payment
        future.add_done_callback(lambda _: self._in_flight.pop(identity, None))
        settler.submit(payment)
        return payment

    def _answer(self, outcome: Outcome, network: str, payer: str) -> SettleResponse:
        if outcome.kind is Kind.UNAVAILABLE:
            raise FacilitatorUnavailable(outcome.message or "the settlement could not be sent")
        if outcome.kind is Kind.SETTLED:
            return SettleResponse(
                success=True, transaction=outcome.transaction, network=network, payer=payer
            )
        reason = outcome.reason
        if outcome.kind is Kind.PENDING:
            self.stats.answered_pending += 1
            reason = ERR_SETTLEMENT_PENDING
        return SettleResponse(
            success=False,
            error_reason=reason,
            error_message=outcome.message,
            transaction=outcome.transaction,
            network=network,
            payer=payer,
        )

    async def _node(self, method: str) -> object:
        try:
            return await self._rpc.call(method)
        except (RpcUnavailable, RpcError) as exc:
            raise FacilitatorUnavailable(f"RPC {self.options.rpc_url}: {exc}") from exc

    def _v1_name(self) -> str | None:
        chain_id = self._require_chain()
        return next((n for n, c in V1_NETWORK_CHAIN_IDS.items() if c == chain_id), None)

    def _require_chain(self) -> int:
        if self._chain_id is None:
            raise RuntimeError("EngineFacilitator: chain id unknown before start()")
        return self._chain_id

    def _require_settler(self) -> Settler:
        if self._settler is None:
            raise RuntimeError("EngineFacilitator used before start() or after close()")
        return self._settler
