"""What the gateway needs of a facilitator: the SDK's `FacilitatorClient`, plus its life.

Remote clients, the in-process settlement engine and the channel bridge all answer to it.
"""

from __future__ import annotations

from typing import Protocol

from x402.schemas import (
    PaymentPayload,
    PaymentRequirements,
    SettleResponse,
    SupportedResponse,
    VerifyResponse,
)
from x402.schemas.v1 import PaymentPayloadV1, PaymentRequirementsV1


class Facilitator(Protocol):
    """What the gateway needs of a facilitator (the SDK's `FacilitatorClient`, plus life)."""

    async def verify(
        self,
        payload: PaymentPayload | PaymentPayloadV1,
        requirements: PaymentRequirements | PaymentRequirementsV1,
    ) -> VerifyResponse: ...

    async def settle(
        self,
        payload: PaymentPayload | PaymentPayloadV1,
        requirements: PaymentRequirements | PaymentRequirementsV1,
    ) -> SettleResponse: ...

    def get_supported(self) -> SupportedResponse: ...

    async def refresh_supported(self) -> list[str]: ...

    async def ping(self) -> None: ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...
