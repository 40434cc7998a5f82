"""`verify: local`: a payment's verify done in process, one network round trip fewer.

Wraps the configured facilitator: `verify` checks an exact EIP-3009 payment itself (the
requirements, the recipient and amount, the time window, the ECDSA signature of `from`),
every other call goes to the facilitator unchanged. Only a verdict that needs no chain is
given here: a payment this cannot judge offline (another scheme or chain, Permit2, a smart
wallet's signature) is verified by the facilitator as before.

The trade-off (README): what only the chain knows (the payer's balance, whether the
authorization was already used) is first checked by the facilitator's `/settle`, which
re-verifies anyway. A payment that then fails to settle may have cost one origin call;
its content is never served (the gateway serves only after a successful settle).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from x402.schemas import SettleResponse, SupportedResponse, VerifyResponse

from gateway import formats
from gateway.facilitators.engine import eip3009
from gateway.facilitators.engine.delegate import Payload, Requirements
from gateway.facilitators.engine.verify import Route, is_native, route
from gateway.payment.engine import Facilitator
from gateway.payment.networks import caip_from_v1, v1_name


class LocalVerify:
    """The facilitator `inner`, with `verify` answered in process where it can be."""

    def __init__(
        self, inner: Facilitator, *, clock: Callable[[], float] = time.time, margin: int = 6
    ) -> None:
        self.inner = inner
        self._clock = clock
        self._margin = margin  # validBefore at least this far ahead (the SDK's 6 s)
        self.local_verdicts = 0  # how many verifies skipped the round trip (for tests)

    async def verify(self, payload: Payload, requirements: Requirements) -> VerifyResponse:
        verdict = self.judge(payload, requirements)
        if verdict is None:
            return await self.inner.verify(payload, requirements)
        self.local_verdicts += 1
        return verdict

    def judge(self, payload: Payload, requirements: Requirements) -> VerifyResponse | None:
        """The verdict, or None when only the facilitator (or the chain) can give it."""
        network = str(requirements.network)
        chain = formats.chain_id(caip_from_v1(network) or network)
        if chain is None or not is_native(payload, requirements, chain, v1_name(f"eip155:{chain}")):
            return None
        rt = route(payload, requirements, chain)
        try:
            auth = eip3009.parse(payload.payload)
        except eip3009.Malformed as exc:
            return VerifyResponse(
                is_valid=False, invalid_reason=eip3009.ERR_INVALID_PAYLOAD, invalid_message=str(exc)
            )
        payer = eip3009.checksummed(auth.payer)
        if isinstance(rt, str):
            return VerifyResponse(is_valid=False, invalid_reason=rt, payer=payer)
        return self._terms(rt, auth, payer)

    def _terms(self, rt: Route, auth: eip3009.Authorization, payer: str) -> VerifyResponse | None:
        reason = eip3009.terms_reason(
            auth, pay_to=rt.pay_to, amount=rt.amount, now=int(self._clock()), margin=self._margin
        )
        if reason is not None:
            return VerifyResponse(is_valid=False, invalid_reason=reason, payer=payer)
        if eip3009.check_signature(auth, rt.domain) is not eip3009.Sig.MATCH:
            return None  # maybe a contract wallet (EIP-1271): the chain decides
        return VerifyResponse(is_valid=True, payer=payer)

    async def settle(self, payload: Payload, requirements: Requirements) -> SettleResponse:
        return await self.inner.settle(payload, requirements)

    def get_supported(self) -> SupportedResponse:
        return self.inner.get_supported()

    async def refresh_supported(self) -> list[str]:
        return await self.inner.refresh_supported()

    async def ping(self) -> None:
        await self.inner.ping()

    async def start(self) -> None:
        await self.inner.start()

    async def close(self) -> None:
        await self.inner.close()
