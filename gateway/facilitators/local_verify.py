"""`verify: local`: a payment's verify done in process, one network round trip fewer.

Wraps the configured facilitator: `verify` checks an exact EIP-3009 payment itself (the
requirements, the recipient and amount, the time window, the ECDSA signature of `from`)
and, where an RPC URL is known for the payment's network (`networks:`), reads the payer's
token balance and `authorizationState(from, nonce)` in ONE JSON-RPC batch (the settlement
engine's `read_funds`, on kept-alive connections of its own, with a short timeout).
Every other call goes to the facilitator unchanged. A payment this cannot judge (another
scheme or chain, Permit2, a smart wallet's signature, a token without `authorizationState`)
is verified by the facilitator as before.

RPC failure (no answer in time, node error): the facilitator's `/verify` decides, exactly
as with `verify: facilitator`, and the RPC is not asked again for `cooldown` seconds. Not
fail-closed, because the facilitator reads its own chain and is as strict as this read:
falling back costs the round trip this saves, never a check; refusing would turn a
degraded RPC into an outage. Nothing is served unpaid either way: the gateway serves only
after `/settle`, which re-verifies on chain.

The trade-off (README): without an RPC URL, what only the chain knows (balance, a used
nonce) is first checked by `/settle`: a payment that then fails to settle may have cost
one origin call (its content is never served). With one, that remains possible only for
what changes between this read and the settlement (a transfer or a competing settle in
between), or for what the read does not cover (a token that would revert for another
reason, e.g. a blocklist).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from x402.schemas import SettleResponse, SupportedResponse, VerifyResponse

from gateway import formats
from gateway.facilitators.engine import eip3009
from gateway.facilitators.engine.delegate import Payload, Requirements
from gateway.facilitators.engine.rpc import RpcClient, RpcError, RpcUnavailable
from gateway.facilitators.engine.verify import (
    Funds,
    Route,
    funds_reason,
    is_native,
    read_funds,
    route,
)
from gateway.observe.logs import get_logger
from gateway.payment.facilitator import Facilitator
from gateway.payment.networks import caip_from_v1, v1_name

CHAIN_READ_TIMEOUT = 1.0  # seconds: past this, the facilitator's /verify is quicker anyway
MARGIN = 6  # seconds validBefore must be ahead at least (the SDK's 6 s)
COOLDOWN = 10.0  # seconds the RPC of a network rests after a failure (no timeout per request)
log = get_logger("gateway.facilitator")


@dataclass(frozen=True, slots=True)
class Passed:
    """A payment that passed every offline check: what the chain read needs."""

    chain: int
    route: Route
    auth: eip3009.Authorization
    payer: str  # checksummed, as the answers name it


def chain_verdict(funds: Funds, value: int, payer: str) -> VerifyResponse | None:
    """The verdict of the balance and nonce read, or None when only the facilitator can
    give it (the token answered no `authorizationState` or no balance)."""
    if funds.used is None or funds.balance is None:
        return None
    reason, message = funds_reason(funds, value)
    if reason is None:
        return VerifyResponse(is_valid=True, payer=payer)
    return VerifyResponse(
        is_valid=False, invalid_reason=reason, invalid_message=message, payer=payer
    )


def chain_rpc_urls(urls: Mapping[str, str]) -> dict[int, str]:
    """`networks:`'s RPC URLs by EVM chain id (other families have no EIP-3009 to read)."""
    by_chain: dict[int, str] = {}
    for network, url in urls.items():
        chain = formats.chain_id(caip_from_v1(network) or network)
        if chain is not None:
            by_chain.setdefault(chain, url)
    return by_chain


