"""From payments to broadcast transactions: simulate, sign, send, hand to the watcher.

A batch (or a single payment) is simulated first: `eth_call` of the exact transaction to
send (with its `eth_estimateGas` in the same JSON-RPC batch until that call's gas is known:
gas.py). A payment that would revert is refused with its reason and never costs gas; in a
batch, `tryAggregate` reports each call, the failing ones are dropped and the rest
simulated again. Then one settler key signs and broadcasts under its lock (nonce order),
without waiting for any receipt.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import sys
import time
from collections.abc import Callable, Sequence

from x402.mechanisms.evm.constants import (
    ERR_TRANSACTION_FAILED,
    ERR_TRANSACTION_SIMULATION_FAILED,
)
from x402.mechanisms.evm.exact.eip3009_utils import parse_eip3009_transfer_error

from .batch import Collector, transaction_for
from .calls import ContractCall, decode_try_aggregate, revert_message, revert_text
from .fees import bumped, market_fees
from .gas import GasHints
from .nonces import SendRefusal, classify_refusal
from .options import EngineOptions
from .rpc import Call, RpcClient, RpcError, RpcUnavailable, hex_data, quantity
from .signer import SettlerKey, SignedTx, choose
from .stats import EngineStats
from .txs import Kind, Outcome, Payment, Tracked
from .watcher import Watcher

log = logging.getLogger("gateway.facilitators.engine")
SEND_TRIES = 3
SIMULATION_ROUNDS = 3  # a batch shrinks at most this often before it is given up on
FILLER_GAS = 21_000


class NotSent(Exception):
    """Nothing was broadcast, for a reason that is not the payments' fault."""


def refusal_reason(message: str) -> str:
    """The SDK's reason for a simulated transfer that reverted with `message`."""
    reason = parse_eip3009_transfer_error(RuntimeError(message))
    return ERR_TRANSACTION_SIMULATION_FAILED if reason == ERR_TRANSACTION_FAILED else reason


