"""The watcher against a scripted in-memory node: receipts, reorgs, stuck transactions,
nonces taken by another sender, gaps. (The real thing on anvil: tests/e2e/test_engine*.py.)"""

from __future__ import annotations

import asyncio
from typing import Any

from gateway.facilitators.engine import calls
from gateway.facilitators.engine.fees import Fees
from gateway.facilitators.engine.options import GWEI, EngineOptions
from gateway.facilitators.engine.rpc import Call
from gateway.facilitators.engine.signer import SettlerKey, SignedTx
from gateway.facilitators.engine.stats import EngineStats
from gateway.facilitators.engine.txs import Kind, Outcome, Payment, Tracked
from gateway.facilitators.engine.watcher import Watcher
from gateway.payment import eip3009
from tests.unit.facilitators.engine.helpers import TOKEN, account, eth_account_signed
from tests.unit.facilitators.engine.test_batch_txs import logs_for

TOKEN_L = TOKEN.lower()


class FakeNode:
    """Just enough chain for the watcher: a head, nonce counts, receipts, a pool."""

    def __init__(self) -> None:
        self.head = 100
        self.fork = 0  # bumped by a reorg: every block hash changes
        self.counts: dict[str, int] = {}
        self.receipts: dict[str, dict[str, Any]] = {}
        self.pool: set[str] = set()
        self.base_fee = GWEI

    def block_hash(self, number: int) -> str:
        return "0x" + f"{self.fork:08x}{number:056x}"

    def block(self, number: int) -> dict[str, Any] | None:
        if number > self.head:
            return None
        return {
            "number": hex(number),
            "hash": self.block_hash(number),
            "baseFeePerGas": hex(self.base_fee),
        }

    def mine(self, tx_hash: str, logs: list[dict[str, Any]]) -> None:
        self.head += 1
        self.receipts[tx_hash] = {
            "transactionHash": tx_hash,
            "status": "0x1",
            "logs": logs,
            "blockNumber": hex(self.head),
            "blockHash": self.block_hash(self.head),
        }
        self.pool.discard(tx_hash)

    async def batch(self, batch: list[Call]) -> list[Any]:
        return [self.answer(c) for c in batch]

    def answer(self, c: Call) -> Any:
        if c.method == "eth_getBlockByNumber":
            number = self.head if c.params[0] == "latest" else int(c.params[0], 16)
            return self.block(number)
        if c.method == "eth_getTransactionCount":
            return hex(self.counts.get(c.params[0], 0))
        if c.method in ("eth_getBalance", "eth_maxPriorityFeePerGas", "eth_gasPrice"):
            return hex(GWEI)
        if c.method == "eth_getTransactionReceipt":
            return self.receipts.get(c.params[0])
        if c.method == "eth_getTransactionByHash":
            return {"hash": c.params[0]} if c.params[0] in self.pool else None
        raise AssertionError(c.method)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


CLOCK = Clock()


class FakeResender:
    def __init__(self) -> None:
        self.done: list[tuple[str, Any]] = []

    async def rebroadcast(self, tracked: Tracked, attempt: SignedTx) -> None:
        self.done.append(("rebroadcast", attempt.hash))

    async def replace(self, tracked: Tracked) -> None:
        self.done.append(("replace", tracked.nonce))

    async def fill_gap(self, key: SettlerKey, nonce: int) -> None:
        self.done.append(("fill_gap", nonce))

    def requeue(self, tracked: Tracked) -> None:
        self.done.append(("requeue", tracked.nonce))


def setup(**options: Any) -> tuple[FakeNode, Watcher, FakeResender, SettlerKey, EngineStats]:
    opts = EngineOptions(rpc_url="http://127.0.0.1:1", keys=("0x" + "11" * 32,), **options)
    key = SettlerKey(opts.keys[0], 84532)
    stats = EngineStats()
    node = FakeNode()
    watcher = Watcher(node, [key], opts, stats, clock=CLOCK)  # type: ignore[arg-type]
    resender = FakeResender()
    watcher.resender = resender
    key.nonces.sync(0)
    return node, watcher, resender, key, stats


def send(
    watcher: Watcher, key: SettlerKey, node: FakeNode, fees: Fees | None = None
) -> tuple[Tracked, Payment]:
    a = eip3009.parse(eth_account_signed(account()))
    future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
    payment = Payment(
        a, TOKEN_L, calls.transfer_call(TOKEN_L, a, a.signature), future, broadcast=True
    )
    nonce = key.nonces.next
    attempt = SignedTx(b"", "0x" + f"{nonce:064x}", nonce, fees or Fees(3 * GWEI, GWEI), 90_000)
    key.nonces.commit(nonce)
    key.in_flight += 1
    now = CLOCK()
    t = Tracked(
        key,
        nonce,
        TOKEN_L,
        b"",
        [payment],
        [attempt],
        first_sent=now,
        last_sent=now,
        last_sent_block=node.head,
    )
    watcher.track(t)
    node.pool.add(attempt.hash)
    return t, payment


