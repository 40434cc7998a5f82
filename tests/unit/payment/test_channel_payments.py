"""The channel side of `Payments` (gateway/payment/channel_payments.py): the fast path's
requirements, completed from the facilitator's /supported once per answer."""

from __future__ import annotations

import dataclasses
from types import MappingProxyType, SimpleNamespace
from typing import Any

from x402.schemas import SupportedKind, SupportedResponse

from gateway.payment.channel_payments import ChannelPayments
from gateway.payment.requirements import requirement_v2
from tests.unit.wire_helpers import requirement

NETWORK = "eip155:84532"
FIRST, SECOND = "0x" + "1a" * 20, "0x" + "2b" * 20
# No authorizer of the gateway's own: the facilitator's completes the requirements.
BATCH = requirement(
    scheme="batch-settlement",
    network=NETWORK,
    extra=MappingProxyType({"name": "USDC", "version": "2", "withdrawDelay": 900}),
)


def supported(authorizer: str) -> SupportedResponse:
    kind = SupportedKind(
        x402_version=2,
        scheme="batch-settlement",
        network=NETWORK,
        extra={"receiverAuthorizer": authorizer},
    )
    return SupportedResponse(kinds=[kind])


def claim_for(req: Any) -> Any:
    return SimpleNamespace(
        matched=SimpleNamespace(requirement=req, requirements=requirement_v2(req))
    )


def test_the_fast_path_completes_a_requirement_once_per_supported_answer() -> None:
    answers = [supported(FIRST)]
    channel = ChannelPayments(None, lambda: answers[-1])  # type: ignore[arg-type]
    claim = claim_for(BATCH)
    first: Any = channel.fast_requirements(claim.matched)
    assert first.extra["receiverAuthorizer"] == FIRST
    assert channel.fast_requirements(claim.matched) is first  # not copied per voucher
    assert first == channel.requirements(claim)  # what the SDK's path is given
    answers.append(supported(SECOND))  # /supported refreshed: completed anew
    again: Any = channel.fast_requirements(claim.matched)
    assert again.extra["receiverAuthorizer"] == SECOND
    other = claim_for(dataclasses.replace(BATCH, amount=BATCH.amount + 1))  # another route's
    assert channel.fast_requirements(other.matched).amount == str(BATCH.amount + 1)  # type: ignore[union-attr]
    assert channel.fast_requirements(claim.matched).amount == str(BATCH.amount)  # type: ignore[union-attr]
