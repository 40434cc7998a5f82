"""`verify: local`: the verdicts given in process, and every payment it cannot judge offline
passed to the facilitator (a recording fake here; the e2e test uses the SDK's). The chain
read's decision is pure; its round trip goes to a small JSON-RPC node on the test's loop."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from x402.mechanisms.evm.constants import ERR_INSUFFICIENT_BALANCE, ERR_NONCE_ALREADY_USED
from x402.schemas import SettleResponse, SupportedResponse, VerifyResponse

from gateway.demo.chain import free_port
from gateway.facilitators.engine.rpc import RpcError
from gateway.facilitators.engine.verify import Funds, decode_funds
from gateway.facilitators.local_verify import LocalVerify, chain_rpc_urls, chain_verdict
from tests.unit.facilitators.engine import helpers as h
from tests.unit.facilitators.engine.test_rpc import node


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


# --- the chain read: balance and authorizationState in one batch ------------------------


def uint(value: int) -> str:
    return "0x" + value.to_bytes(32, "big").hex()


def revert() -> RpcError:
    return RpcError("eth_call", 3, "execution reverted")


def test_the_funds_decision() -> None:
    payer = "0x" + "11" * 20
    good = chain_verdict(Funds(balance=1000, used=False), 1000, payer)
    assert good is not None and good.is_valid and good.payer == payer
    poor = chain_verdict(Funds(balance=999, used=False), 1000, payer)
    assert poor is not None and not poor.is_valid
    assert (
        poor.invalid_reason == ERR_INSUFFICIENT_BALANCE == "invalid_exact_evm_insufficient_balance"
    )
    used = chain_verdict(Funds(balance=10**9, used=True), 1000, payer)
    assert used is not None and used.invalid_reason == ERR_NONCE_ALREADY_USED
    # nonce first, as the SDK's diagnosis: a used authorization with no funds left is "used"
    both = chain_verdict(Funds(0, True), 1000, payer)
    assert both is not None and both.invalid_reason == ERR_NONCE_ALREADY_USED
    # what the token did not answer is the facilitator's to judge
    assert chain_verdict(Funds(balance=1000, used=None), 1000, payer) is None
    assert chain_verdict(Funds(balance=None, used=False), 1000, payer) is None


def test_decoding_the_two_answers() -> None:
    assert decode_funds(uint(5), uint(0)) == Funds(balance=5, used=False)
    assert decode_funds(uint(5), uint(1)) == Funds(balance=5, used=True)
    assert decode_funds(revert(), revert()) == Funds(
        balance=None, used=None
    )  # the contract said no
    assert decode_funds("0x", uint(0)) == Funds(balance=None, used=False)  # not a uint
    node_error = RpcError("eth_call", -32000, "header not found")
    with pytest.raises(RpcError):  # the node, not the token: no verdict from it
        decode_funds(uint(5), node_error)


def test_rpc_urls_by_chain() -> None:
    urls = {"eip155:84532": "http://a", "base-sepolia": "http://b", "solana:abc": "http://c"}
    assert chain_rpc_urls(urls) == {84532: "http://a"}


def answers(balance: Any, used: Any) -> Callable[[Any], Any]:
    def answer(body: Any) -> Any:
        out = []
        for call, value in zip(body, (balance, used), strict=True):
            if isinstance(value, RpcError):
                error = {"code": value.code, "message": value.message}
                out.append({"jsonrpc": "2.0", "id": call["id"], "error": error})
            else:
                out.append({"jsonrpc": "2.0", "id": call["id"], "result": value})
        return out

    return answer


@contextlib.asynccontextmanager
async def verifier_on(
    answer: Callable[[Any], Any],
) -> AsyncIterator[tuple[LocalVerify, Recording, list[Any]]]:
    inner = Recording()
    async with node(answer) as (url, seen):
        verifier = LocalVerify(inner, rpc_urls={h.NETWORK: url})
        await verifier.start()
        try:
            yield verifier, inner, seen
        finally:
            await verifier.close()


async def test_balance_and_nonce_are_read_in_one_batch() -> None:
    signer = h.account()
    async with verifier_on(answers(uint(1000), uint(0))) as (verifier, inner, seen):
        got = await verifier.verify(h.sdk_signed(signer), h.requirements())
    assert got.is_valid and got.payer == signer.address and inner.calls == []
    assert len(seen) == 1 and [c["method"] for c in seen[0]] == ["eth_call", "eth_call"]
    balance_call, state_call = (c["params"][0] for c in seen[0])
    assert balance_call["to"] == state_call["to"] == h.TOKEN.lower()
    assert balance_call["data"].startswith("0x70a08231")  # balanceOf(address)
    assert balance_call["data"].endswith(signer.address[2:].lower())
    assert state_call["data"].startswith("0xe94a0102")  # authorizationState(address,bytes32)
    assert verifier.chain_reads == 1 and verifier.local_verdicts == 1


async def test_the_chain_refuses_before_the_facilitator_is_asked() -> None:
    async with verifier_on(answers(uint(999), uint(0))) as (verifier, inner, _):
        poor = await verifier.verify(h.sdk_signed(h.account()), h.requirements())
    assert not poor.is_valid and poor.invalid_reason == ERR_INSUFFICIENT_BALANCE
    async with verifier_on(answers(uint(10**9), uint(1))) as (verifier, inner, _):
        used = await verifier.verify(h.sdk_signed(h.account()), h.requirements())
    assert not used.is_valid and used.invalid_reason == ERR_NONCE_ALREADY_USED
    assert inner.calls == []


async def test_what_the_token_does_not_answer_goes_to_the_facilitator() -> None:
    async with verifier_on(answers(uint(1000), revert())) as (verifier, inner, _):
        got = await verifier.verify(h.sdk_signed(h.account()), h.requirements())
    assert got.is_valid and inner.calls == ["verify"] and verifier.local_verdicts == 0


async def test_an_rpc_failure_falls_back_to_the_facilitator_then_rests() -> None:
    inner = Recording()
    dead = f"http://user:secret@127.0.0.1:{free_port()}/key"
    verifier = LocalVerify(inner, rpc_urls={h.NETWORK: dead}, cooldown=3600)
    await verifier.start()
    try:
        first = await verifier.verify(h.sdk_signed(h.account()), h.requirements())
        second = await verifier.verify(h.sdk_signed(h.account()), h.requirements())
    finally:
        await verifier.close()
    # the facilitator decided both; the second did not wait for the RPC again
    assert first.is_valid and second.is_valid and inner.calls == ["verify", "verify"]
    assert verifier.chain_failures == 1 and verifier.chain_reads == 0


async def test_offline_refusals_need_no_chain_read() -> None:
    async with verifier_on(answers(uint(1000), uint(0))) as (verifier, inner, seen):
        paid_less = h.sdk_signed(h.account(), h.requirements(amount=999))
        got = await verifier.verify(paid_less, h.requirements(amount=1000))
        permit2 = h.requirements(assetTransferMethod="permit2")
        await verifier.verify(h.sdk_signed(h.account()), permit2)
    assert not got.is_valid and seen == [] and inner.calls == ["verify"]


async def test_a_v1_payment_is_read_on_its_chain_too() -> None:
    async with verifier_on(answers(uint(999), uint(0))) as (verifier, inner, seen):
        poor = await verifier.verify(h.sdk_signed_v1(h.account()), h.requirements_v1())
    assert not poor.is_valid and poor.invalid_reason == ERR_INSUFFICIENT_BALANCE
    assert len(seen) == 1 and inner.calls == []
