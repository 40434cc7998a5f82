"""Request rates in the config: `limits: {per_payer: 10/s, per_ip: 100/m}`, at the top level
(every priced route) and on a route (its own buckets, on top of the top-level ones)."""

from __future__ import annotations

import re

import yaml

from gateway import formats
from gateway.config.reader import Reader, Section, using
from gateway.config.settings import NO_RATE_LIMITS, Rate, RateLimits

RATE_KEYS = frozenset({"per_payer", "per_ip", "daily_spend"})
ROUTE_LIMIT_KEYS = frozenset({"per_payer", "per_ip"})
MICRO = 1_000_000
_RATE = re.compile(r"\s*(\d+)\s*/\s*(\S+)\s*")
_UNITS = {"s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "d": 86400.0}
_MAX_COUNT = 1_000_000_000


def parse_rate(text: str) -> Rate:
    """`10/s`, `100/m`, `5/h`, `1000/d`, or a count per duration (`20/30s`)."""
    match = _RATE.fullmatch(text)
    if match is None:
        raise ValueError(f"{formats.quote(text)} is not a rate; write e.g. 10/s, 100/m or 20/30s")
    count = int(match.group(1))
    if not 0 < count <= _MAX_COUNT:
        raise ValueError(f"{formats.quote(text)}: the count must be 1 to {_MAX_COUNT}")
    unit = match.group(2).lower()
    seconds = _UNITS.get(unit)
    if seconds is None:
        try:
            seconds = formats.parse_duration(unit)
        except ValueError:
            raise ValueError(
                f"{formats.quote(text)}: {formats.quote(unit)} is not s, m, h, d or a duration"
            ) from None
    return Rate(count, seconds)


def parse_spend(text: str) -> int:
    """`"$5"`: a daily cap in millionths of a dollar (stablecoins count at face value)."""
    micro = formats.parse_usd(text) * MICRO
    if micro != micro.to_integral_value():
        raise ValueError(f"{formats.quote(text)} is finer than $0.000001")
    return int(micro)


def read_rates(section: Section) -> RateLimits:
    """`per_payer`, `per_ip` (and, at the top level, `daily_spend`) of a section that may
    hold other keys too."""
    rate = using(parse_rate)
    found = RateLimits(
        per_payer=section.read("per_payer", rate, None),
        per_ip=section.read("per_ip", rate, None),
        daily_spend=section.read("daily_spend", using(parse_spend), None),
    )
    return found if found.any else NO_RATE_LIMITS


def route_rates(reader: Reader, node: yaml.Node | None, path: str, free: bool) -> RateLimits:
    """A route's own `limits:`; a free route has no payer, so only `per_ip` applies there."""
    if node is None:
        return NO_RATE_LIMITS
    section = reader.section(node, path, ROUTE_LIMIT_KEYS)
    if section is None:
        return NO_RATE_LIMITS
    rates = read_rates(section)
    if free and rates.per_payer is not None:
        section.error("per_payer", "a free route has no payer; use per_ip")
    return rates
