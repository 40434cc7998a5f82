"""Batch-settlement channel metrics (issue 14): what is owed, and what the claims did.

The gauges are set by the claim schedule each time it reads the channel storage (every few
seconds), so they show what the storage holds, whichever replica served the vouchers.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

_LABELS = ["network", "receiver", "asset"]


class ChannelMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.unclaimed = Gauge(
            "x402_gateway_channel_unclaimed_atomic_units",
            "Vouchers served and not yet claimed on chain, per receiver and asset",
            _LABELS,
            registry=r,
        )
        self.open = Gauge(
            "x402_gateway_channels_open", "Channels in the channel storage", _LABELS, registry=r
        )
        self.withdrawing = Gauge(
            "x402_gateway_channels_withdrawal_pending",
            "Channels whose payer asked to withdraw (claimed at once)",
            _LABELS,
            registry=r,
        )
        self.strays = Gauge(
            "x402_gateway_channels_unknown_network",
            "Channels on none of the configured networks: this gateway cannot claim them",
            registry=r,
        )
        self.claims = Counter(
            "x402_gateway_channel_claims",
            "Claim transactions by outcome (claimed, failed) and why they ran "
            "(interval, over, withdrawal, asked)",
            ["outcome", "reason"],
            registry=r,
        )
        self.claimed_vouchers = Counter(
            "x402_gateway_channel_claimed_vouchers",
            "Channel vouchers claimed on chain",
            ["network", "asset"],
            registry=r,
        )
        self.claimed = Counter(
            "x402_gateway_channel_claimed_atomic_units",
            "Amount claimed on chain, in the asset's atomic units",
            ["network", "asset"],
            registry=r,
        )
        self.settles = Counter(
            "x402_gateway_channel_settles",
            "Settle transactions (claimed funds to the receiver) by outcome",
            ["outcome"],
            registry=r,
        )
        self.last_claim = Gauge(
            "x402_gateway_channel_last_claim_timestamp_seconds",
            "When this process last claimed successfully (unix time)",
            registry=r,
        )

    def owed(self, rows: list[tuple[tuple[str, str, str], int, int, int]], strays: int) -> None:
        """Set the gauges: one row per target, (labels, unclaimed, open, withdrawing)."""
        totals: dict[tuple[str, str, str], list[int]] = {}
        for labels, *values in rows:  # two authorizers' channels: one series
            total = totals.setdefault(labels, [0, 0, 0])
            for i, value in enumerate(values):
                total[i] += value
        for gauge in (self.unclaimed, self.open, self.withdrawing):
            gauge.clear()  # a target fully claimed and refunded leaves no stale series
        for labels, (unclaimed, count, withdrawing) in totals.items():
            self.unclaimed.labels(*labels).set(unclaimed)
            self.open.labels(*labels).set(count)
            self.withdrawing.labels(*labels).set(withdrawing)
        self.strays.set(strays)
