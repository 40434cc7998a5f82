"""Batched settlement: payments arriving within a window share one Multicall3 transaction.

The base cost of a transaction (21,000 gas, the calldata's own overhead) is paid once per
batch instead of once per payment. A batch of one is sent straight to the token (no
Multicall3 overhead). The window opens with the first payment and closes after
`batch_window` seconds or at `max_batch` payments, whichever comes first; 0 turns it off.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from .calls import ContractCall, try_aggregate
from .txs import Payment

log = logging.getLogger("gateway.facilitators.engine")
Flush = Callable[[list[Payment]], Coroutine[Any, Any, None]]


def transaction_for(payments: Sequence[Payment], multicall: str) -> ContractCall:
    """The one call that settles all of `payments`: the transfer itself for one, else
    `tryAggregate(false, ...)` (each call may fail on its own)."""
    if not payments:
        raise ValueError("no payments to settle")
    if len(payments) == 1:
        return payments[0].call
    return try_aggregate(multicall, [p.call for p in payments])


def chunks(payments: Sequence[Payment], size: int) -> list[list[Payment]]:
    return [list(payments[i : i + size]) for i in range(0, len(payments), size)]


class Collector:
    """Gathers payments into batches and hands each batch to `flush` in its own task."""

    def __init__(self, window: float, max_batch: int, flush: Flush) -> None:
        self._window = window
        self._max = max_batch
        self._flush = flush
        self._open: list[Payment] = []
        self._timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def waiting(self) -> int:
        return len(self._open)

    def add(self, payment: Payment) -> None:
        self._open.append(payment)
        if self._window <= 0 or len(self._open) >= self._max:
            self._close_window()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self._window, self._close_window)

    def _close_window(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        batch, self._open = self._open, []
        if batch:
            task = asyncio.get_running_loop().create_task(self._flush(batch))
            self._tasks.add(task)
            task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("engine_flush_failed", exc_info=task.exception())

    async def drain(self) -> None:
        """Send what is waiting now and wait for every flush in progress."""
        self._close_window()
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
