"""The SDK's async `BatchSettlementChannelManager`, driven from the gateway's event loop
(issue 14, claims).

The manager calls the channel storage synchronously from its coroutines (a Redis round trip
each, with the Redis storage), so each of its coroutines runs on an event loop of its own in
a worker thread (`off_loop`), never on the gateway's. Its facilitator calls come back to the
gateway's loop (`LoopFacilitator`), where the facilitator client lives.

One manager per `Target`: the manager's receiver, token and network are fixed, and its
scheme (here only a carrier of the storage and of the receiver authorizer's key) is the
SDK's own server scheme.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

from x402.mechanisms.evm.batch_settlement.authorizer_signer import AuthorizerSigner
from x402.mechanisms.evm.batch_settlement.server import (
    BatchSettlementChannelManager,
    BatchSettlementEvmScheme,
    BatchSettlementEvmSchemeServerConfig,
    ChannelManagerConfig,
    ChannelStorage,
)
from x402.schemas import (
    PaymentPayload,
    PaymentRequirements,
    SettleResponse,
    SupportedResponse,
    VerifyResponse,
)

from gateway.payment.channel_claims import Target
from gateway.payment.facilitator import Facilitator

T = TypeVar("T")


class LoopFacilitator:
    """What the SDK's manager needs of a facilitator, called from the manager's worker loop
    and run on the gateway's loop."""

    def __init__(self, facilitator: Facilitator, loop: asyncio.AbstractEventLoop) -> None:
        self._facilitator = facilitator
        self._loop = loop

    async def verify(
        self, payload: PaymentPayload, requirements: PaymentRequirements
    ) -> VerifyResponse:
        return await self._on_gateway_loop(self._facilitator.verify(payload, requirements))

    async def _on_gateway_loop(self, work: Coroutine[Any, Any, T]) -> T:
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(work, self._loop))

    def get_supported(self) -> SupportedResponse:
        return self._facilitator.get_supported()

    async def settle(
        self, payload: PaymentPayload, requirements: PaymentRequirements
    ) -> SettleResponse:
        return await self._on_gateway_loop(self._facilitator.settle(payload, requirements))


def sdk_manager(
    target: Target,
    storage: ChannelStorage,
    authorizer: AuthorizerSigner | None,
    facilitator: Facilitator,
) -> BatchSettlementChannelManager:
    """The SDK's manager for `target` (call on the gateway's running loop)."""
    scheme = BatchSettlementEvmScheme(
        target.receiver,
        BatchSettlementEvmSchemeServerConfig(
            storage=storage, receiver_authorizer_signer=authorizer
        ),
    )
    return BatchSettlementChannelManager(
        ChannelManagerConfig(
            scheme=scheme,
            facilitator=LoopFacilitator(facilitator, asyncio.get_running_loop()),
            receiver=target.receiver,
            token=target.token,
            network=target.network,
        )
    )


async def off_loop(work: Coroutine[Any, Any, T]) -> T:
    """Run one of the manager's coroutines on a loop of its own, in a worker thread."""
    return await asyncio.to_thread(asyncio.run, work)
