"""The seam for what the engine does not settle itself (Permit2 `exact`, `upto`,
`batch-settlement`, other chains): a synchronous SDK facilitator run in a thread pool.

The engine asks its delegate only for payments it does not handle natively; without a
delegate those are answered `unsupported_scheme`. The delegate must sign with a key of its
own: it manages that key's nonces through web3, the engine manages its keys in process, and
two managers of one key would take the same nonce twice.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol, TypeVar

import requests
from web3.exceptions import ProviderConnectionError, TimeExhausted
from x402.schemas import (
    PaymentPayload,
    PaymentRequirements,
    SchemeNotFoundError,
    SettleResponse,
    SupportedResponse,
    VerifyResponse,
)
from x402.schemas.v1 import PaymentPayloadV1, PaymentRequirementsV1

from ...errors import FacilitatorUnavailable
from ..claim_payout import ClaimPayoutSigner

T = TypeVar("T")
Payload = PaymentPayload | PaymentPayloadV1
Requirements = PaymentRequirements | PaymentRequirementsV1
UNSUPPORTED = "unsupported_scheme"
_RPC_FAILURES = (requests.RequestException, ProviderConnectionError, TimeExhausted, OSError)


class SyncFacilitator(Protocol):
    """The SDK's `x402FacilitatorSync` surface."""

    def verify(self, payload: Payload, requirements: Requirements) -> VerifyResponse: ...

    def settle(self, payload: Payload, requirements: Requirements) -> SettleResponse: ...

    def get_supported(self) -> SupportedResponse: ...


class Delegate(Protocol):
    async def verify(self, payload: Payload, requirements: Requirements) -> VerifyResponse: ...

    async def settle(self, payload: Payload, requirements: Requirements) -> SettleResponse: ...

    def get_supported(self) -> SupportedResponse: ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...


def unsupported_verify(message: str) -> VerifyResponse:
    return VerifyResponse(is_valid=False, invalid_reason=UNSUPPORTED, invalid_message=message)


def unsupported_settle(message: str, network: str) -> SettleResponse:
    return SettleResponse(
        success=False,
        error_reason=UNSUPPORTED,
        error_message=message,
        transaction="",
        network=network,
    )


def _is_rpc_failure(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    for _ in range(8):  # bounded: a cause chain can loop
        if seen is None:
            return False
        if isinstance(seen, _RPC_FAILURES):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


class ThreadDelegate:
    """A synchronous facilitator, each call in a bounded thread pool, never on the loop."""

    def __init__(self, inner: SyncFacilitator, *, max_workers: int = 4) -> None:
        self._inner = inner
        self._max_workers = max_workers
        self._pool: ThreadPoolExecutor | None = None

    @classmethod
    def sdk_exact(
        cls,
        rpc_url: str,
        private_key: str,
        networks: Sequence[str],
        authorizer_key: str | None = None,
    ) -> ThreadDelegate:
        """The SDK's own `exact` EVM facilitator (EIP-3009 and Permit2) on one node and key,
        and its `batch-settlement` one (channel deposits, claims, refunds), whose receiver
        authorizer is `authorizer_key` (the gateway's `channels.authorizer_key`) or else this
        key: it only signs EIP-712 claims and refunds, and /supported advertises it."""
        from x402 import x402FacilitatorSync
        from x402.mechanisms.evm import FacilitatorWeb3Signer
        from x402.mechanisms.evm.batch_settlement.authorizer_signer import LocalAuthorizerSigner
        from x402.mechanisms.evm.batch_settlement.facilitator.scheme import (
            BatchSettlementEvmFacilitator,
        )
        from x402.mechanisms.evm.exact import register_exact_evm_facilitator

        facilitator = x402FacilitatorSync()
        signer = FacilitatorWeb3Signer(private_key=private_key, rpc_url=rpc_url)
        register_exact_evm_facilitator(facilitator, signer, list(networks))
        authorizer = LocalAuthorizerSigner(authorizer_key or private_key)
        # A claim also pays the receiver out, in one transaction (facilitators/claim_payout.py).
        batch = BatchSettlementEvmFacilitator(
            ClaimPayoutSigner(signer), authorizer_signer=authorizer
        )
        facilitator.register(list(networks), batch)
        return cls(facilitator)

    async def start(self) -> None:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self._max_workers, thread_name_prefix="x402-delegate")

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await asyncio.to_thread(pool.shutdown, wait=True, cancel_futures=True)

    def get_supported(self) -> SupportedResponse:
        return self._inner.get_supported()

    async def verify(self, payload: Payload, requirements: Requirements) -> VerifyResponse:
        try:
            return await self._run(self._inner.verify, payload, requirements)
        except SchemeNotFoundError as exc:
            return unsupported_verify(str(exc))

    async def settle(self, payload: Payload, requirements: Requirements) -> SettleResponse:
        try:
            return await self._run(self._inner.settle, payload, requirements)
        except SchemeNotFoundError as exc:
            return unsupported_settle(str(exc), str(requirements.network))

    async def _run(
        self, fn: Callable[[Payload, Requirements], T], payload: Payload, requirements: Requirements
    ) -> T:
        if self._pool is None:
            raise RuntimeError("ThreadDelegate used before start() or after close()")
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._pool, fn, payload, requirements)
        except SchemeNotFoundError:
            raise
        except Exception as exc:  # re-raised unless it is the node being unreachable
            if _is_rpc_failure(exc):
                raise FacilitatorUnavailable(f"delegate: {exc}") from exc
            raise
