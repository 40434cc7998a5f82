"""The engine's settings: one frozen value, built once by whoever wires the engine in.

Plain types only (no dependency on the gateway's config package): the composition root maps
`facilitator: {local: {...}}` onto this, the `facilitator` CLI command maps its flags.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# Where public chains keep Multicall3 (its `tryAggregate` batches settlements).
MULTICALL3_ADDRESS = "0xcA11bde05977b3631167028862bE2a173976CA11"
GWEI = 10**9


@dataclass(frozen=True, slots=True)
class EngineOptions:
    """How one chain's settlements are made. Times in seconds, fees in wei."""

    rpc_url: str
    # Settler private keys: each signs its own nonce sequence, so N keys settle in parallel.
    keys: tuple[str, ...] = field(repr=False)
    # The chain this engine serves; None: asked once from the node (eth_chainId) at start.
    chain_id: int | None = None
    # Payments arriving within this window go into one Multicall3 transaction (0: off).
    batch_window: float = 0.0
    max_batch: int = 50
    multicall_address: str = MULTICALL3_ADDRESS
    # How long settle() waits for a receipt before answering `settlement_pending`.
    confirmation_timeout: float = 30.0
    # The watcher asks the node for its head this often (and at once after each broadcast).
    poll_interval: float = 0.25
    # Blocks a receipt is kept under watch for reorgs after inclusion.
    reorg_depth: int = 6
    # A transaction not mined after this many new blocks, or this many seconds, is stuck:
    # re-broadcast if the node lost it, else replaced with higher fees (same nonce and data).
    stuck_blocks: int = 3
    stuck_seconds: float = 30.0
    # ...but blocks alone never make it stuck sooner than this: a chain that mines on demand
    # (anvil's automine, a busy rollup) makes blocks faster than a receipt can be read.
    stuck_min_seconds: float = 3.0
    # A nonce the node counts as used for this long while none of our transactions for it
    # has a receipt was taken by another sender of our key: its payments are sent again.
    nonce_taken_seconds: float = 10.0
    fee_bump_percent: int = 20  # nodes refuse a replacement under +10% on both fees
    base_fee_multiplier: int = 2  # maxFeePerGas = base fee x this + tip: rides out a surge
    priority_fee: int | None = None  # fixed tip; None: eth_maxPriorityFeePerGas
    max_fee_per_gas: int = 500 * GWEI  # never offer more than this, even when stuck
    gas_limit_margin_percent: int = 25  # over eth_estimateGas
    # Readiness fails while a settler holds less native gas token than this (wei).
    min_gas_balance: int = 0
    balance_interval: float = 15.0  # how often the watcher refreshes settler balances
    rpc_timeout: float = 10.0
    rpc_batch_limit: int = 100  # nodes cap JSON-RPC batch sizes; larger ones are split
    # validBefore must be at least this far ahead (the SDK's margin: 6 s).
    valid_before_margin: int = 6

    def __post_init__(self) -> None:
        problems = self.problems()
        if problems:
            raise ValueError("; ".join(problems))

    def problems(self) -> list[str]:
        """Every inconsistency at once (the caller reports them with its own file:line)."""
        out: list[str] = []
        if not self.keys:
            out.append("keys: at least one settler key is needed")
        if not self.rpc_url.startswith(("http://", "https://")):
            out.append("rpc_url: must be an http(s) URL")
        if self.batch_window < 0 or self.poll_interval <= 0 or self.confirmation_timeout <= 0:
            out.append("batch_window >= 0, poll_interval > 0 and confirmation_timeout > 0")
        if not 1 <= self.max_batch <= 500:
            out.append("max_batch: between 1 and 500")
        if self.fee_bump_percent < 10:
            out.append("fee_bump_percent: at least 10 (nodes refuse smaller replacements)")
        if self.stuck_blocks < 1 or self.reorg_depth < 0 or self.min_gas_balance < 0:
            out.append("stuck_blocks >= 1, reorg_depth >= 0, min_gas_balance >= 0")
        if len(set(self.keys)) != len(self.keys):
            out.append("keys: the same key twice would race on its own nonces")
        return out
