"""When to claim batch-settlement vouchers: the decisions alone, no I/O (issue 14, claims).

What is owed lives in the channel storage itself (the SDK's `Channel`: the payer's latest
voucher `charged_cumulative_amount`, and `total_claimed` on chain): the unclaimed amount is
their difference. Nothing else has to survive a restart for every served voucher to be
claimed: the next run reads the same storage.

Channels are grouped by what one claim transaction can carry: one network, one receiver, one
token, and one receiver authorizer, whose single signature covers the whole batch (a
`Target`: a channel signed for by another authorizer, say before `authorizer_key` changed,
then fails alone instead of holding up the rest). The network is not stored in a channel; it is the
configured network whose chain id makes the channel's config hash to its id. Channels are
grouped from the storage, not from the routes, so a channel of a route removed by a reload
is still claimed.

A target is due when: a payer asked to withdraw (its unclaimed vouchers must land before the
withdraw delay ends), or one channel owes at least `claim_over`, or `claim_every` has passed
since the target's last claim and anything is owed.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal

from eth_utils.address import to_checksum_address
from x402.mechanisms.evm.batch_settlement.server.storage import Channel
from x402.mechanisms.evm.batch_settlement.types import ChannelConfig
from x402.mechanisms.evm.batch_settlement.utils import compute_channel_id, normalize_channel_id

BACKOFF_BASE = 2.0  # seconds before the first retry of a failed claim or settle
BACKOFF_CAP = 120.0


@dataclass(frozen=True, slots=True, order=True)
class Target:
    """What one claim transaction and one settle transaction cover."""

    network: str  # CAIP-2
    receiver: str  # checksummed
    token: str  # checksummed
    authorizer: str  # checksummed: the channels' receiverAuthorizer

    @property
    def key(self) -> str:
        return f"{self.network}/{self.receiver}/{self.token}/{self.authorizer}"


@dataclass(frozen=True, slots=True)
class ClaimPolicy:
    every: float  # seconds between claims of a target that is owed anything
    over: Decimal  # dollars: a channel owing this much is claimed at once


@dataclass(frozen=True, slots=True)
class Due:
    target: Target
    channel_ids: frozenset[str]  # normalized ids of the channels to claim
    reason: str  # withdrawal | over | interval | asked
    amount: int  # atomic units owed over those channels


def unclaimed(channel: Channel) -> int:
    """Atomic units the payer's latest voucher covers beyond what was claimed on chain."""
    return max(0, int(channel.charged_cumulative_amount) - int(channel.total_claimed))


class Grouper:
    """Groups channels by target. A channel's network never changes (its id binds it), so
    it is worked out once per channel id: hashing a config costs ~0.1 ms, and the schedule
    looks at every channel every few seconds."""

    def __init__(self, networks: Sequence[str], remember: int = 100_000) -> None:
        self.networks = tuple(networks)
        self._remember = remember
        self._known: dict[str, str | None] = {}

    def network_of(self, channel: Channel) -> str | None:
        """The network among ours that the channel lives on, or None."""
        wanted = normalize_channel_id(channel.channel_id)
        if wanted in self._known:
            return self._known[wanted]
        found = next(
            (n for n in self.networks if _channel_id(channel.channel_config, n) == wanted), None
        )
        if len(self._known) >= self._remember:
            self._known.clear()
        self._known[wanted] = found
        return found

    def group(
        self, channels: Iterable[Channel]
    ) -> tuple[dict[Target, list[Channel]], list[Channel]]:
        """Channels by target, and those on none of our networks (not claimable here)."""
        groups: dict[Target, list[Channel]] = {}
        strays: list[Channel] = []
        for channel in channels:
            network = self.network_of(channel)
            if network is None:
                strays.append(channel)
                continue
            config = channel.channel_config
            target = Target(
                network,
                to_checksum_address(config.receiver),
                to_checksum_address(config.token),
                to_checksum_address(config.receiver_authorizer),
            )
            groups.setdefault(target, []).append(channel)
        return groups, strays


def due(  # noqa: PLR0913  the target's state and the policy, keyword-only
    target: Target,
    channels: Sequence[Channel],
    *,
    now_ms: int,
    last_claim_ms: int,
    over_atomic: int,
    every: float,
) -> Due | None:
    """What to claim of `target` now, or None. Every owing channel is claimed together:
    one transaction carries up to a hundred, so the earlier ones ride along for free."""
    owing = [c for c in channels if unclaimed(c) > 0]
    if not owing:
        return None
    if any(c.withdraw_requested_at > 0 for c in owing):
        reason = "withdrawal"
    elif any(unclaimed(c) >= over_atomic for c in owing):
        reason = "over"
    elif now_ms - last_claim_ms >= every * 1000:
        reason = "interval"
    else:
        return None
    return _due(target, owing, reason)


def asked(target: Target, channels: Sequence[Channel], only: frozenset[str] | None) -> Due | None:
    """What an operator's `channels claim` takes of `target`: every owing channel, or the
    named ones (normalized ids)."""
    owing = [
        c
        for c in channels
        if unclaimed(c) > 0 and (only is None or normalize_channel_id(c.channel_id) in only)
    ]
    return _due(target, owing, "asked") if owing else None


def _due(target: Target, owing: Sequence[Channel], reason: str) -> Due:
    ids = frozenset(normalize_channel_id(c.channel_id) for c in owing)
    return Due(target, ids, reason, sum(unclaimed(c) for c in owing))


def atomic(dollars: Decimal, decimals: int) -> int:
    """`claim_over` in a token's atomic units (a stablecoin: one unit is one dollar)."""
    return int(dollars * (Decimal(10) ** decimals))


def _channel_id(config: ChannelConfig, network: str) -> str:
    return normalize_channel_id(compute_channel_id(config, network))
