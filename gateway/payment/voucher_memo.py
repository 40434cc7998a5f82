"""A channel voucher's match, remembered per channel (issue 14): a payer's every voucher on a
channel repeats everything but the voucher itself (the accepted terms, the channel's config,
its id), so once the full match (`gateway.payment.match`) has accepted one, the next whose
repeated parts are the same, against the same route terms, is the same match but for its
voucher fields (amount, signature), which are still checked each time
(`channel_terms.voucher_again`).

"The same" is decided strictly: the route's requirements must be the very objects the first
match was made against (a reloaded config or a dynamic price is a new object: a miss), and
the payload's parts are compared as their `repr`, which tells apart what `==` would not (`1`,
`1.0` and `True`; a key order), so a hit never accepts what the full match would refuse; a
miss is the full match. Pure: no I/O; one per generation (its `ChannelIds`), bounded.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from x402.schemas import PaymentPayload, PaymentRequirements

from gateway.config.settings import Requirement
from gateway.payment.recent import keep
from gateway.payment.voucher_check import Parsed

CACHED_VOUCHERS = 4096  # channels (with their terms) whose last accepted match is kept

MemoKey = tuple[str | int, ...]


@dataclass(frozen=True, slots=True)
class Accepted:
    """What the full match found for a voucher's repeated parts."""

    accepts: tuple[Requirement, ...]  # the route's requirements it was matched against
    requirement: Requirement
    chain_id: int
    channel_id: str  # lower-case
    payer: str  # lower-case
    # `requirement` as the v2 wire states it, built once for the channel's every voucher
    # (`MatchedPayment.requirements`: read, never changed: tests/unit/payment/test_voucher_memo.py)
    requirements: PaymentRequirements
    # Its `channelConfig` as the fast path parses it (`voucher_check.parse_config`): its
    # next vouchers are carried to the voucher road parsed (`ChannelPayment.voucher`).
    config: Parsed | None = None


def memo_key(payload: PaymentPayload) -> MemoKey | None:
    """A plain voucher's repeated parts (all the match reads but the voucher's amount and
    signature), as text; None when `payload` is not a plain voucher (never remembered)."""
    raw = payload.payload
    voucher = raw.get("voucher")
    if raw.get("type") != "voucher" or not isinstance(voucher, dict):
        return None
    claimed = voucher.get("channelId")
    if not isinstance(claimed, str):
        return None
    terms = payload.accepted
    return (
        terms.scheme,
        terms.network,
        terms.asset,
        terms.pay_to,
        terms.amount,
        terms.max_timeout_seconds,  # an int (the model's): compared exactly as its text
        # one repr of both: a tuple's is its items' reprs, unambiguously delimited
        repr((terms.extra, raw.get("channelConfig"))),
        claimed,
    )


class VoucherMemo:
    """The last accepted match per (route terms, channel)."""

    def __init__(self, size: int = CACHED_VOUCHERS) -> None:
        # Least recently used first (an LRU in C: cachetools' costs ~5 Python calls a hit).
        self._seen: OrderedDict[MemoKey, Accepted] = OrderedDict()
        self._size = size

    def get(self, key: MemoKey, accepts: tuple[Requirement, ...]) -> Accepted | None:
        """The match remembered for `key` against these very route requirements."""
        found = self._seen.get(key)
        if found is None or found.accepts is not accepts:
            return None
        self._seen.move_to_end(key)
        return found

    def remember(self, key: MemoKey, accepted: Accepted) -> None:
        keep(self._seen, key, accepted, self._size)

    def __len__(self) -> int:
        return len(self._seen)
