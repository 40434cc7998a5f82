"""Gas price and stuck-transaction decisions, pure (the watcher supplies the chain's state).

EIP-1559 where the chain has a base fee: maxFeePerGas = base fee x multiplier + tip, so a
run of full blocks does not strand the transaction; a legacy gasPrice otherwise. A stuck
transaction is replaced with the same nonce and the same calldata (so it can only ever be
the same payment) and both fees raised by at least `fee_bump_percent` (nodes refuse a
replacement under +10%), or to the market if that is higher; never above the cap.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from .options import GWEI, EngineOptions

DEFAULT_TIP = GWEI // 10  # when the node cannot suggest one (the SDK's default, 0.1 gwei)


@dataclass(frozen=True, slots=True)
class Fees:
    max_fee: int  # maxFeePerGas, or gasPrice when legacy
    tip: int  # maxPriorityFeePerGas (legacy: equal to max_fee)
    legacy: bool = False

    def fields(self) -> dict[str, int]:
        if self.legacy:
            return {"gasPrice": self.max_fee}
        return {"maxFeePerGas": self.max_fee, "maxPriorityFeePerGas": self.tip}


@dataclass(frozen=True, slots=True)
class Market:
    """The chain's fee state, as of the last head the watcher saw."""

    base_fee: int | None  # None: a chain without EIP-1559
    suggested_tip: int | None  # eth_maxPriorityFeePerGas
    gas_price: int | None  # eth_gasPrice (legacy chains)


def market_fees(market: Market, opts: EngineOptions) -> Fees:
    """What a new transaction offers now."""
    cap = opts.max_fee_per_gas
    if market.base_fee is None:
        price = min(cap, (market.gas_price or GWEI) * (100 + opts.fee_bump_percent) // 100)
        return Fees(price, price, legacy=True)
    tip = opts.priority_fee if opts.priority_fee is not None else market.suggested_tip
    tip = min(cap, DEFAULT_TIP if tip is None else tip)
    max_fee = min(cap, market.base_fee * opts.base_fee_multiplier + tip)
    return Fees(max(max_fee, tip), tip)


def _raised(value: int, percent: int) -> int:
    return -(-value * (100 + percent) // 100)  # ceiling: +10% must be at least +10%


def bumped(old: Fees, market: Fees, opts: EngineOptions) -> Fees | None:
    """The replacement's fees, or None when the cap leaves no room for a valid replacement."""
    cap = opts.max_fee_per_gas
    tip = max(_raised(old.tip, opts.fee_bump_percent), market.tip)
    max_fee = max(_raised(old.max_fee, opts.fee_bump_percent), market.max_fee, tip)
    if old.legacy:
        tip = max_fee
    if max_fee > cap or tip > cap:
        return None
    return Fees(max_fee, tip, legacy=old.legacy)


class StuckAction(Enum):
    WAIT = "wait"
    REBROADCAST = "rebroadcast"  # the node lost it: the same signed bytes again
    REPLACE = "replace"  # the node holds it, or it no longer pays enough: higher fees


def is_stuck(blocks_waited: int, seconds_waited: float, opts: EngineOptions) -> bool:
    enough_blocks = blocks_waited >= opts.stuck_blocks and seconds_waited >= opts.stuck_min_seconds
    return enough_blocks or seconds_waited >= opts.stuck_seconds


def stuck_action(sent: Fees, market: Fees, node_has_it: bool) -> StuckAction:
    """For a transaction found stuck: re-send it as is if the node dropped it while its fees
    still pay the market; otherwise outbid (a dropped underpriced one, or one the node holds
    but no block takes)."""
    if not node_has_it and sent.max_fee >= market.max_fee and sent.tip >= market.tip:
        return StuckAction.REBROADCAST
    return StuckAction.REPLACE
