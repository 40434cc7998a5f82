"""When a gateway runs the channel claim schedule (`channel_service.wanted`)."""

from __future__ import annotations

import pytest

from gateway.payment.channel_service import wanted
from tests.unit.config.test_config import loads, text_with

CHANNEL_ROUTE = '  - path: /v1/infer/*\n    price: "$0.001"\n    channel: {min_deposit: "$1"}\n'


@pytest.mark.parametrize(
    ("store", "expected"),
    [
        ("memory", False),
        ("redis://127.0.0.1:6379/0", True),  # channels served before may still be owed
        ("unix:///run/redis.sock", True),
        # channel state cannot live in these (the config refuses channel routes on them),
        # so a gateway on one starts without a schedule instead of failing to start
        ("redis+sentinel://127.0.0.1:26379/mymaster", False),
        ("redis://127.0.0.1:7000,127.0.0.1:7001?cluster=true", False),
    ],
)
def test_the_schedule_runs_where_channels_can_live(store: str, expected: bool) -> None:
    assert wanted(loads(text_with(store=f'"{store}"'))) is expected


def test_a_channel_route_always_wants_the_schedule() -> None:
    assert wanted(loads(text_with() + CHANNEL_ROUTE))
