"""When to try an unreachable store again: the decision alone, no I/O.

After a failure the store is left alone for a delay that doubles with each failure in a
row (jittered, capped), so a dead or black-holed Redis costs each paid request an instant
503 instead of a connect timeout, and replicas do not hammer it in step while it restarts.
The first call after the delay is the reconnect attempt; one success resets everything.
"""

from __future__ import annotations

import random
from collections.abc import Callable

BASE = 0.1
CAP = 2.0


class Backoff:
    def __init__(
        self,
        base: float = BASE,
        cap: float = CAP,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self._base = base
        self._cap = cap
        self._jitter = jitter
        self._failures = 0
        self._until = 0.0
        self.last_error = ""

    def wait_left(self, now: float) -> float:
        """Seconds before the next attempt may be made (0: try now)."""
        return max(0.0, self._until - now)

    def failed(self, now: float, error: str) -> float:
        """Record a failure at `now`; returns the delay before the next attempt."""
        self._failures += 1
        self.last_error = error
        full = min(self._cap, self._base * 2.0 ** min(self._failures - 1, 30))
        delay = full * (0.5 + 0.5 * self._jitter())  # half fixed, half jitter
        self._until = now + delay
        return delay

    def succeeded(self) -> None:
        self._failures = 0
        self._until = 0.0
        self.last_error = ""

    @property
    def failing(self) -> bool:
        return self._failures > 0
