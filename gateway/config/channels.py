"""Payment channels (issue 14): a route's `channel:` and the top-level `channels:`.

    routes:
      - path: /v1/infer/*
        price: "$0.001"
        channel: {min_deposit: "$1.00"}   # also accept batch-settlement vouchers
    channels: {claim_every: 60s, claim_over: "$5", withdraw_delay: 1h}

A channel is paid at the route's own price, so `channel:` needs one fixed `exact` price on an
EVM network (not `upto`, not a price hook or `price_by`, not an MCP endpoint), and the deposit
it asks for covers at least one call. `withdraw_delay` is written into every channel a payer
opens; the contract refuses one outside 15 minutes to 30 days, so the loader does too.
`authorizer_key` (optional, beside the issue's three keys) is the receiver authorizer: the key
that signs the gateway's claims and refunds; without it the facilitator's advertised one is
used.
"""

from __future__ import annotations

import dataclasses
from decimal import Decimal
from types import MappingProxyType

import yaml
from eth_account import Account
from x402.mechanisms.evm.batch_settlement import (
    MAX_WITHDRAW_DELAY,
    MIN_WITHDRAW_DELAY,
    SCHEME_BATCH_SETTLEMENT,
)

from gateway import formats
from gateway.config import pricing
from gateway.config import values as cv
from gateway.config.reader import Reader, Scalar, Section, duration, using
from gateway.config.settings import (
    AssetSpec,
    ChannelsSettings,
    ChannelTerms,
    Requirement,
    RouteSettings,
)
from gateway.store.redis_url import parse_redis_url

CHANNEL_KEYS = frozenset({"min_deposit"})
BATCH_SETTLEMENT = SCHEME_BATCH_SETTLEMENT
CHANNELS_KEYS = frozenset({"claim_every", "claim_over", "withdraw_delay", "authorizer_key"})


def _dollars(scalar: Scalar) -> Decimal:
    return formats.parse_usd(scalar.text)


def _withdraw_delay(scalar: Scalar) -> int:
    seconds = Decimal(str(formats.parse_duration(scalar.text)))
    if seconds != seconds.to_integral_value():
        raise ValueError(f"{formats.quote(scalar.text)} is not a whole number of seconds")
    if not MIN_WITHDRAW_DELAY <= seconds <= MAX_WITHDRAW_DELAY:
        raise ValueError(
            f"{formats.quote(scalar.text)} is outside what the channel contract allows "
            f"({MIN_WITHDRAW_DELAY // 60}m to {MAX_WITHDRAW_DELAY // 86400} days)"
        )
    return int(seconds)


def compile_channels(reader: Reader, node: yaml.Node | None) -> ChannelsSettings:
    """`channels:` (defaults when absent)."""
    default = ChannelsSettings()
    section = reader.section(node, "channels", CHANNELS_KEYS) if node is not None else None
    if not section or not section.entries:
        return default
    key = section.read("authorizer_key", using(cv.parse_private_key), None, on_null="error")
    return ChannelsSettings(
        claim_every=section.read("claim_every", duration, default.claim_every),
        claim_over=section.read("claim_over", _dollars, default.claim_over),
        withdraw_delay=section.read("withdraw_delay", _withdraw_delay, default.withdraw_delay),
        authorizer_key=key,
    )


def _one_fixed_price(entry: Section, accepts: tuple[Requirement, ...]) -> str | None:
    """Why the route's pricing cannot take vouchers; None when it can."""
    req = accepts[0] if len(accepts) == 1 else None
    problems = (
        ("mcp" in entry, "an MCP endpoint is priced per tool; vouchers pay one fixed price"),
        (
            isinstance(entry.get("price"), yaml.MappingNode),
            "needs a fixed price; an upto price or a price hook is not paid with vouchers",
        ),
        ("price_by" in entry, "needs a fixed price; price_by rules are not paid with vouchers"),
        (not accepts, "only a priced route takes vouchers"),
        (
            len(accepts) > 1,
            "needs one price (price: or one accepts entry); vouchers pay that price",
        ),
        (
            req is not None and (req.scheme != "exact" or formats.chain_id(req.network) is None),
            "needs an exact price on an EVM network",
        ),
    )
    return next((message for found, message in problems if found), None)


