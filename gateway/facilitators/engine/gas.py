"""Gas limits without an `eth_estimateGas` per transaction.

An estimate is a binary search of executions on the node: the most expensive thing a
settlement asks of it. The gas a `transferWithAuthorization` needs barely varies for one
token, so the first estimate of each (token, overload) is kept for a while and limits are
computed from it, with room to spare: only the gas used is paid, the limit is a ceiling.
The slack covers what an estimate cannot know (a recipient whose balance is still zero
costs 20,000 more to credit) and the Multicall3 wrapper of a batch. The eth_call
simulation still runs before every broadcast; only the estimate is skipped.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from .calls import ContractCall

INTRINSIC = 21_000  # every transaction's base cost, not part of a call's own share
STATE_SLACK = 25_000  # per call: a zero balance credited, and then some
MULTICALL_OVERHEAD = 30_000  # tryAggregate's own work for a batch
HINT_TTL = 600.0  # estimate again now and then (a token can be upgraded behind a proxy)

Shape = tuple[str, bytes]  # (contract, function selector)


def shape(call: ContractCall) -> Shape:
    return (call.target.lower(), call.data[:4])


class GasHints:
    def __init__(self, margin_percent: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._margin = margin_percent
        self._clock = clock
        self._known: dict[Shape, tuple[int, float]] = {}  # shape -> (execution gas, when)

    def padded(self, estimate: int) -> int:
        return estimate * (100 + self._margin) // 100

    def limit(self, calls: Sequence[ContractCall]) -> int | None:
        """A gas limit for one transaction carrying `calls` (one call: sent directly), or
        None when a call's gas is not known (then estimate, and `learn`)."""
        now = self._clock()
        total = INTRINSIC + (MULTICALL_OVERHEAD if len(calls) > 1 else 0)
        for call in calls:
            known = self._known.get(shape(call))
            if known is None or now - known[1] > HINT_TTL:
                return None
            total += self.padded(known[0]) + STATE_SLACK
        return total

    def learn(self, call: ContractCall, estimate: int) -> None:
        """An estimate for `call` sent on its own."""
        self._known[shape(call)] = (max(estimate - INTRINSIC, 0), self._clock())
