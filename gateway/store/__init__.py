"""Payment claims and records.

A claim makes one payment buy at most one response: the first request to claim a payment's
identity wins, every copy after it sees the record. `PaymentStore` is owned here, by the code
that uses it; `open_store()` picks the implementation from the `store:` setting.
"""

from __future__ import annotations

from typing import Protocol

from .records import PaymentRecord


class PaymentStore(Protocol):
    holder: str  # this process's id in the claims it takes (see `alive`)

    async def claim(self, key: str, record: PaymentRecord, ttl: float) -> PaymentRecord | None:
        """Atomically store `record` under `key` unless present; None if we won the claim,
        else the record that holds it."""

    async def update(self, key: str, record: PaymentRecord, ttl: float) -> None:
        """Replace the record of a claim we hold (claimed -> settling -> settled / failed)."""

    async def release(self, key: str, request_id: str) -> None:
        """Drop our claim so the payer may retry the same authorization; only if still ours
        and its status is `claimed` or `failed` (nothing charged): never a `settling` one."""

    async def recent(self, limit: int) -> list[PaymentRecord]:
        """The newest payment records first, for the operator's books."""

    async def alive(self, holder: str | None) -> bool:
        """Whether the process that took a claim (its record's `holder`) still runs: a
        heartbeat key it renews (Redis), or this process itself (memory)."""

    async def replace(
        self,
        key: str,
        expect: PaymentRecord,
        record: PaymentRecord,
        ttl: float,
        history: tuple[PaymentRecord, ...] = (),
    ) -> bool:
        """Atomically put `record` in place of the claim's record if that is still `expect`
        (same request, same status), logging `history` then `record`; False if it changed.
        `ttl` 0 keeps the claim's expiry."""

    async def ping(self) -> None:
        """Raise if the store cannot be used now."""

    async def close(self) -> None: ...


def open_store(url: str) -> PaymentStore:
    if url == "memory":
        from .memory import MemoryStore

        return MemoryStore()
    from .redis import RedisStore

    return RedisStore(url)


__all__ = ["PaymentRecord", "PaymentStore", "open_store"]