class LocalVerify:
    """The facilitator `inner`, with `verify` answered in process where it can be."""

    def __init__(  # noqa: PLR0913  the wrapped facilitator, then keyword-only knobs
        self,
        inner: Facilitator,
        *,
        rpc_urls: Mapping[str, str] | None = None,
        rpc_timeout: float = CHAIN_READ_TIMEOUT,
        cooldown: float = COOLDOWN,
        clock: Callable[[], float] = time.time,
        signatures: eip3009.SignatureChecks | None = None,
    ) -> None:
        self.inner = inner
        # The verdicts the matcher found for the same payloads (gateway.payment.match):
        # the composition root hands this to the request path too, so one recovery serves both.
        self.signatures = signatures or eip3009.SignatureChecks()
        self._clock = clock
        self._urls = chain_rpc_urls(rpc_urls or {})
        self._rpc_timeout = rpc_timeout
        self._cooldown = cooldown
        self._rpcs: dict[int, RpcClient] = {}
        self._resting: dict[int, float] = {}  # chain id -> monotonic time its RPC is asked again
        self.local_verdicts = 0  # how many verifies skipped the round trip (for tests)
        self.chain_reads = 0  # balance + nonce reads answered
        self.chain_failures = 0  # reads that failed: the facilitator verified instead
        # (network, outcome) per chain read: ok, fallback, or the refusal reason (metrics)
        self.on_chain_read: Callable[[str, str], None] = lambda _network, _outcome: None

    async def verify(self, payload: Payload, requirements: Requirements) -> VerifyResponse:
        checked = self.judge(payload, requirements)
        if isinstance(checked, Passed):
            checked = await self._on_chain(checked)
        if checked is None:
            return await self.inner.verify(payload, requirements)
        self.local_verdicts += 1
        return checked

    def judge(self, payload: Payload, requirements: Requirements) -> VerifyResponse | Passed | None:
        """The offline verdict: a refusal, `Passed` (good as far as no chain is needed), or
        None when only the facilitator (or the chain) can give it."""
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
        return self._terms(Passed(chain, rt, auth, payer))

    def _terms(self, passed: Passed) -> VerifyResponse | Passed | None:
        rt, auth = passed.route, passed.auth
        reason = eip3009.terms_reason(
            auth, pay_to=rt.pay_to, amount=rt.amount, now=int(self._clock()), margin=MARGIN
        )
        if reason is not None:
            return VerifyResponse(is_valid=False, invalid_reason=reason, payer=passed.payer)
        if self.signatures.check(auth, rt.domain) is not eip3009.Sig.MATCH:
            return None  # maybe a contract wallet (EIP-1271): the chain decides
        return passed

    async def _on_chain(self, passed: Passed) -> VerifyResponse | None:
        """The balance and nonce verdict; with no RPC URL for the chain, valid as far as
        the offline checks go (the documented trade-off); None: ask the facilitator."""
        rpc = self._rpcs.get(passed.chain)
        if rpc is None:
            return VerifyResponse(is_valid=True, payer=passed.payer)
        network = f"eip155:{passed.chain}"
        if time.monotonic() < self._resting.get(passed.chain, 0.0):
            self.on_chain_read(network, "fallback")
            return None
        try:
            funds = await read_funds(rpc, passed.route.token, passed.auth)
        except (RpcUnavailable, RpcError) as exc:
            self.chain_failures += 1
            self._resting[passed.chain] = time.monotonic() + self._cooldown
            # the message may name the URL, and RPC URLs often carry an API key
            problem = str(exc).replace(rpc.url, "<rpc_url>")
            log.warning("local_verify_rpc_failed", chain=passed.chain, problem=problem)
            self.on_chain_read(network, "fallback")
            return None
        self.chain_reads += 1
        self._resting.pop(passed.chain, None)
        verdict = chain_verdict(funds, passed.auth.value, passed.payer)
        outcome = "fallback" if verdict is None else verdict.invalid_reason or "ok"
        self.on_chain_read(network, outcome)
        return verdict

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
        if self._urls and not self._rpcs:
            self._rpcs = {
                chain: RpcClient(url, timeout=self._rpc_timeout)
                for chain, url in self._urls.items()
            }
            for rpc in self._rpcs.values():
                await rpc.start()

    async def close(self) -> None:
        rpcs, self._rpcs = self._rpcs, {}
        for rpc in rpcs.values():
            await rpc.close()
        await self.inner.close()
