"""`channel: {min_deposit}` on a route and the top-level `channels:` (issue 14) in the loader."""

from __future__ import annotations

from decimal import Decimal

import pytest
from eth_account import Account

from gateway.config.settings import ChannelsSettings, ChannelTerms
from tests.unit.config.test_config import MARK, errors, loads, marked_line, text_with

INFER = '  - path: /v1/infer/*\n    price: "$0.001"\n'
KEY = "0x" + "cd" * 32


def _route(extra: str, price: str = 'price: "$0.001"') -> str:
    return text_with() + f"  - path: /v1/infer/*\n    {price}\n    {extra}\n"


def test_the_issue_shape_loads() -> None:
    text = (
        text_with()
        + INFER
        + '    channel: {min_deposit: "$1.00"}\n'
        + 'channels: {claim_every: 60s, claim_over: "$5", withdraw_delay: 1h}\n'
    )
    settings = loads(text)
    (route,) = [r for r in settings.routes if r.path == "/v1/infer/*"]
    assert route.channel == ChannelTerms(min_deposit=Decimal("1.00"))
    assert settings.channels == ChannelsSettings(60.0, Decimal(5), 3600)
    assert all(r.channel is None for r in settings.routes if r is not route)


def test_defaults_when_channels_is_absent() -> None:
    settings = loads(text_with())
    assert settings.channels.claim_every == 60.0
    assert settings.channels.claim_over == Decimal(5)
    assert settings.channels.withdraw_delay == 3600
    assert settings.channels.authorizer_key is None


def test_values_are_converted() -> None:
    text = text_with() + (
        'channels:\n  claim_every: 1m30s\n  claim_over: "$0.25"\n  withdraw_delay: 15m\n'
        "  authorizer_key: ${AUTH}\n"
    )
    channels = loads(text, {"AUTH": KEY}).channels
    assert channels == ChannelsSettings(90.0, Decimal("0.25"), 900, KEY)
    assert KEY not in repr(channels)


def test_a_deposit_equal_to_one_call_is_enough() -> None:
    route = loads(_route('channel: {min_deposit: "$0.001"}')).routes[-1]
    assert route.channel == ChannelTerms(Decimal("0.001"))


@pytest.mark.parametrize(
    ("text", "where", "message"),
    [
        (
            text_with() + f"channels: {{withdraw_delay: 14m}}  {MARK}\n",
            "channels.withdraw_delay",
            "outside what the channel contract allows (15m to 30 days)",
        ),
        (
            text_with() + f"channels: {{withdraw_delay: 745h}}  {MARK}\n",
            "channels.withdraw_delay",
            "outside what the channel contract allows",
        ),
        (
            text_with() + f"channels: {{withdraw_delay: 900.5}}  {MARK}\n",
            "channels.withdraw_delay",
            "not a whole number of seconds",
        ),
        (
            text_with() + f"channels: {{claim_over: five}}  {MARK}\n",
            "channels.claim_over",
            "is not a price",
        ),
        (
            text_with() + f"channels: {{claim_every: soon}}  {MARK}\n",
            "channels.claim_every",
            "is not a duration",
        ),
        (
            text_with() + f"channels: {{claim_evry: 1m}}  {MARK}\n",
            "channels.claim_evry",
            'unknown key; did you mean "claim_every"?',
        ),
        (
            text_with() + f"channels: {{authorizer_key: nope}}  {MARK}\n",
            "channels.authorizer_key",
            "",
        ),
        (
            _route(f'channel: {{min_deposit: "$0.0005"}}  {MARK}'),
            "routes[1].channel.min_deposit",
            "$0.0005 is less than one call ($0.001)",
        ),
        (
            _route(f"channel: {{}}  {MARK}"),
            "routes[1].channel.min_deposit",
            "required",
        ),
        (
            _route(f'channel: {{min_deposit: "$1", max: 3}}  {MARK}'),
            "routes[1].channel.max",
            "unknown key",
        ),
        (
            _route(f'channel: {{min_deposit: "$1"}}  {MARK}', "price: free"),
            "routes[1].channel",
            "only a priced route takes vouchers",
        ),
        (
            _route(f'channel: {{min_deposit: "$1"}}  {MARK}', 'price: {upto: "$0.10"}'),
            "routes[1].channel",
            "needs a fixed price",
        ),
        (
            _route(
                f'channel: {{min_deposit: "$1"}}  {MARK}',
                'price: "$0.001"\n    price_by: {query.tier: {gold: "$0.01"}}',
            ),
            "routes[1].channel",
            "price_by rules are not paid with vouchers",
        ),
        (
            _route(
                f'channel: {{min_deposit: "$1"}}  {MARK}',
                'accepts: [{amount: "$0.001"}, {amount: "$0.002"}]',
            ),
            "routes[1].channel",
            "needs one price",
        ),
    ],
)
def test_errors_name_their_line_and_key(text: str, where: str, message: str) -> None:
    found = errors(text, {})
    line = marked_line(text)
    assert any(e.startswith(f"gateway.yaml:{line} {where}: ") and message in e for e in found), (
        found
    )