def route_channel(
    reader: Reader, entry: Section, accepts: tuple[Requirement, ...], price_text: str
) -> ChannelTerms | None:
    """A route's `channel: {min_deposit}`, given its compiled price (as written, and its
    requirements: none when free, or when its price was reported wrong)."""
    node = entry.get("channel")
    if node is None:
        return None
    section = reader.section(node, entry.where("channel"), CHANNEL_KEYS)
    if section is None:
        return None
    section.require(("min_deposit",), 'required: the smallest deposit, e.g. "$1.00"')
    minimum = section.read("min_deposit", _dollars, None, on_null="error")
    failed = not accepts and price_text != "free" and "mcp" not in entry
    if minimum is None or failed:
        return None  # a wrong price is reported once, by the price's own reader
    problem = _one_fixed_price(entry, accepts)
    if problem is not None:
        entry.error("channel", problem)
        return None
    return _at_least_one_call(section, accepts[0], minimum)


def _at_least_one_call(section: Section, req: Requirement, minimum: Decimal) -> ChannelTerms | None:
    where = "min_deposit"
    if req.decimals == 0 and req.symbol == req.asset:
        section.error(where, f"a dollar deposit needs a token with known decimals ({req.asset})")
        return None
    token = AssetSpec(req.asset, "", "", req.decimals, req.symbol)
    text = format(minimum, "f")
    try:
        atomic = pricing.to_atomic(minimum, token, "$" + text)
    except ValueError as exc:
        section.error(where, str(exc))
        return None
    if atomic < req.amount:
        price = format(Decimal(req.amount).scaleb(-req.decimals).normalize(), "f")
        section.error(where, f"${text} is less than one call (${price}); deposit at least that")
        return None
    return ChannelTerms(min_deposit=minimum)


def _atomic(dollars: Decimal, req: Requirement) -> int:
    token = AssetSpec(req.asset, "", "", req.decimals, req.symbol)
    return pricing.to_atomic(dollars, token, "$" + format(dollars, "f"))


def authorizer_address(channels: ChannelsSettings) -> str | None:
    """The receiver authorizer's address, when the gateway holds its key."""
    key = channels.authorizer_key
    return None if key is None else str(Account.from_key(key).address)


def with_channel(
    accepts: tuple[Requirement, ...], terms: ChannelTerms | None, channels: ChannelsSettings
) -> tuple[Requirement, ...]:
    """The route's requirements, plus its `batch-settlement` one when it takes vouchers: the
    same token, recipient and price, with the channel terms the SDK's server scheme states
    (`withdrawDelay`, `minDeposit` in atomic units, and `receiverAuthorizer` when the gateway
    holds the key; else the facilitator's is filled in from its /supported)."""
    if terms is None or len(accepts) != 1:
        return accepts
    (req,) = accepts
    extra = {
        **req.extra,
        "withdrawDelay": channels.withdraw_delay,
        "minDeposit": str(_atomic(terms.min_deposit, req)),
    }
    authorizer = authorizer_address(channels)
    if authorizer is not None:
        extra["receiverAuthorizer"] = authorizer
    batch = dataclasses.replace(req, scheme=BATCH_SETTLEMENT, extra=MappingProxyType(extra))
    return (req, batch)


def channels_need_one_redis(top: Section, store: str, routes: tuple[RouteSettings, ...]) -> None:
    """Channel state lives in one Redis server (`gateway/store/channels.py`): a Sentinel or
    Cluster store cannot hold it yet, so a channel route on one is refused here, not by a
    failed start."""
    route = next((r for r in routes if r.channel is not None), None)
    if route is None or store == "memory":
        return
    try:
        kind = parse_redis_url(store).kind
    except ValueError:
        return  # the store's own reader reported it
    if kind != "single":
        top.error(
            "store",
            f"routes[{route.index}].channel keeps channel state in one Redis server "
            f"(redis://, rediss:// or unix://); a {kind} store cannot hold it yet",
        )
