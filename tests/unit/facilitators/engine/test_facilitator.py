"""The engine's facilitator face without a chain: routing, local refusals (no I/O), the
delegate seam, and failing closed when the node is gone."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from x402.mechanisms.evm.constants import (
    ERR_AUTHORIZATION_VALUE_MISMATCH,
    ERR_EIP3009_NOT_SUPPORTED,
    ERR_INSUFFICIENT_BALANCE,
    ERR_INVALID_SIGNATURE,
    ERR_MISSING_EIP712_DOMAIN,
    ERR_NETWORK_MISMATCH,
    ERR_NONCE_ALREADY_USED,
    ERR_RECIPIENT_MISMATCH,
    ERR_VALID_BEFORE_EXPIRED,
)
from x402.schemas import (
    PaymentPayload,
    SettleResponse,
    SupportedKind,
    SupportedResponse,
    VerifyResponse,
)

from gateway.demo.chain import free_port
from gateway.errors import FacilitatorUnavailable
from gateway.facilitators.engine import EngineFacilitator, EngineOptions
from gateway.facilitators.engine.rpc import RpcError
from gateway.facilitators.engine.verify import (
    ERR_INVALID_REQUIREMENTS,
    ChainView,
    chain_reason,
    is_native,
    route,
)
from gateway.payment.eip3009 import ERR_INVALID_PAYLOAD, Sig
from tests.unit.facilitators.engine.helpers import (
    CHAIN_ID,
    NETWORK,
    account,
    eth_account_signed,
    requirements,
    requirements_v1,
    sdk_signed,
    sdk_signed_v1,
)

SETTLER = "0x" + "22" * 32


def dead() -> str:
    return f"http://127.0.0.1:{free_port()}"


@pytest.fixture
async def engine() -> AsyncIterator[EngineFacilitator]:
    async with EngineFacilitator(
        EngineOptions(rpc_url=dead(), keys=(SETTLER,), chain_id=CHAIN_ID, rpc_timeout=2)
    ) as e:
        yield e


def moved(payment: PaymentPayload, **changes: Any) -> PaymentPayload:
    return payment.model_copy(update={"accepted": payment.accepted.model_copy(update=changes)})


def test_which_payments_are_native() -> None:
    payer = account()
    v2, v1 = sdk_signed(payer), sdk_signed_v1(payer)
    assert is_native(v2, requirements(), CHAIN_ID, "base-sepolia")
    assert is_native(v1, requirements_v1(), CHAIN_ID, "base-sepolia")
    assert not is_native(v1, requirements_v1(), CHAIN_ID, None)
    assert not is_native(v2, requirements(), 8453, "base")
    assert not is_native(v2, requirements(assetTransferMethod="permit2"), CHAIN_ID, None)
    upto = requirements().model_copy(update={"scheme": "upto"})
    assert not is_native(moved(v2, scheme="upto"), upto, CHAIN_ID, None)
    permit2 = v2.model_copy(update={"payload": {"permit2Authorization": {}, "signature": "0x"}})
    assert not is_native(permit2, requirements(), CHAIN_ID, None)


def test_routes() -> None:
    v2 = sdk_signed(account())
    rt = route(v2, requirements(), CHAIN_ID)
    assert not isinstance(rt, str) and rt.amount == 1000 and rt.domain.name == "USD Coin"
    assert route(moved(v2, network="eip155:1"), requirements(), CHAIN_ID) == ERR_NETWORK_MISMATCH
    no_domain = requirements().model_copy(update={"extra": {}})
    assert route(v2, no_domain, CHAIN_ID) == ERR_MISSING_EIP712_DOMAIN
    bad = requirements().model_copy(update={"amount": "1e3"})
    assert route(v2, bad, CHAIN_ID) == ERR_INVALID_REQUIREMENTS
    v1req = requirements_v1().model_copy(update={"extra": '{"name":"USD Coin","version":"2"}'})
    v1 = route(sdk_signed_v1(account()), v1req, CHAIN_ID)
    assert not isinstance(v1, str) and v1.network == "base-sepolia"


def view(**changes: Any) -> ChainView:
    fields: dict[str, Any] = {
        "payer_has_code": False,
        "balance": 10**6,
        "used": False,
        "simulation": None,
        "token_has_code": None,
    }
    fields.update(changes)
    return ChainView(**fields)


def test_chain_verdicts() -> None:
    assert chain_reason(view(), Sig.MATCH, 1000) == (None, None)
    assert chain_reason(view(used=True), Sig.MATCH, 1000)[0] == ERR_NONCE_ALREADY_USED
    assert chain_reason(view(used=None), Sig.MATCH, 1000)[0] == ERR_EIP3009_NOT_SUPPORTED
    assert chain_reason(view(balance=999), Sig.MATCH, 1000)[0] == ERR_INSUFFICIENT_BALANCE
    assert chain_reason(view(), Sig.MISMATCH, 1000)[0] == ERR_INVALID_SIGNATURE
    assert (
        chain_reason(view(token_has_code=False), Sig.MATCH, 1000)[0]
        == "asset_not_deployed_contract"
    )
    # A contract payer: EIP-1271 on chain decides, through the simulation.
    assert chain_reason(view(payer_has_code=True), Sig.MISMATCH, 1000) == (None, None)
    revert = RpcError("eth_call", 3, "execution reverted: FiatTokenV2: invalid signature")
    reason, message = chain_reason(view(payer_has_code=True, simulation=revert), Sig.CONTRACT, 1000)
    assert reason == ERR_INVALID_SIGNATURE and message is not None and "invalid" in message
    paused = RpcError("eth_call", 3, "execution reverted: Pausable: paused")
    assert (
        chain_reason(view(simulation=paused), Sig.MATCH, 1000)[0]
        == "invalid_exact_evm_transaction_simulation_failed"
    )


async def test_supported_needs_no_node(engine: EngineFacilitator) -> None:
    supported = engine.get_supported()
    kinds = {(k.x402_version, k.scheme, k.network) for k in supported.kinds}
    assert kinds == {(2, "exact", NETWORK), (1, "exact", "base-sepolia")}
    assert supported.signers == {"eip155:*": engine.addresses} and len(engine.addresses) == 1
    assert engine.network == NETWORK


async def test_local_refusals_need_no_node(engine: EngineFacilitator) -> None:
    payer = account()
    cases = [
        (
            sdk_signed(payer, requirements(amount=999)),
            requirements(),
            ERR_AUTHORIZATION_VALUE_MISMATCH,
        ),
        (
            sdk_signed(payer, requirements(pay_to=payer.address)),
            requirements(),
            ERR_RECIPIENT_MISMATCH,
        ),
        (
            sdk_signed(payer).model_copy(
                update={"payload": eth_account_signed(payer, valid_before=int(time.time()) + 3)}
            ),
            requirements(),
            ERR_VALID_BEFORE_EXPIRED,
        ),
        (
            sdk_signed(payer).model_copy(update={"payload": {"authorization": {}}}),
            requirements(),
            ERR_INVALID_PAYLOAD,
        ),
        (moved(sdk_signed(payer), network="eip155:1"), requirements(), ERR_NETWORK_MISMATCH),
    ]
    for payment, req, reason in cases:
        verified = await engine.verify(payment, req)
        assert (verified.is_valid, verified.invalid_reason) == (False, reason)
        settled = await engine.settle(payment, req)
        assert (settled.success, settled.error_reason, settled.transaction) == (False, reason, "")


async def test_a_dead_node_fails_closed(engine: EngineFacilitator) -> None:
    payment = sdk_signed(account())
    with pytest.raises(FacilitatorUnavailable):
        await engine.verify(payment, requirements())
    with pytest.raises(FacilitatorUnavailable):
        await engine.settle(payment, requirements())  # nothing could be sent
    with pytest.raises(FacilitatorUnavailable):
        await engine.ping()
    problems = await engine.refresh_supported()
    assert len(problems) == 1 and "RPC" in problems[0]
    assert engine.stats.transactions == 0


async def test_without_a_chain_id_start_asks_the_node() -> None:
    engine = EngineFacilitator(EngineOptions(rpc_url=dead(), keys=(SETTLER,), rpc_timeout=2))
    try:
        with pytest.raises(FacilitatorUnavailable):
            await engine.start()
        with pytest.raises(RuntimeError, match="chain id"):
            engine.get_supported()
    finally:
        await engine.close()


async def test_other_schemes_are_unsupported_without_a_delegate(
    engine: EngineFacilitator,
) -> None:
    req = requirements().model_copy(update={"network": "eip155:1"})
    payment = moved(sdk_signed(account()), network="eip155:1")
    verified = await engine.verify(payment, req)
    assert (verified.is_valid, verified.invalid_reason) == (False, "unsupported_scheme")
    settled = await engine.settle(payment, req)
    assert (settled.success, settled.error_reason) == (False, "unsupported_scheme")


class FakeDelegate:
    def __init__(self) -> None:
        self.calls: list[str] = []
        self.started = self.closed = False

    async def verify(self, payload: Any, requirements: Any) -> VerifyResponse:
        self.calls.append("verify")
        return VerifyResponse(is_valid=True, payer="0xdelegate")

    async def settle(self, payload: Any, requirements: Any) -> SettleResponse:
        self.calls.append("settle")
        return SettleResponse(success=True, transaction="0x01", network=requirements.network)

    def get_supported(self) -> SupportedResponse:
        return SupportedResponse(
            kinds=[SupportedKind(x402_version=2, scheme="upto", network=NETWORK)],
            extensions=["bazaar"],
            signers={"eip155:*": ["0xD"]},
        )

    async def start(self) -> None:
        self.started = True

    async def close(self) -> None:
        self.closed = True


async def test_the_delegate_takes_what_the_engine_does_not_settle() -> None:
    delegate = FakeDelegate()
    opts = EngineOptions(rpc_url=dead(), keys=(SETTLER,), chain_id=CHAIN_ID, rpc_timeout=2)
    async with EngineFacilitator(opts, delegate=delegate) as engine:
        assert delegate.started
        upto = requirements().model_copy(update={"scheme": "upto"})
        payment = moved(sdk_signed(account()), scheme="upto")
        assert (await engine.verify(payment, upto)).payer == "0xdelegate"
        assert (await engine.settle(payment, upto)).transaction == "0x01"
        assert delegate.calls == ["verify", "settle"]
        supported = engine.get_supported()
        assert (2, "upto", NETWORK) in {
            (k.x402_version, k.scheme, k.network) for k in supported.kinds
        }
        assert supported.extensions == ["bazaar"]
        assert supported.signers["eip155:*"] == [*engine.addresses, "0xD"]
        # Native payments never reach it (the node is dead: the engine fails closed itself).
        with pytest.raises(FacilitatorUnavailable):
            await engine.verify(sdk_signed(account()), requirements())
        assert delegate.calls == ["verify", "settle"]
    assert delegate.closed


async def test_before_start_it_refuses_to_settle() -> None:
    engine = EngineFacilitator(EngineOptions(rpc_url=dead(), keys=(SETTLER,), chain_id=CHAIN_ID))
    with pytest.raises(RuntimeError):
        await engine.settle(sdk_signed(account()), requirements())
    await engine.close()


NASTY: list[Any] = [
    {},
    {"authorization": None, "signature": None},
    {"authorization": [], "signature": "0x00"},
    {"authorization": {"from": 5}, "signature": "0x00"},
    {
        "authorization": {
            "from": "0x" + "11" * 20,
            "to": "0x" + "22" * 20,
            "value": "1000",
            "validAfter": "0",
            "validBefore": "9" * 80,
            "nonce": "0x" + "00" * 32,
        },
        "signature": "0x" + "00" * 65,
    },
    {
        "authorization": {
            "from": "0x" + "11" * 20,
            "to": "0x" + "22" * 20,
            "value": {"$gt": 0},
            "validAfter": "0",
            "validBefore": "1",
            "nonce": "0x" + "00" * 32,
        },
        "signature": "0x00",
    },
    {"permit2Authorization": "x", "signature": "0x00"},
    {"authorization": {"nonce": "0x" + "ab" * 32}, "signature": "0x" + "ff" * 10_000},
]


async def test_malformed_payloads_get_a_clean_invalid_answer(engine: EngineFacilitator) -> None:
    template = sdk_signed(account())
    for payload in NASTY:
        payment = template.model_copy(update={"payload": payload})
        verified = await engine.verify(payment, requirements())
        settled = await engine.settle(payment, requirements())
        assert not verified.is_valid and verified.invalid_reason
        assert not settled.success and settled.error_reason and settled.transaction == ""
    assert engine.stats.transactions == 0
