"""The engine when the chain does not simply mine: stuck, lost and reorged transactions, a
receipt that comes late, real block times. Each test runs its own anvil (reorgs and manual
mining must not touch the session chain). Every money assertion is read from the chain."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from eth_account import Account

from gateway.demo import chain as chainlib
from gateway.facilitators.engine import EngineFacilitator
from tests.e2e import engine_parts as parts

pytestmark = pytest.mark.e2e
AMOUNT = 1000
GWEI = 10**9


def payee() -> str:
    return str(chainlib.new_account().address)


async def pool_hashes(rpc_url: str, want: int = 1) -> list[str]:
    """The hashes in the node's pool, once it holds `want` transactions."""
    for _ in range(400):
        content = parts.rpc(rpc_url, "txpool_content")
        hashes = [
            tx["hash"] for by_nonce in content["pending"].values() for tx in by_nonce.values()
        ]
        if len(hashes) >= want:
            return hashes
        await asyncio.sleep(0.025)
    raise AssertionError("nothing reached the pool")


async def mine_until(rpc_url: str, task: asyncio.Task[Any], *, base_fee: int | None = None) -> None:
    """Mine a block every 150 ms (with this base fee, if given) until `task` is done."""
    for _ in range(200):
        if task.done():
            return
        if base_fee is not None:
            parts.rpc(rpc_url, "anvil_setNextBlockBaseFeePerGas", hex(base_fee))
        parts.rpc(rpc_url, "evm_mine")
        await asyncio.sleep(0.15)
    raise AssertionError("the settlement never finished")


async def test_a_stuck_transaction_is_replaced_and_pays_exactly_once() -> None:
    with parts.extra_chain() as local:
        keys = parts.settler_keys(local.rpc_url, 1)
        pay_to = payee()
        req = parts.requirements(local, pay_to, AMOUNT)
        (payment,) = await parts.fresh_payments(local, req, 1)
        parts.rpc(local.rpc_url, "evm_setAutomine", False)
        async with parts.engine(
            local.rpc_url, keys, stuck_blocks=2, stuck_seconds=3600, stuck_min_seconds=0.5
        ) as engine:
            task = asyncio.create_task(engine.settle(payment, req))
            (original,) = await pool_hashes(local.rpc_url)
            # Blocks now cost 50 gwei: the engine's first offer (a few gwei) never gets in.
            await mine_until(local.rpc_url, task, base_fee=50 * GWEI)
            result = await task
            assert engine.stats.replaced >= 1
        assert result.success and result.transaction != original
        assert parts.receipt(local.rpc_url, original) is None
        mined = parts.receipt(local.rpc_url, result.transaction)
        assert mined is not None and mined["status"] == "0x1"
        assert chainlib.tx_count(local.rpc_url, parts.address_of(keys[0])) == 1
        parts.assert_settled_exactly(local, pay_to, [payment], [result], AMOUNT)


async def test_a_transaction_the_node_lost_is_broadcast_again_as_is() -> None:
    with parts.extra_chain() as local:
        keys = parts.settler_keys(local.rpc_url, 1)
        pay_to = payee()
        req = parts.requirements(local, pay_to, AMOUNT)
        (payment,) = await parts.fresh_payments(local, req, 1)
        parts.rpc(local.rpc_url, "evm_setAutomine", False)
        async with parts.engine(
            local.rpc_url, keys, stuck_blocks=2, stuck_seconds=3600, stuck_min_seconds=0.5
        ) as engine:
            task = asyncio.create_task(engine.settle(payment, req))
            (original,) = await pool_hashes(local.rpc_url)
            parts.rpc(local.rpc_url, "anvil_dropTransaction", original)
            await mine_until(local.rpc_url, task)
            result = await task
            assert engine.stats.rebroadcast >= 1 and engine.stats.replaced == 0
        assert result.success and result.transaction == original  # the very same bytes
        parts.assert_settled_exactly(local, pay_to, [payment], [result], AMOUNT)