def test_a_wrong_price_is_reported_once() -> None:
    found = errors(_route('channel: {min_deposit: "$1"}', "price: lots"))
    assert len(found) == 1 and "routes[1].price" in found[0], found


def test_a_dollar_deposit_needs_known_decimals() -> None:
    token = "0x" + "12" * 20
    found = errors(
        _route(
            'channel: {min_deposit: "$1"}',
            f"accepts: [{{asset: '{token}', amount: '1000', extra: {{name: T, version: '1'}}}}]",
        )
    )
    assert any("routes[1].channel.min_deposit" in e and "known decimals" in e for e in found), found


def test_a_channel_route_offers_batch_settlement_beside_exact() -> None:
    text = (
        text_with()
        + INFER
        + '    channel: {min_deposit: "$1.00"}\n'
        + 'channels: {withdraw_delay: 2h, authorizer_key: "${AUTH}"}\n'
    )
    route = loads(text, {"AUTH": KEY}).routes[-1]
    exact, batch = route.accepts
    assert (exact.scheme, batch.scheme) == ("exact", "batch-settlement")
    for field in ("network", "asset", "amount", "pay_to", "max_timeout_seconds"):
        assert getattr(batch, field) == getattr(exact, field), field
    assert dict(batch.extra) == {
        **exact.extra,
        "withdrawDelay": 7200,
        "minDeposit": "1000000",
        "receiverAuthorizer": Account.from_key(KEY).address,
    }


def test_without_a_key_the_authorizer_is_left_to_the_facilitator() -> None:
    route = loads(_route('channel: {min_deposit: "$1"}')).routes[-1]
    assert "receiverAuthorizer" not in route.accepts[1].extra
    assert route.accepts[1].extra["withdrawDelay"] == 3600


@pytest.mark.parametrize(
    "store",
    [
        "redis+sentinel://127.0.0.1:26379/mymaster",
        "redis://127.0.0.1:7000,127.0.0.1:7001?cluster=true",
    ],
)
def test_a_channel_route_needs_one_redis_server(store: str) -> None:
    channel = 'channel: {min_deposit: "$1.00"}'
    text = (
        text_with(store=f'"{store}"  {MARK}')
        + "  - path: /v1/infer/*\n"
        + (f'    price: "$0.001"\n    {channel}\n')
    )
    (message,) = errors(text)
    assert message.startswith(f"gateway.yaml:{marked_line(text)} store: routes[1].channel")
    assert "one Redis server" in message
    # without the channel route the same store loads; a single server takes channels
    assert loads(text.replace(channel, "")).store == store
    assert loads(text.replace(store, "redis://127.0.0.1:6379/0")).routes[1].channel is not None
