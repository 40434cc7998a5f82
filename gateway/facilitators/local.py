"""The SDK's own facilitator, in-process: verify and settle against an RPC node directly.

The SDK's `x402Facilitator` is async in name only: its mechanisms call web3 synchronously
inside the coroutine, so awaiting it would block the event loop for every RPC round trip.
This wraps `x402FacilitatorSync` instead and runs each call in a dedicated thread pool.
It implements the SDK's `FacilitatorClient` protocol (async verify/settle, sync
get_supported), for v2 and v1 payments alike, so `x402ResourceServer` drives it unchanged.

Failures: "the payment is bad" comes back as a VerifyResponse/SettleResponse, as from a
remote facilitator; "the node cannot be reached" raises `FacilitatorUnavailable` (fail
closed). The SDK reports some RPC failures as an invalid payment (a signature it "failed to
verify"), so an answer with one of those reasons is checked against a fresh `eth_chainId`
before it is believed. A settle raises only when nothing was broadcast; after a broadcast
the SDK reports the outcome itself (`settlement_pending` when no receipt came in time).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import requests
from web3 import Web3
from web3.exceptions import ProviderConnectionError, TimeExhausted
from x402 import x402FacilitatorSync
from x402.mechanisms.evm import FacilitatorWeb3Signer
from x402.mechanisms.evm.batch_settlement.authorizer_signer import LocalAuthorizerSigner
from x402.mechanisms.evm.batch_settlement.facilitator.scheme import BatchSettlementEvmFacilitator
from x402.mechanisms.evm.constants import (
    ERR_FAILED_TO_GET_ASSET_INFO,
    ERR_FAILED_TO_VERIFY_SIGNATURE,
    ERR_TRANSACTION_FAILED,
    ERR_TRANSACTION_SIMULATION_FAILED,
)
from x402.mechanisms.evm.exact import register_exact_evm_facilitator
from x402.mechanisms.evm.upto import UptoEvmFacilitatorScheme
from x402.schemas import (
    PaymentPayload,
    PaymentRequirements,
    SchemeNotFoundError,
    SettleResponse,
    SupportedResponse,
    VerifyResponse,
)
from x402.schemas.v1 import PaymentPayloadV1, PaymentRequirementsV1

from gateway.config.settings import LocalFacilitatorSettings
from gateway.errors import FacilitatorUnavailable
from gateway.facilitators.claim_payout import ClaimPayoutSigner

T = TypeVar("T")

# The SDK's reason for a scheme/network it does not serve (ERR_UNSUPPORTED_SCHEME).
UNSUPPORTED = "unsupported_scheme"

# Reasons the SDK also gives when the node did not answer (it catches the error itself).
_MAYBE_UNREACHABLE = frozenset(
    {
        ERR_FAILED_TO_VERIFY_SIGNATURE,
        ERR_TRANSACTION_SIMULATION_FAILED,
        ERR_TRANSACTION_FAILED,
        ERR_FAILED_TO_GET_ASSET_INFO,
    }
)
_RPC_FAILURES = (requests.RequestException, ProviderConnectionError, TimeExhausted, OSError)


def _is_rpc_failure(exc: BaseException) -> bool:
    """Whether `exc` (or what it wraps: the SDK re-raises some as RuntimeError) is the
    node being unreachable rather than a bug."""
    seen: BaseException | None = exc
    for _ in range(8):  # bounded walk: a cause chain can be cyclic
        if seen is None:
            return False
        if isinstance(seen, _RPC_FAILURES):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


class LocalFacilitator:
    """Verifies and settles `exact` EVM payments itself, signing settlements with one key."""

    def __init__(  # noqa: PLR0913  keyword-only tuning knobs, each with a default
        self,
        rpc_url: str,
        private_key: str,
        networks: Sequence[str],
        *,
        max_workers: int = 4,
        confirmation_timeout: float = 30.0,
        simulate_in_settle: bool = False,
        authorizer_key: str | None = None,
    ) -> None:
        """`networks`: the CAIP-2 networks served as v2 (e.g. ["eip155:84532"]); the SDK
        also registers every legacy v1 name (e.g. "base-sepolia") on the same signer.

        `simulate_in_settle` re-simulates the transfer before broadcasting. Off by default,
        as in the SDK: a replayed payment then reaches the chain and reverts, which keeps
        duplicate settlements visible (the gateway's claim store is what prevents them).
        """
        if not networks:
            raise ValueError("LocalFacilitator needs at least one network")
        self._networks = tuple(networks)
        self._signer = FacilitatorWeb3Signer(
            private_key=private_key,
            rpc_url=rpc_url,
            confirmation_timeout_seconds=confirmation_timeout,
        )
        self._facilitator = x402FacilitatorSync()
        register_exact_evm_facilitator(
            self._facilitator,
            self._signer,
            list(self._networks),
            simulate_in_settle=simulate_in_settle,
        )
        # `upto` (Permit2, v2 only): settles up to the signed maximum; /supported names this
        # signer as the facilitator the payer's witness must bind.
        self._facilitator.register(list(self._networks), UptoEvmFacilitatorScheme(self._signer))
        # `batch-settlement` (channel deposits, claims, refunds): with `authorizer_key`,
        # /supported advertises its address as `receiverAuthorizer` and it signs the claims
        # and refunds of servers without a key of their own. A claim also pays the receiver
        # out, in the same transaction (gateway/facilitators/claim_payout.py).
        authorizer = LocalAuthorizerSigner(authorizer_key) if authorizer_key else None
        self._facilitator.register(
            list(self._networks),
            BatchSettlementEvmFacilitator(
                ClaimPayoutSigner(self._signer), authorizer_signer=authorizer
            ),
        )
        # The signer caches the chain id, so readiness asks the node through its own client.
        self._probe = Web3(Web3.HTTPProvider(rpc_url, request_kwargs={"timeout": 5}))
        self._max_workers = max_workers
        self._pool: ThreadPoolExecutor | None = None
        self.rpc_url = rpc_url

    @classmethod
    def from_settings(
        cls, settings: LocalFacilitatorSettings, networks: Sequence[str]
    ) -> LocalFacilitator:
        return cls(
            settings.rpc_url,
            settings.private_key,
            networks,
            confirmation_timeout=settings.timeout,
        )

    def register_extension(self, make: Callable[[FacilitatorWeb3Signer], Any]) -> None:
        """Add a facilitator extension built on this facilitator's signer (e.g. the SDK's
        `Erc20ApprovalFacilitatorExtension`, whose transaction signer the operator supplies)."""
        self._facilitator.register_extension(make(self._signer))

    @property
    def address(self) -> str:
        """The settlement signer's address (it pays the gas)."""
        return self._signer.address

    @property
    def networks(self) -> tuple[str, ...]:
        return self._networks

    async def verify(
        self,
        payload: PaymentPayload | PaymentPayloadV1,
        requirements: PaymentRequirements | PaymentRequirementsV1,
    ) -> VerifyResponse:
        try:
            result = await self._run(self._facilitator.verify, payload, requirements)
        except SchemeNotFoundError as exc:
            return VerifyResponse(
                is_valid=False, invalid_reason=UNSUPPORTED, invalid_message=str(exc)
            )
        if not result.is_valid:
            await self._unless_unreachable(result.invalid_reason)
        return result

    async def settle(
        self,
        payload: PaymentPayload | PaymentPayloadV1,
        requirements: PaymentRequirements | PaymentRequirementsV1,
    ) -> SettleResponse:
        try:
            result = await self._run(self._facilitator.settle, payload, requirements)
        except SchemeNotFoundError as exc:
            return SettleResponse(
                success=False,
                error_reason=UNSUPPORTED,
                error_message=str(exc),
                transaction="",
                network=requirements.network,
            )
        if not result.success and not result.transaction:
            await self._unless_unreachable(result.error_reason)
        return result

    def get_supported(self) -> SupportedResponse:
        """What this facilitator serves (no I/O: built from its registrations)."""
        return self._facilitator.get_supported()

    async def start(self) -> None:
        """Open the thread pool the blocking calls run in. Does not touch the node, so a
        gateway whose chain is down still starts (and serves challenges)."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(
                max_workers=self._max_workers, thread_name_prefix="x402-local"
            )

    async def refresh_supported(self) -> list[str]:
        """What is supported never changes (it comes from the registrations); report
        whether the node answers, one line per problem, as the remote client does."""
        try:
            await self.ping()
        except FacilitatorUnavailable as exc:
            return [exc.detail]
        return []

    async def ping(self) -> None:
        """Raise `FacilitatorUnavailable` unless the node answers and is one of our chains."""
        chain_id = await self._run(self._chain_id)
        if f"eip155:{chain_id}" not in self._networks:
            raise FacilitatorUnavailable(
                f"RPC {self.rpc_url} is chain {chain_id}, not one of {', '.join(self._networks)}"
            )

    async def close(self) -> None:
        """Stop the pool: queued calls are cancelled, running ones finish."""
        pool, self._pool = self._pool, None
        if pool is not None:
            await asyncio.to_thread(pool.shutdown, wait=True, cancel_futures=True)

    async def __aenter__(self) -> LocalFacilitator:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def _chain_id(self) -> int:
        chain_id: int = self._probe.eth.chain_id
        return chain_id

    async def _unless_unreachable(self, reason: str | None) -> None:
        """Raise `FacilitatorUnavailable` if a failure the SDK reported may be the node's."""
        if reason in _MAYBE_UNREACHABLE:
            await self.ping()

    async def _run(self, fn: Callable[..., T], *args: object) -> T:
        if self._pool is None:
            raise RuntimeError("LocalFacilitator used before start() or after close()")
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._pool, fn, *args)
        except SchemeNotFoundError:
            raise
        except Exception as exc:  # re-raised unless it is the node being unreachable
            if _is_rpc_failure(exc):
                raise FacilitatorUnavailable(f"RPC {self.rpc_url}: {exc}") from exc
            raise
