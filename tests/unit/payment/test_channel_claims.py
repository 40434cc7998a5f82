"""gateway.payment.channel_claims: when a target is due, grouping by network, backoff."""

from __future__ import annotations

from decimal import Decimal

from x402.mechanisms.evm.batch_settlement.utils import normalize_channel_id

from gateway.payment.channel_claims import Grouper, Target, asked, atomic, due, unclaimed
from gateway.store.backoff import Backoff
from tests.unit.payment.channel_fakes import AUTHORIZER, NETWORK, RECEIVER, TOKEN, new_channel

OTHER = "eip155:8453"
TARGET = Target(NETWORK, RECEIVER, TOKEN, AUTHORIZER)
MINUTE = 60_000


def test_unclaimed_is_the_latest_voucher_beyond_the_claimed_total() -> None:
    assert unclaimed(new_channel(charged=5000, claimed=2000)) == 3000
    assert unclaimed(new_channel(charged=2000, claimed=2000)) == 0
    assert unclaimed(new_channel(charged=0)) == 0


def test_nothing_owed_is_never_due() -> None:
    chans = [new_channel(charged=10, claimed=10), new_channel(withdraw_requested_at=1)]
    assert due(TARGET, chans, now_ms=10**13, last_claim_ms=0, over_atomic=1, every=1) is None


def test_interval_claims_every_owing_channel_together() -> None:
    owing = [new_channel(charged=100), new_channel(charged=300, claimed=100)]
    settled = new_channel(charged=50, claimed=50)
    kwargs = {"last_claim_ms": 0, "over_atomic": 10**9, "every": 60.0}
    assert due(TARGET, [*owing, settled], now_ms=MINUTE - 1, **kwargs) is None  # type: ignore[arg-type]
    found = due(TARGET, [*owing, settled], now_ms=MINUTE, **kwargs)  # type: ignore[arg-type]
    assert found is not None
    assert (found.reason, found.amount) == ("interval", 300)
    assert found.channel_ids == {normalize_channel_id(c.channel_id) for c in owing}


def test_one_channel_over_the_threshold_claims_at_once() -> None:
    chans = [new_channel(charged=4_999_999), new_channel(charged=10)]
    kwargs = {"now_ms": 1000, "last_claim_ms": 999, "every": 60.0}
    assert due(TARGET, chans, over_atomic=5_000_000, **kwargs) is None  # type: ignore[arg-type]
    chans[0] = new_channel(charged=5_000_000)
    found = due(TARGET, chans, over_atomic=5_000_000, **kwargs)  # type: ignore[arg-type]
    assert found is not None and found.reason == "over" and len(found.channel_ids) == 2


def test_a_withdrawal_request_claims_at_once() -> None:
    chans = [new_channel(charged=1, withdraw_requested_at=1_700_000_000)]
    found = due(TARGET, chans, now_ms=1000, last_claim_ms=999, over_atomic=10**9, every=3600)
    assert found is not None and found.reason == "withdrawal"


def test_asked_takes_every_owing_channel_or_the_named_ones() -> None:
    one, two = new_channel(charged=7), new_channel(charged=9)
    done = new_channel(charged=3, claimed=3)
    everything = asked(TARGET, [one, two, done], None)
    assert everything is not None and everything.amount == 16
    named = asked(TARGET, [one, two], frozenset({normalize_channel_id(two.channel_id)}))
    assert named is not None and named.amount == 9
    assert asked(TARGET, [done], None) is None


def test_channels_group_by_network_receiver_and_token() -> None:
    grouper = Grouper([OTHER, NETWORK])
    a = new_channel(charged=1)
    b = new_channel(charged=2, token="0x" + "66" * 20)
    c = new_channel(charged=3, network=OTHER)
    stray = new_channel(charged=4, network="eip155:1")
    groups, strays = grouper.group([a, b, c, stray, a])
    assert strays == [stray]
    assert groups[TARGET] == [a, a]
    assert sum(len(v) for v in groups.values()) == 4
    assert {t.network for t in groups} == {NETWORK, OTHER}
    assert grouper.network_of(c) == OTHER  # remembered, and still right


def test_claim_over_in_atomic_units() -> None:
    assert atomic(Decimal("5"), 6) == 5_000_000
    assert atomic(Decimal("0.0015"), 6) == 1500
    assert atomic(Decimal("1"), 18) == 10**18


def test_retry_waits_longer_each_failure_capped_and_resets() -> None:
    # The claim schedule's retries are the store's Backoff (gateway/store/backoff.py).
    retry = Backoff(base=2.0, cap=10.0, jitter=lambda: 1.0)
    assert retry.wait_left(0.0) == 0
    delays = [retry.failed(100.0, "boom") for _ in range(5)]
    assert delays == [2.0, 4.0, 8.0, 10.0, 10.0]
    assert retry.wait_left(109.9) > 0 and retry.wait_left(110.0) == 0
    assert retry.last_error == "boom"
    retry.succeeded()
    assert retry.wait_left(0.0) == 0 and not retry.failing
