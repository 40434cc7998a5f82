"""The settlement engine on the session's anvil (automine), real token, SDK-signed payments.

Every money assertion is read from the chain (the token's Transfer logs and
authorizationState), never from what the engine says about itself.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import pytest
from eth_account import Account
from x402.mechanisms.evm.constants import (
    ERR_AUTHORIZATION_VALUE_MISMATCH,
    ERR_INSUFFICIENT_BALANCE,
    ERR_INVALID_SIGNATURE,
    ERR_NONCE_ALREADY_USED,
    ERR_RECIPIENT_MISMATCH,
    ERR_VALID_BEFORE_EXPIRED,
)

from gateway.demo import chain as chainlib
from gateway.demo.payer import authorization_of, sign_requirements_v1
from gateway.errors import FacilitatorUnavailable
from tests.e2e import engine_parts as parts
from tests.e2e.conftest import Chain

pytestmark = pytest.mark.e2e
AMOUNT = 1000


@pytest.fixture(scope="module")
def keys(chain: Chain) -> tuple[str, ...]:
    return parts.settler_keys(chain.rpc_url, 3)


def fresh_payee() -> str:
    return str(chainlib.new_account().address)


async def test_pipelined_settlements_from_three_keys_at_concurrency_32(
    chain: Chain, keys: tuple[str, ...]
) -> None:
    pay_to = fresh_payee()
    req = parts.requirements(chain.local, pay_to, AMOUNT)
    good = await parts.fresh_payments(chain.local, req, 28)
    broke = await parts.fresh_payments(chain.local, req, 4, balance=AMOUNT - 1)
    payments = good + broke
    counts = [chain.tx_count(parts.address_of(k)) for k in keys]
    events: list[tuple[str, float]] = []
    async with parts.engine(chain.rpc_url, keys, observer=lambda *e: events.append(e)) as engine:
        results = await asyncio.gather(*(engine.settle(p, req) for p in payments))
        assert engine.stats.transactions == 28 and engine.stats.refused == 4
        assert sum(s.in_flight for s in engine.key_states()) <= 3 * 28
    assert [v for n, v in events if n == "batch_size"] == [1] * 28
    assert len([v for n, v in events if n == "receipt_latency" and v > 0]) == 28
    assert [r.success for r in results] == [True] * 28 + [False] * 4
    assert {r.error_reason for r in results[28:]} == {ERR_INSUFFICIENT_BALANCE}
    assert all(r.transaction == "" for r in results[28:])  # refused: nothing was sent
    parts.assert_settled_exactly(chain.local, pay_to, payments, results, AMOUNT)
    sent = [chain.tx_count(parts.address_of(k)) - c for k, c in zip(keys, counts, strict=True)]
    assert sum(sent) == 28 and all(n > 0 for n in sent)  # every key took a share
    assert len({r.transaction for r in results[:28]}) == 28


async def test_batches_of_1_10_50_settle_each_payer_and_cut_gas_per_payment(
    chain: Chain, keys: tuple[str, ...]
) -> None:
    per_payment: dict[int, float] = {}
    for size in (1, 10, 50):
        pay_to = fresh_payee()
        chainlib.mint(chain.rpc_url, chain.token, chain.owner_key, pay_to, 1)  # a payee in use
        req = parts.requirements(chain.local, pay_to, AMOUNT)
        payments = await parts.fresh_payments(chain.local, req, size)
        async with parts.engine(
            chain.rpc_url, keys[:1], batch_window=30.0, max_batch=size
        ) as engine:
            results = await asyncio.gather(*(engine.settle(p, req) for p in payments))
        assert all(r.success for r in results), [r.error_reason for r in results]
        (tx,) = {r.transaction for r in results}  # one transaction, named in every answer
        per_payment[size] = parts.gas_used(chain.rpc_url, tx) / size
        transfers = parts.transfers_to(chain.local, pay_to)
        assert len(transfers) == size and {t.tx for t in transfers} == {tx}
        assert chain.balance_of(pay_to) == 1 + size * AMOUNT
    print(f"\ngas per payment by batch size: {per_payment}")
    assert per_payment[1] > per_payment[10] > per_payment[50]


async def test_a_batch_drops_the_calls_that_would_fail_and_settles_the_rest(
    chain: Chain, keys: tuple[str, ...]
) -> None:
    pay_to = fresh_payee()
    req = parts.requirements(chain.local, pay_to, AMOUNT)
    good = await parts.fresh_payments(chain.local, req, 6)
    broke = await parts.fresh_payments(chain.local, req, 2, balance=1)
    payments = [*good[:3], broke[0], *good[3:], broke[1]]
    async with parts.engine(
        chain.rpc_url, keys[:1], batch_window=30.0, max_batch=len(payments)
    ) as engine:
        results = await asyncio.gather(*(engine.settle(p, req) for p in payments))
        assert (engine.stats.batches, engine.stats.refused) == (1, 2)
    assert [r.success for r in results] == [True] * 3 + [False] + [True] * 3 + [False]
    assert results[3].error_reason == ERR_INSUFFICIENT_BALANCE
    assert len({r.transaction for r in results if r.success}) == 1
    parts.assert_settled_exactly(chain.local, pay_to, payments, results, AMOUNT)


async def test_a_payment_that_would_revert_is_refused_with_no_transaction(
    chain: Chain, keys: tuple[str, ...]
) -> None:
    pay_to = fresh_payee()
    req = parts.requirements(chain.local, pay_to, AMOUNT)
    (payment,) = await parts.fresh_payments(chain.local, req, 1, balance=AMOUNT - 1)
    settler = parts.address_of(keys[0])
    before = (chain.tx_count(settler), chainlib.eth_balance(chain.rpc_url, settler))
    async with parts.engine(chain.rpc_url, keys[:1]) as engine:
        result = await engine.settle(payment, req)
    assert (result.success, result.error_reason, result.transaction) == (
        False,
        ERR_INSUFFICIENT_BALANCE,
        "",
    )
    assert (chain.tx_count(settler), chainlib.eth_balance(chain.rpc_url, settler)) == before
    assert parts.transfers_to(chain.local, pay_to) == []


async def test_v1_payment_settles(chain: Chain, keys: tuple[str, ...]) -> None:
    pay_to = fresh_payee()
    req = chain.requirements_v1(amount=AMOUNT, pay_to=pay_to)
    payer = chain.local.new_payer(10_000)
    from gateway.demo.payer import make_x402_client

    payment = await sign_requirements_v1(
        make_x402_client(payer, [(chain.network, chain.token)]), req
    )
    async with parts.engine(chain.rpc_url, keys[:1]) as engine:
        assert (await engine.verify(payment, req)).is_valid
        result = await engine.settle(payment, req)
    assert result.success and result.network == "base-sepolia"
    parts.assert_settled_exactly(chain.local, pay_to, [payment], [result], AMOUNT)


async def test_the_same_payment_twice_at_once_is_charged_once(
    chain: Chain, keys: tuple[str, ...]
) -> None:
    pay_to = fresh_payee()
    req = parts.requirements(chain.local, pay_to, AMOUNT)
    (payment,) = await parts.fresh_payments(chain.local, req, 1)
    async with parts.engine(chain.rpc_url, keys[:1]) as engine:
        results = await asyncio.gather(*(engine.settle(payment, req) for _ in range(5)))
        again = await engine.settle(payment, req)
    assert sum(r.success for r in results) == 1
    assert {r.error_reason for r in results if not r.success} == {ERR_NONCE_ALREADY_USED}
    assert (again.success, again.error_reason) == (False, ERR_NONCE_ALREADY_USED)
    assert len(parts.transfers_to(chain.local, pay_to)) == 1
    assert chain.balance_of(pay_to) == AMOUNT


def _signed(
    payer: Any,
    chain: Chain,
    *,
    to: str,
    value: int,
    valid_before: int,
    nonce: bytes | None = None,
    signer: Any = None,
) -> dict[str, Any]:
    """An EIP-3009 payload signed with eth-account (the terms of our choosing)."""
    message = {
        "from": payer.address,
        "to": to,
        "value": value,
        "validAfter": 0,
        "validBefore": valid_before,
        "nonce": nonce or os.urandom(32),
    }
    signed = (signer or payer).sign_typed_data(
        {
            "name": "USD Coin",
            "version": "2",
            "chainId": chain.local.chain_id,
            "verifyingContract": chain.token,
        },
        {
            "TransferWithAuthorization": [
                {"name": n, "type": t}
                for n, t in (
                    ("from", "address"),
                    ("to", "address"),
                    ("value", "uint256"),
                    ("validAfter", "uint256"),
                    ("validBefore", "uint256"),
                    ("nonce", "bytes32"),
                )
            ]
        },
        message,
    )
    auth = {k: str(v) for k, v in message.items() if k != "nonce"}
    auth["nonce"] = "0x" + message["nonce"].hex()
    return {"authorization": auth, "signature": "0x" + bytes(signed.signature).hex()}


async def test_verify_refuses_each_kind_of_bad_payment(chain: Chain, keys: tuple[str, ...]) -> None:
    pay_to = fresh_payee()
    req = parts.requirements(chain.local, pay_to, AMOUNT)
    payer = chain.local.new_payer(10_000)
    poor = chain.local.new_payer(AMOUNT - 1)
    template = await parts.sign(chain.local, payer, req)
    soon = int(time.time()) + 300
    used = await parts.sign(chain.local, payer, req)
    cases = {
        "good": (_signed(payer, chain, to=pay_to, value=AMOUNT, valid_before=soon), None),
        "forged": (
            _signed(
                payer, chain, to=pay_to, value=AMOUNT, valid_before=soon, signer=Account.create()
            ),
            ERR_INVALID_SIGNATURE,
        ),
        "amount": (
            _signed(payer, chain, to=pay_to, value=AMOUNT - 1, valid_before=soon),
            ERR_AUTHORIZATION_VALUE_MISMATCH,
        ),
        "pay_to": (
            _signed(payer, chain, to=fresh_payee(), value=AMOUNT, valid_before=soon),
            ERR_RECIPIENT_MISMATCH,
        ),
        "expired": (
            _signed(payer, chain, to=pay_to, value=AMOUNT, valid_before=int(time.time()) - 1),
            ERR_VALID_BEFORE_EXPIRED,
        ),
        "balance": (
            _signed(poor, chain, to=pay_to, value=AMOUNT, valid_before=soon),
            ERR_INSUFFICIENT_BALANCE,
        ),
        "used": (used.payload, ERR_NONCE_ALREADY_USED),
    }
    async with parts.engine(chain.rpc_url, keys[:1]) as engine:
        assert (await engine.settle(used, req)).success
        for name, (payload, reason) in cases.items():
            payment = template.model_copy(update={"payload": payload})
            verified = await engine.verify(payment, req)
            assert (verified.is_valid, verified.invalid_reason) == (reason is None, reason), name
        assert engine.stats.transactions == 1  # verify never sends anything
    assert len(parts.transfers_to(chain.local, pay_to)) == 1
    assert authorization_of(used)["from"] == payer.address


async def test_readiness_fails_below_the_gas_floor_and_an_unfunded_settler_sends_nothing(
    chain: Chain, keys: tuple[str, ...]
) -> None:
    settler = parts.address_of(keys[0])
    balance = chainlib.eth_balance(chain.rpc_url, settler)
    async with parts.engine(chain.rpc_url, keys[:1], min_gas_balance=balance + 1) as engine:
        with pytest.raises(FacilitatorUnavailable, match=settler):
            await engine.ping()
        assert settler in (await engine.refresh_supported())[0]
    async with parts.engine(chain.rpc_url, keys[:1], min_gas_balance=balance // 2) as engine:
        await engine.ping()
        (state,) = engine.key_states()
        assert (state.address, state.balance) == (settler, balance)
    # A settler without gas money: the node refuses the broadcast, nothing is charged.
    broke_key = "0x" + bytes(chainlib.new_account().key).hex()
    pay_to = fresh_payee()
    req = parts.requirements(chain.local, pay_to, AMOUNT)
    (payment,) = await parts.fresh_payments(chain.local, req, 1)
    async with parts.engine(chain.rpc_url, (broke_key,)) as engine:
        with pytest.raises(FacilitatorUnavailable, match=r"(?i)insufficient funds"):
            await engine.settle(payment, req)
    assert parts.transfers_to(chain.local, pay_to) == []


async def test_a_key_used_by_another_sender_resyncs_its_nonce_and_pays_once(
    chain: Chain,
) -> None:
    (key,) = parts.settler_keys(chain.rpc_url, 1)
    settler = parts.address_of(key)
    pay_to = fresh_payee()
    req = parts.requirements(chain.local, pay_to, AMOUNT)
    first, second = await parts.fresh_payments(chain.local, req, 2)
    async with parts.engine(chain.rpc_url, (key,)) as engine:
        settled = [await engine.settle(first, req)]
        # Someone else sends from the settler's key: the nonce the engine holds is gone.
        chainlib.fund_eth(chain.rpc_url, key, str(chainlib.new_account().address), 1)
        settled.append(await engine.settle(second, req))  # "nonce too low", resync, once
    assert all(r.success for r in settled)
    assert chain.tx_count(settler) == 3
    parts.assert_settled_exactly(chain.local, pay_to, [first, second], settled, AMOUNT)