async def test_a_receipt_answers_the_payment_and_the_nonce_is_dropped_once_final() -> None:
    node, watcher, resender, key, stats = setup(reorg_depth=2)
    await watcher.poll()
    t, payment = send(watcher, key, node)
    assert stats.pending_transactions == 1
    await watcher.poll()
    assert not payment.future.done()  # not mined yet
    node.mine(t.latest.hash, logs_for(payment.auth))
    node.counts[key.address] = 1
    await watcher.poll()
    assert payment.future.result() == Outcome(Kind.SETTLED, t.latest.hash)
    assert (stats.settled, stats.pending_transactions, stats.receipt_latency_count) == (1, 0, 1)
    assert key.in_flight == 1  # watched for reorgs until final
    node.head += 2
    await watcher.poll()
    assert key.in_flight == 0 and watcher.tracked() == [] and resender.done == []


async def test_a_reorged_receipt_is_rebroadcast_as_the_same_transaction() -> None:
    node, watcher, resender, key, stats = setup(reorg_depth=6)
    await watcher.poll()
    t, payment = send(watcher, key, node)
    node.mine(t.latest.hash, logs_for(payment.auth))
    node.counts[key.address] = 1
    await watcher.poll()
    assert payment.future.result().kind is Kind.SETTLED
    # The block is replaced at the same height: the transaction is gone from the chain.
    node.fork += 1
    del node.receipts[t.latest.hash]
    node.counts[key.address] = 0
    await watcher.poll()
    assert resender.done == [("rebroadcast", t.latest.hash)]
    assert stats.reorged == 1 and t.included is None
    # It lands again: no second answer, nothing lost.
    node.mine(t.latest.hash, logs_for(payment.auth))
    node.counts[key.address] = 1
    await watcher.poll()
    assert t.included is not None and stats.settled == 1 and stats.reorg_lost == 0
    # Re-landed but its transfer failed this time (the payer moved the money first): alert.
    node.fork += 1
    node.receipts[t.latest.hash] = {
        **node.receipts[t.latest.hash],
        "logs": [],
        "blockHash": node.block_hash(node.head),
    }
    await watcher.poll()
    assert stats.reorg_lost == 0  # moved, same transaction: re-read only when re-mined
    node.fork += 1
    del node.receipts[t.latest.hash]
    await watcher.poll()
    node.mine(t.latest.hash, [])
    await watcher.poll()
    assert stats.reorg_lost == 1


async def test_stuck_transactions_are_replaced_or_rebroadcast() -> None:
    node, watcher, resender, key, _ = setup(stuck_blocks=2, stuck_seconds=3600, stuck_min_seconds=0)
    await watcher.poll()
    held, _ = send(watcher, key, node)
    node.head += 1
    await watcher.poll()
    assert resender.done == []  # one block: not stuck yet
    node.head += 1
    await watcher.poll()
    assert resender.done == [("replace", held.nonce)]  # in the pool, not mined: outbid
    resender.done.clear()
    lost, _ = send(watcher, key, node)
    node.pool.discard(lost.latest.hash)
    node.head += 2
    await watcher.poll()
    # The node lost it but its fees still pay the market: the same bytes again.
    assert ("rebroadcast", lost.latest.hash) in resender.done


async def test_a_nonce_taken_by_another_sender_requeues_its_payments() -> None:
    node, watcher, resender, key, _ = setup()
    await watcher.poll()
    t, payment = send(watcher, key, node)
    node.counts[key.address] = 1  # used, but by none of our transactions
    for _ in range(3):
        await watcher.poll()
        CLOCK.now += 4
    assert resender.done == []  # three polls in 8 s could still be a lagging node
    await watcher.poll()
    assert resender.done == [("requeue", t.nonce)] and watcher.tracked() == []
    assert not payment.future.done()


async def test_a_nonce_gap_is_filled() -> None:
    node, watcher, resender, key, _ = setup()
    await watcher.poll()
    first, _ = send(watcher, key, node)
    send(watcher, key, node)
    watcher.untrack(first)  # lost track of nonce 0: everything above it would wait forever
    for _ in range(3):
        await watcher.poll()
        CLOCK.now += 2
    assert resender.done == []  # it must last (a broadcast racing the poll, a lagging node)
    await watcher.poll()
    assert resender.done == [("fill_gap", 0)]


async def test_market_follows_the_head() -> None:
    node, watcher, _, _, _ = setup()
    node.base_fee = 7 * GWEI
    await watcher.poll()
    assert watcher.market.base_fee == 7 * GWEI and watcher.market.suggested_tip == GWEI
    assert watcher.head == node.head
