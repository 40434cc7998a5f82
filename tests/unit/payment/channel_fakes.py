"""Channels as the SDK's server scheme leaves them in storage, and a facilitator that records
what the SDK's channel manager sends it (unit tests only: no chain)."""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass, field

from x402.mechanisms.evm.batch_settlement.errors import ERR_NOTHING_TO_SETTLE
from x402.mechanisms.evm.batch_settlement.server.storage import Channel, ChannelStorage
from x402.mechanisms.evm.batch_settlement.types import ChannelConfig
from x402.mechanisms.evm.batch_settlement.utils import compute_channel_id
from x402.schemas import PaymentPayload, PaymentRequirements, SettleResponse, SupportedResponse

NETWORK = "eip155:84532"
RECEIVER = "0x" + "33" * 20
TOKEN = "0x" + "55" * 20
AUTHORIZER = "0x" + "44" * 20


def new_channel(
    *,
    charged: int = 0,
    claimed: int = 0,
    receiver: str = RECEIVER,
    token: str = TOKEN,
    network: str = NETWORK,
    withdraw_requested_at: int = 0,
    authorizer: str = AUTHORIZER,
) -> Channel:
    config = ChannelConfig(
        payer="0x" + os.urandom(20).hex(),
        payer_authorizer="0x" + "22" * 20,
        receiver=receiver,
        receiver_authorizer=authorizer,
        token=token,
        withdraw_delay=900,
        salt="0x" + os.urandom(32).hex(),
    )
    return Channel(
        channel_id=compute_channel_id(config, network),
        channel_config=config,
        charged_cumulative_amount=str(charged),
        signed_max_claimable=str(charged),
        signature="0x" + "ab" * 65,
        balance="1000000",
        total_claimed=str(claimed),
        withdraw_requested_at=withdraw_requested_at,
    )


def put(storage: ChannelStorage, channel: Channel) -> Channel:
    storage.update_channel(channel.channel_id, lambda _current: channel)
    return channel


@dataclass
class RecordingFacilitator:
    """Answers the manager's claim and settle payloads; `fail` makes the next ones fail."""

    sent: list[dict[str, object]] = field(default_factory=list)
    fail: dict[str, str] = field(default_factory=dict)  # payload type -> error reason
    delay: float = 0.0
    claimed_unsettled: bool = False
    refuse_authorizer: str | None = None  # claims naming it fail (not the one that signs)

    async def settle(
        self, payload: PaymentPayload, requirements: PaymentRequirements
    ) -> SettleResponse:
        await asyncio.sleep(self.delay)
        kind = str(payload.payload["type"])
        self.sent.append(payload.payload)
        reason = self.fail.get(kind)
        if kind == "claim" and self.refuse_authorizer is not None:
            named = {
                c["voucher"]["channel"]["receiverAuthorizer"] for c in payload.payload["claims"]
            }
            if self.refuse_authorizer in named:
                reason = "invalid_batch_settlement_evm_authorizer_address_mismatch"
        if kind == "settle" and not self.claimed_unsettled:
            reason = reason or ERR_NOTHING_TO_SETTLE
        if reason is not None:
            return SettleResponse(
                success=False, error_reason=reason, transaction="", network=NETWORK
            )
        if kind == "claim":
            self.claimed_unsettled = True
        if kind == "settle":
            self.claimed_unsettled = False
        return SettleResponse(
            success=True, transaction=f"0x{len(self.sent):064x}", network=requirements.network
        )

    async def verify(self, payload: PaymentPayload, requirements: PaymentRequirements) -> None:
        raise AssertionError("the claim schedule never verifies")

    def get_supported(self) -> SupportedResponse:
        return SupportedResponse(kinds=[], extensions=[], signers={})

    def kinds(self) -> list[str]:
        return [str(p["type"]) for p in self.sent]
