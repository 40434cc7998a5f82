"""One watcher for every transaction in flight, driven by the chain's head.

Each poll is one JSON-RPC batch: the head, the block at the height we last saw as head (a
different hash there means a reorg), each busy settler's mined nonce count, now and then
the settlers' balances and the suggested tip. Only when a count moved, a reorg happened or
a transaction looks stuck, a second batch fetches exactly the receipts (or pool entries)
that matter. So the cost follows blocks and events, not the number of transactions.
It polls every `poll_interval` and at once after each broadcast (`kick`): on a chain that
mines on demand, a receipt is read as soon as it exists.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

from .fees import Market, StuckAction, bumped, is_stuck, market_fees, stuck_action
from .options import EngineOptions
from .rpc import Call, RpcClient, RpcError, RpcUnavailable, quantity
from .signer import SettlerKey, SignedTx
from .stats import EngineStats
from .txs import (
    Kind,
    Recheck,
    Tracked,
    inclusion_of,
    is_final,
    missing,
    nonce_taken,
    outcomes,
    recheck,
    reorged,
)

log = logging.getLogger("gateway.facilitators.engine")
TIP_INTERVAL = 10.0
MIN_POLL_GAP = 0.005
GAP_POLLS = 3  # a gap must last: not a broadcast racing the poll, nor a lagging node
GAP_SECONDS = 5.0


class Resender(Protocol):
    """What the watcher asks of the settler when the chain does not do what was expected."""

    async def rebroadcast(self, tracked: Tracked, attempt: SignedTx) -> None: ...

    async def replace(self, tracked: Tracked) -> None: ...

    async def fill_gap(self, key: SettlerKey, nonce: int) -> None: ...

    def requeue(self, tracked: Tracked) -> None: ...


class Watcher:
    def __init__(
        self,
        rpc: RpcClient,
        keys: list[SettlerKey],
        opts: EngineOptions,
        stats: EngineStats,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._rpc = rpc
        self._keys = keys
        self._opts = opts
        self._stats = stats
        self._clock = clock
        self.market = Market(base_fee=None, suggested_tip=None, gas_price=None)
        self.head = -1  # not polled yet
        self._anchor: tuple[int, str] | None = None
        self._highest: tuple[int, str] = (0, "")
        self._tracked: dict[str, dict[int, Tracked]] = {k.address: {} for k in keys}
        self._gap_seen: dict[str, tuple[int, float]] = {}  # address -> (polls, since)
        self._kick = asyncio.Event()
        self._polling = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._balances_at = float("-inf")
        self._tip_at = float("-inf")
        self.resender: Resender | None = None
        self.node_down = False

    # --- life ---------------------------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    @property
    def ready(self) -> bool:
        """Polled at least once: the head and the fee market are known."""
        return self.head >= 0

    def kick(self) -> None:
        self._kick.set()

    def track(self, tracked: Tracked) -> None:
        self._tracked[tracked.key.address][tracked.nonce] = tracked
        self._count_pending()

    def untrack(self, tracked: Tracked) -> None:
        if self._tracked[tracked.key.address].pop(tracked.nonce, None) is tracked:
            tracked.key.in_flight -= 1
        self._count_pending()

    def tracked(self) -> list[Tracked]:
        return [t for per_key in self._tracked.values() for t in per_key.values()]

    async def _run(self) -> None:
        last = float("-inf")
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._kick.wait(), self._opts.poll_interval)
            # Under load every broadcast kicks: a short gap lets one poll serve a burst.
            gap = last + MIN_POLL_GAP - time.monotonic()
            if gap > 0:
                await asyncio.sleep(gap)
            self._kick.clear()
            last = time.monotonic()
            try:
                await self.poll()
            except RpcUnavailable as exc:
                if not self.node_down:  # said once per outage, not four times a second
                    log.warning("engine_watcher_node_unavailable: %s", exc)
                self.node_down = True
                continue
            except (RpcError, ValueError, KeyError, TypeError) as exc:
                log.error("engine_watcher_bad_answer: %s", exc)
            if self.node_down:
                log.warning("engine_watcher_node_back")
            self.node_down = False

    # --- one poll -----------------------------------------------------------------------

    async def ensure_ready(self) -> None:
        """Poll once if nobody has yet (concurrent callers share that one poll)."""
        async with self._polling:
            if not self.ready:
                await self._poll()

    async def poll(self) -> None:
        """One look at the chain (also called by a broadcast the node found underpriced)."""
        async with self._polling:
            await self._poll()

    async def _poll(self) -> None:
        now = self._clock()
        busy = [k for k in self._keys if self._tracked[k.address]]
        balances = now - self._balances_at >= self._opts.balance_interval
        fees = now - self._tip_at >= TIP_INTERVAL
        calls = [Call("eth_getBlockByNumber", ("latest", False))]
        if self._anchor is not None:
            calls.append(Call("eth_getBlockByNumber", (hex(self._anchor[0]), False)))
        calls += [Call("eth_getTransactionCount", (k.address, "latest")) for k in busy]
        if balances:
            calls += [Call("eth_getBalance", (k.address, "latest")) for k in self._keys]
        if fees:
            calls += [Call("eth_maxPriorityFeePerGas"), Call("eth_gasPrice")]
        answers = list(await self._rpc.batch(calls))
        head = _block(answers.pop(0))
        reorg = False
        if self._anchor is not None:
            reorg = reorged(self._anchor, _maybe_block(answers.pop(0)))
        counts = {k.address: quantity(_ok(answers.pop(0))) for k in busy}
        if balances:
            self._read_balances([answers.pop(0) for _ in self._keys], now)
        self._read_market(head, answers if fees else None, now)
        self.head = quantity(head["number"])
        for t in self.tracked():  # sent before the first poll: blocks count from now
            if t.last_sent_block < 0:
                t.last_sent_block = self.head
        if reorg:
            log.warning("engine_reorg: block %s changed", self._anchor)
        # The highest block this poll saw: the head, or a receipt's block mined since.
        self._highest = (self.head, str(head["hash"]).lower())
        await self._follow(counts, reorg, now)
        self._finalize()
        await self._fill_gaps(counts, now)
        self._anchor = self._highest
        self._count_pending()

    def _read_balances(self, answers: list[Any], now: float) -> None:
        self._balances_at = now
        for key, answer in zip(self._keys, answers, strict=True):
            if not isinstance(answer, RpcError):
                key.balance = quantity(answer)

    def _read_market(self, head: dict[str, Any], fee_answers: list[Any] | None, now: float) -> None:
        base = head.get("baseFeePerGas")
        tip, price = self.market.suggested_tip, self.market.gas_price
        if fee_answers is not None:
            self._tip_at = now
            tip = None if isinstance(fee_answers[0], RpcError) else quantity(fee_answers[0])
            price = None if isinstance(fee_answers[1], RpcError) else quantity(fee_answers[1])
        self.market = type(self.market)(
            base_fee=quantity(base) if base is not None else None,
            suggested_tip=tip,
            gas_price=price,
        )

    async def _follow(self, counts: dict[str, int], reorg: bool, now: float) -> None:
        """Receipts for newly mined nonces, re-checks after a reorg, stuck transactions."""
        mined: list[Tracked] = []
        pending: list[Tracked] = []
        for t in self.tracked():
            if t.included is None and t.key.address in counts:
                (mined if t.nonce < counts[t.key.address] else pending).append(t)
        rechecks = [t for t in self.tracked() if t.included is not None] if reorg else []
        stuck = [
            t
            for t in pending
            if is_stuck(self.head - t.last_sent_block, now - t.last_sent, self._opts)
        ]
        calls = [Call("eth_getTransactionReceipt", (a.hash,)) for t in mined for a in t.attempts]
        calls += [
            Call("eth_getTransactionReceipt", (t.included.tx_hash,))  # type: ignore[union-attr]
            for t in rechecks
        ]
        calls += [Call("eth_getTransactionByHash", (t.latest.hash,)) for t in stuck]
        if not calls:
            return
        answers = list(await self._rpc.batch(calls))
        for t in mined:
            receipts = [answers.pop(0) for _ in t.attempts]
            self._mined(t, receipts, now)
        for t in rechecks:
            await self._recheck(t, answers.pop(0), now)
        await asyncio.gather(*(self._unstick(t, answers.pop(0), now) for t in stuck))

    def _mined(self, t: Tracked, receipts: list[Any], now: float) -> None:
        found = next((r for r in receipts if isinstance(r, dict)), None)
        if found is None:
            if any(isinstance(r, RpcError) for r in receipts):
                return  # the node failed to answer: no evidence either way
            missing(t, now)
            if nonce_taken(t, now, self._opts.nonce_taken_seconds) and self.resender:
                log.error(
                    "engine_nonce_taken: %s nonce %d used by another sender", t.key.address, t.nonce
                )
                self.untrack(t)
                self.resender.requeue(t)
            return
        self._include(t, found, now)

    def _include(self, t: Tracked, receipt: dict[str, Any], now: float) -> None:
        t.included = inclusion_of(receipt)
        if t.included.block_number > self._highest[0]:
            self._highest = (t.included.block_number, t.included.block_hash)
        if not t.payments:  # a gap filler
            return
        results = outcomes(t, receipt)
        if t.outcomes_known:
            lost = sum(
                1
                for p, o in zip(t.payments, results, strict=True)
                if p.future.done()
                and p.future.result().kind is Kind.SETTLED
                and o.kind is not Kind.SETTLED
            )
            if lost:
                self._stats.reorg_lost += lost
                log.error("engine_reorg_lost: %d payment(s) in %s", lost, t.included.tx_hash)
            return
        t.outcomes_known = True
        self._stats.observe("receipt_latency", self._clock() - t.first_sent)
        for p, o in zip(t.payments, results, strict=True):
            if o.kind is Kind.SETTLED:
                self._stats.settled += 1
            else:
                self._stats.failed += 1
            p.transaction = o.transaction
            p.resolve(o)

    async def _recheck(self, t: Tracked, receipt: Any, now: float) -> None:
        assert t.included is not None
        verdict = recheck(t.included, receipt if isinstance(receipt, dict) else None)
        if verdict is Recheck.MOVED:
            t.included = inclusion_of(receipt)
            if t.included.block_number > self._highest[0]:
                self._highest = (t.included.block_number, t.included.block_hash)
        elif verdict is Recheck.DROPPED:
            attempt = t.attempt(t.included.tx_hash) or t.latest
            log.warning("engine_reorged_out: %s, broadcasting it again", attempt.hash)
            t.included = None
            self._stats.reorged += 1
            self._stats.observe("reorged", 1)
            t.last_sent, t.last_sent_block = now, self.head
            if self.resender is not None:
                await self.resender.rebroadcast(t, attempt)

    async def _unstick(self, t: Tracked, in_pool: Any, now: float) -> None:
        if self.resender is None:
            return
        market = market_fees(self.market, self._opts)
        action = stuck_action(t.latest.fees, market, node_has_it=isinstance(in_pool, dict))
        t.last_sent, t.last_sent_block = now, self.head
        if action is StuckAction.REPLACE and bumped(t.latest.fees, market, self._opts):
            await self.resender.replace(t)
        else:
            await self.resender.rebroadcast(t, t.latest)

    def _finalize(self) -> None:
        for t in self.tracked():
            if t.included is not None and is_final(t.included, self.head, self._opts.reorg_depth):
                self.untrack(t)

    async def _fill_gaps(self, counts: dict[str, int], now: float) -> None:
        for key in self._keys:
            count = counts.get(key.address)
            gaps = [] if count is None else key.nonces.gaps(count, self._tracked[key.address])
            if not gaps or key.lock.locked():
                self._gap_seen.pop(key.address, None)
                continue
            polls, since = self._gap_seen.get(key.address, (0, now))
            self._gap_seen[key.address] = (polls + 1, since)
            lasting = polls + 1 >= GAP_POLLS and now - since >= GAP_SECONDS
            if lasting and self.resender is not None:
                for nonce in gaps:
                    await self.resender.fill_gap(key, nonce)
                self._gap_seen.pop(key.address, None)

    def _count_pending(self) -> None:
        self._stats.pending_transactions = sum(1 for t in self.tracked() if t.included is None)


def _ok(answer: Any) -> Any:
    if isinstance(answer, RpcError):
        raise answer
    return answer


def _block(answer: Any) -> dict[str, Any]:
    block = _ok(answer)
    if not isinstance(block, dict) or "number" not in block or "hash" not in block:
        raise ValueError(f"not a block: {block!r:.200}")
    return block


def _maybe_block(answer: Any) -> dict[str, Any] | None:
    block = _ok(answer)
    return block if isinstance(block, dict) else None