class Settler:
    def __init__(  # noqa: PLR0913  the settler's five collaborators, and a clock for tests
        self,
        rpc: RpcClient,
        keys: list[SettlerKey],
        opts: EngineOptions,
        stats: EngineStats,
        watcher: Watcher,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._rpc = rpc
        self._keys = keys
        self._opts = opts
        self._stats = stats
        self._watcher = watcher
        self._clock = clock
        self._turn = itertools.count()
        self._gas = GasHints(opts.gas_limit_margin_percent)
        self.collector = Collector(opts.batch_window, opts.max_batch, self.flush)
        watcher.resender = self

    def submit(self, payment: Payment) -> None:
        self.collector.add(payment)

    async def flush(self, payments: list[Payment]) -> None:
        key = choose(self._keys, self._opts.min_gas_balance, self._turn)
        key.in_flight += 1  # reserved now, so concurrent batches spread over the keys
        tracked = False
        try:
            live, gas = await self._simulate(payments, key)
            if live:
                tracked = await self._broadcast(key, live, gas)
        except (RpcUnavailable, RpcError, NotSent) as exc:
            _resolve_unsent(payments, Kind.UNAVAILABLE, str(exc))
        finally:
            if not tracked:
                key.in_flight -= 1
            # Whatever else went wrong, no payment is left without an answer.
            _resolve_unsent(payments, Kind.UNAVAILABLE, "the settlement could not be sent")

    # --- simulation ---------------------------------------------------------------------

    async def _simulate(
        self, payments: list[Payment], key: SettlerKey
    ) -> tuple[list[Payment], int]:
        """The payments the chain would take now, and the gas limit for their transaction."""
        live = list(payments)
        for _ in range(SIMULATION_ROUNDS):
            call = transaction_for(live, self._opts.multicall_address)
            tx = {"from": key.address, "to": call.target, "data": hex_data(call.data)}
            hinted = self._gas.limit([p.call for p in live])
            calls = [Call("eth_call", (tx, "latest"))]
            if hinted is None:
                calls.append(Call("eth_estimateGas", (tx,)))
            sim, *estimate = await self._rpc.batch(calls)
            failed = self._failures(live, sim)
            if not failed:
                return live, hinted or self._estimated(live, estimate[0])
            for payment, message in failed:
                self._refuse(payment, message)
            live = [p for p in live if not p.future.done()]
            if not live:
                return [], 0
        _resolve_unsent(live, Kind.UNAVAILABLE, "the batch kept failing its simulation")
        return [], 0

    def _estimated(self, live: list[Payment], estimate: object) -> int:
        if isinstance(estimate, RpcError):
            raise NotSent(f"eth_estimateGas: {estimate.message}")
        gas = quantity(estimate)
        if len(live) == 1:
            self._gas.learn(live[0].call, gas)
        return self._gas.padded(gas)

    def _failures(self, live: Sequence[Payment], sim: object) -> list[tuple[Payment, str]]:
        """(payment, revert message) for each payment the simulation says would fail."""
        if len(live) == 1:
            if isinstance(sim, RpcError):
                if not sim.is_revert:
                    raise sim
                return [(live[0], revert_text(sim.message, sim.revert_data))]
            return []
        if isinstance(sim, RpcError):
            raise NotSent(f"Multicall3 at {self._opts.multicall_address}: {sim.message}")
        results = decode_try_aggregate(bytes.fromhex(str(sim)[2:]), len(live))
        return [
            (p, revert_message(ret)) for p, (ok, ret) in zip(live, results, strict=True) if not ok
        ]

    def _refuse(self, payment: Payment, message: str) -> None:
        if payment.broadcast:
            # Sent before (then requeued): a refusal now may mean it was paid after all.
            payment.resolve(Outcome(Kind.PENDING, payment.transaction, None, message))
            return
        self._stats.refused += 1
        payment.resolve(Outcome(Kind.REFUSED, "", refusal_reason(message), message))

    # --- broadcast ----------------------------------------------------------------------

    async def _broadcast(self, key: SettlerKey, live: list[Payment], limit: int) -> bool:
        call = transaction_for(live, self._opts.multicall_address)
        await self._watcher.ensure_ready()  # fees from the chain's head, not a guess
        async with key.lock:
            if not key.nonces.synced:
                key.nonces.sync(await self._pending_count(key))
            for _ in range(SEND_TRIES):
                signed = key.sign(
                    call.target,
                    call.data,
                    limit,
                    key.nonces.next,
                    market_fees(self._watcher.market, self._opts),
                )
                # From here the outcome is unknown until the node answers: if this task
                # is cancelled mid-send, its payers hear "pending", never "not charged".
                _mark(live, broadcast=True)
                sent = False
                try:
                    sent = await self._send_new(key, signed)
                finally:
                    _mark(live, broadcast=sent or _maybe_sent())
                if sent:
                    self._track(key, signed, call, live)
                    return True
        raise NotSent(f"no nonce of {key.address} was accepted after {SEND_TRIES} tries")

    async def _send_new(self, key: SettlerKey, signed: SignedTx) -> bool:
        """Broadcast a new transaction: True if sent (or maybe sent), False to sign again."""
        try:
            await self._rpc.call("eth_sendRawTransaction", hex_data(signed.raw))
        except RpcUnavailable as exc:
            if not exc.maybe_sent:
                raise
            log.warning("engine_broadcast_unknown: %s (%s): watching it", signed.hash, exc)
            return True
        except RpcError as exc:
            refusal = classify_refusal(exc.message)
            if refusal is SendRefusal.ALREADY_KNOWN:
                return True
            if refusal in (SendRefusal.NONCE_TOO_LOW, SendRefusal.UNDERPRICED):
                key.nonces.sync(await self._pending_count(key))
                return False
            if refusal is SendRefusal.FEE_TOO_LOW:
                await self._watcher.poll()
                return False
            raise NotSent(f"the node refused the settlement: {exc.message}") from exc
        return True

    def _track(
        self, key: SettlerKey, signed: SignedTx, call: ContractCall, live: list[Payment]
    ) -> None:
        # No await from commit to track: the watcher never sees a nonce used and untracked.
        key.nonces.commit(signed.nonce)
        now = self._clock()
        tracked = Tracked(
            key,
            signed.nonce,
            call.target,
            call.data,
            live,
            [signed],
            first_sent=now,
            last_sent=now,
            last_sent_block=self._watcher.head,
        )
        for p in live:
            p.broadcast = True
            p.transaction = signed.hash
        self._watcher.track(tracked)
        self._watcher.kick()
        self._stats.transactions += 1
        if len(live) > 1:
            self._stats.batches += 1
            self._stats.batched_payments += len(live)
        self._stats.observe("batch_size", len(live))

    async def _pending_count(self, key: SettlerKey) -> int:
        return quantity(await self._rpc.call("eth_getTransactionCount", key.address, "pending"))

    # --- what the watcher asks for (Resender) -------------------------------------------

    async def rebroadcast(self, tracked: Tracked, attempt: SignedTx) -> None:
        try:
            await self._rpc.call("eth_sendRawTransaction", hex_data(attempt.raw))
            self._stats.rebroadcast += 1
        except RpcError as exc:
            # Known, or its nonce used (mined, then the watcher reads it): nothing to do.
            log.info("engine_rebroadcast_refused: %s: %s", attempt.hash, exc.message)
        except RpcUnavailable as exc:
            log.warning("engine_rebroadcast_failed: %s: %s", attempt.hash, exc)

    async def replace(self, tracked: Tracked) -> None:
        old = tracked.latest
        fees = bumped(old.fees, market_fees(self._watcher.market, self._opts), self._opts)
        if fees is None:
            await self.rebroadcast(tracked, old)
            return
        signed = tracked.key.sign(tracked.to, tracked.data, old.gas, tracked.nonce, fees)
        try:
            await self._rpc.call("eth_sendRawTransaction", hex_data(signed.raw))
        except RpcError as exc:
            log.info("engine_replacement_refused: %s: %s", old.hash, exc.message)
            return
        except RpcUnavailable as exc:
            if not exc.maybe_sent:
                return
        tracked.attempts.append(signed)
        for p in tracked.payments:
            p.transaction = signed.hash
        self._stats.replaced += 1
        self._stats.observe("replaced", 1)
        log.warning("engine_replaced: %s -> %s (max fee %d)", old.hash, signed.hash, fees.max_fee)

    async def fill_gap(self, key: SettlerKey, nonce: int) -> None:
        fees = market_fees(self._watcher.market, self._opts)
        signed = key.sign(key.address, b"", FILLER_GAS, nonce, fees)
        try:
            await self._rpc.call("eth_sendRawTransaction", hex_data(signed.raw))
        except (RpcError, RpcUnavailable) as exc:
            log.warning("engine_gap_fill_failed: %s nonce %d: %s", key.address, nonce, exc)
            return
        key.in_flight += 1
        now = self._clock()
        self._watcher.track(
            Tracked(
                key,
                nonce,
                key.address,
                b"",
                [],
                [signed],
                first_sent=now,
                last_sent=now,
                last_sent_block=self._watcher.head,
                filler=True,
            )
        )
        self._stats.gap_fills += 1

    def requeue(self, tracked: Tracked) -> None:
        self._stats.requeued += len(tracked.payments)
        for payment in tracked.payments:
            if not payment.future.done():
                self.submit(payment)

    async def close(self, grace: float = 10.0) -> None:
        """Let batches being sent finish (a broadcast is never cut in half), then stop."""
        try:
            await asyncio.wait_for(self.collector.drain(), grace)
        except TimeoutError:
            await self.collector.cancel()


def _mark(payments: Sequence[Payment], *, broadcast: bool) -> None:
    for p in payments:
        p.broadcast = broadcast


def _maybe_sent() -> bool:
    """In a `finally` after a send: True when it is being left by cancellation (the request
    may have reached the node), False when the node answered or was never reached."""
    exc = sys.exc_info()[1]
    return isinstance(exc, asyncio.CancelledError)


def _resolve_unsent(payments: Sequence[Payment], kind: Kind, message: str) -> None:
    for p in payments:
        if p.future.done():
            continue
        if p.broadcast:
            continue  # the watcher answers it (or settle() times out: pending)
        p.resolve(Outcome(kind, "", None, message))


async def wait(payment: Payment, within: float) -> Outcome:
    """The payment's outcome, or PENDING (naming its latest transaction) after `within` s."""
    payment.waiters += 1
    try:
        return await asyncio.wait_for(asyncio.shield(payment.future), within)
    except TimeoutError:
        return Outcome(Kind.PENDING, payment.transaction, None, "no receipt yet")
    finally:
        payment.waiters -= 1
