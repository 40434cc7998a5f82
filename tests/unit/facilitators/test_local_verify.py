"""`verify: local`: the verdicts given in process, and every payment it cannot judge offline
passed to the facilitator (a recording fake here; the e2e test uses the SDK's)."""

from __future__ import annotations

import time
from typing import Any

from x402.schemas import SettleResponse, SupportedResponse, VerifyResponse

from gateway.facilitators.local_verify import LocalVerify
from tests.unit.facilitators.engine import helpers as h


class Recording:
    """The wrapped facilitator: records what reached it."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    async def verify(self, payload: Any, requirements: Any) -> VerifyResponse:
        self.calls.append("verify")
        return VerifyResponse(is_valid=True, payer="0x" + "11" * 20)

    async def settle(self, payload: Any, requirements: Any) -> SettleResponse:
        self.calls.append("settle")
        return SettleResponse(success=True, transaction="0xab", network=h.NETWORK)

    def get_supported(self) -> SupportedResponse:
        return SupportedResponse(kinds=[], extensions=[], signers={})

    async def refresh_supported(self) -> list[str]:
        return []

    async def ping(self) -> None: ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...


async def test_a_good_payment_is_verified_without_the_round_trip() -> None:
    inner = Recording()
    verifier = LocalVerify(inner)
    signer = h.account()
    got = await verifier.verify(h.sdk_signed(signer), h.requirements())
    assert got.is_valid and got.payer == signer.address
    assert inner.calls == [] and verifier.local_verdicts == 1
    settled = await verifier.settle(h.sdk_signed(signer), h.requirements())
    assert settled.success and inner.calls == ["settle"]  # settle always goes out


async def test_wrong_terms_are_refused_in_process() -> None:
    inner = Recording()
    verifier = LocalVerify(inner)
    paid_less = h.sdk_signed(h.account(), h.requirements(amount=999))
    got = await verifier.verify(paid_less, h.requirements(amount=1000))
    assert not got.is_valid and got.invalid_reason is not None and inner.calls == []
    late = LocalVerify(inner, clock=lambda: time.time() + 3600)
    got = await late.verify(h.sdk_signed(h.account()), h.requirements())
    assert not got.is_valid and "valid_before" in str(got.invalid_reason)
    wrong_domain = h.requirements(name="Other Coin")
    got = await verifier.verify(h.sdk_signed(h.account(), h.requirements()), wrong_domain)
    assert inner.calls == ["verify"]  # a signature it cannot match: maybe a contract wallet


async def test_what_it_cannot_judge_goes_to_the_facilitator() -> None:
    inner = Recording()
    verifier = LocalVerify(inner)
    permit2 = h.requirements(assetTransferMethod="permit2")
    assert (await verifier.verify(h.sdk_signed(h.account()), permit2)).is_valid
    assert inner.calls == ["verify"] and verifier.local_verdicts == 0