async def test_a_reorged_settlement_is_landed_again() -> None:
    with parts.extra_chain() as local:
        keys = parts.settler_keys(local.rpc_url, 1)
        pay_to = payee()
        req = parts.requirements(local, pay_to, AMOUNT)
        payments = await parts.fresh_payments(local, req, 2)
        async with parts.engine(local.rpc_url, keys, reorg_depth=10) as engine:
            results = [await engine.settle(p, req) for p in payments]
            assert all(r.success for r in results)
            parts.assert_settled_exactly(local, pay_to, payments, results, AMOUNT)
            first = parts.receipt(local.rpc_url, results[0].transaction)
            assert first is not None
            head = int(parts.rpc(local.rpc_url, "eth_blockNumber"), 16)
            # Both settlements leave the canonical chain (anvil does not put them back).
            parts.rpc(local.rpc_url, "anvil_reorg", head - int(first["blockNumber"], 16) + 1, [])
            assert all(parts.receipt(local.rpc_url, r.transaction) is None for r in results)
            assert parts.transfers_to(local, pay_to) == []
            for _ in range(400):
                if all(parts.receipt(local.rpc_url, r.transaction) for r in results):
                    break
                await asyncio.sleep(0.025)
            assert engine.stats.reorged == 2 and engine.stats.reorg_lost == 0
        for r in results:
            again = parts.receipt(local.rpc_url, r.transaction)
            assert again is not None and again["status"] == "0x1"
        parts.assert_settled_exactly(local, pay_to, payments, results, AMOUNT)


async def test_a_late_receipt_is_pending_and_a_retry_waits_for_the_same_transaction() -> None:
    with parts.extra_chain() as local:
        keys = parts.settler_keys(local.rpc_url, 1)
        pay_to = payee()
        req = parts.requirements(local, pay_to, AMOUNT)
        (payment,) = await parts.fresh_payments(local, req, 1)
        parts.rpc(local.rpc_url, "evm_setAutomine", False)
        engine = EngineFacilitator(
            parts.options(local.rpc_url, keys, confirmation_timeout=0.5, stuck_seconds=3600)
        )
        async with engine:
            pending = await engine.settle(payment, req)
            (broadcast,) = await pool_hashes(local.rpc_url)
            assert (pending.success, pending.error_reason, pending.transaction) == (
                False,
                "settlement_pending",
                broadcast,
            )
            retry = asyncio.create_task(engine.settle(payment, req))
            await asyncio.sleep(0.1)
            parts.rpc(local.rpc_url, "evm_mine")
            settled = await retry
        assert settled.success and settled.transaction == broadcast
        assert chainlib.tx_count(local.rpc_url, parts.address_of(keys[0])) == 1
        parts.assert_settled_exactly(local, pay_to, [payment], [settled], AMOUNT)


async def test_with_one_second_blocks_payments_share_transactions() -> None:
    with parts.extra_chain(block_time=1) as local:
        keys = parts.settler_keys(local.rpc_url, 2)
        pay_to = payee()
        req = parts.requirements(local, pay_to, AMOUNT)
        payments = await parts.fresh_payments(local, req, 24)
        parts.blocks_only(local, 1)
        async with parts.engine(local.rpc_url, keys, batch_window=0.3, max_batch=50) as engine:
            results = await asyncio.gather(*(engine.settle(p, req) for p in payments))
            batches = engine.stats.transactions
        assert all(r.success for r in results)
        assert batches == len({r.transaction for r in results}) < len(payments)
        parts.assert_settled_exactly(local, pay_to, payments, results, AMOUNT)


async def test_a_nonce_taken_in_flight_by_another_sender_is_paid_under_a_new_one() -> None:
    with parts.extra_chain() as local:
        (key,) = parts.settler_keys(local.rpc_url, 1)
        pay_to = payee()
        req = parts.requirements(local, pay_to, AMOUNT)
        (payment,) = await parts.fresh_payments(local, req, 1)
        parts.rpc(local.rpc_url, "evm_setAutomine", False)
        async with parts.engine(
            local.rpc_url, (key,), nonce_taken_seconds=0.5, stuck_blocks=1000, stuck_seconds=3600
        ) as engine:
            task = asyncio.create_task(engine.settle(payment, req))
            (ours,) = await pool_hashes(local.rpc_url)
            nonce = int(parts.rpc(local.rpc_url, "eth_getTransactionByHash", ours)["nonce"], 16)
            # Another sender of the same key outbids it at its nonce with something else.
            account = Account.from_key(key)
            foreign = account.sign_transaction(
                {
                    "chainId": local.chain_id,
                    "nonce": nonce,
                    "to": account.address,
                    "value": 0,
                    "gas": 21_000,
                    "maxFeePerGas": 100 * GWEI,
                    "maxPriorityFeePerGas": 10 * GWEI,
                    "type": 2,
                }
            )
            parts.rpc(
                local.rpc_url, "eth_sendRawTransaction", "0x" + bytes(foreign.raw_transaction).hex()
            )
            await mine_until(local.rpc_url, task)
            result = await task
            assert engine.stats.requeued == 1
        assert result.success and result.transaction != ours
        assert parts.receipt(local.rpc_url, ours) is None
        assert chainlib.tx_count(local.rpc_url, account.address) == 2  # theirs, then ours
        parts.assert_settled_exactly(local, pay_to, [payment], [result], AMOUNT)
