"""Settler keys: local signing (eth-account; its ECDSA runs in libsecp256k1 through
coincurve) and the choice of which key sends the next transaction."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from eth_account import Account
from eth_account.signers.local import LocalAccount

from .fees import Fees
from .nonces import NonceBook


@dataclass(frozen=True, slots=True)
class SignedTx:
    raw: bytes
    hash: str  # 0x, lower-case
    nonce: int
    fees: Fees
    gas: int


class SettlerKey:
    """One key: its account, its nonces, the lock its broadcasts take turns on."""

    def __init__(self, private_key: str, chain_id: int) -> None:
        self._account: LocalAccount = Account.from_key(private_key)
        self.address: str = self._account.address  # checksummed
        self.chain_id = chain_id
        self.nonces = NonceBook()
        self.lock = asyncio.Lock()
        self.in_flight = 0  # transactions sent and not yet final
        self.balance: int | None = None  # wei, as last read by the watcher

    def __repr__(self) -> str:
        return f"SettlerKey({self.address})"  # never the key

    def sign(self, to: str, data: bytes, gas: int, nonce: int, fees: Fees) -> SignedTx:
        tx: dict[str, Any] = {
            "chainId": self.chain_id,
            "nonce": nonce,
            "to": bytes.fromhex(to[2:]),  # bytes: eth-account wants checksummed text
            "value": 0,
            "data": data,
            "gas": gas,
            **fees.fields(),
        }
        if not fees.legacy:
            tx["type"] = 2
        signed = self._account.sign_transaction(tx)
        return SignedTx(
            raw=bytes(signed.raw_transaction),
            hash="0x" + bytes(signed.hash).hex(),
            nonce=nonce,
            fees=fees,
            gas=gas,
        )


def choose(keys: Sequence[SettlerKey], floor: int, turn: itertools.count[int]) -> SettlerKey:
    """The key with the fewest transactions in flight, among those holding at least `floor`
    wei of gas money (all of them if none does); ties take turns."""
    funded = [k for k in keys if k.balance is None or k.balance >= floor] or list(keys)
    least = min(k.in_flight for k in funded)
    tied = [k for k in funded if k.in_flight == least]
    return tied[next(turn) % len(tied)]
