"""What a metered (`upto`) response costs: the amount the origin states, resolved and bounded.

The origin states usage as the x402 SDK's middlewares read it: a `Settlement-Overrides`
response header holding JSON `{"amount": ...}`, where the amount is atomic units ("12300"),
a percentage of the authorized maximum ("50%", two decimals at most) or dollars ("$0.0123",
in the token's decimals). The conversion is the SDK's own
(`x402HTTPServerBase.resolve_settlement_override_amount`).

Decisions (tested in tests/unit/payment/test_metering.py):
- Nothing stated: the route's `default` (the maximum unless configured).
- Stated but unreadable (not JSON, no `amount`, negative, fractional atomic units): the
  route's `default`, and the reason is returned for the log. The origin's mistake never
  makes the payer pay more than the route's own rule.
- More than the authorized maximum: the maximum (the payer never signed for more), logged.
- Zero: nothing is settled (no transaction; the Permit2 nonce stays unspent on chain, and the
  gateway's claim keeps the authorization from buying a second response).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass

from x402.http.constants import SETTLEMENT_OVERRIDES_HEADER
from x402.http.x402_http_server_base import x402HTTPServerBase
from x402.schemas import PaymentRequirements

from gateway.config.settings import Metered, Requirement, RouteSettings
from gateway.observe.logs import get_logger
from gateway.payment.requirements import requirement_v2

log = get_logger("gateway.payments")

OVERRIDES_HEADER = SETTLEMENT_OVERRIDES_HEADER
MAX_STATED = 1024  # characters of a stated amount worth reading


@dataclass(frozen=True, slots=True)
class Usage:
    """The amount to settle, in atomic units, and how it was arrived at."""

    amount: int
    stated: str | None = None  # the amount as the origin stated it (None: not stated)
    capped: bool = False  # stated more than the maximum
    problem: str | None = None  # stated, but unreadable: the default was used


def stated_amount(text: str | None) -> tuple[str | None, str | None]:
    """(the `amount` in a `Settlement-Overrides` value, or why it cannot be read)."""
    if text is None:
        return None, None
    if len(text) > MAX_STATED:
        return None, "Settlement-Overrides is too long"
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):
        return None, "Settlement-Overrides is not JSON"
    if not isinstance(data, dict) or "amount" not in data:
        return None, 'Settlement-Overrides has no "amount"'
    amount = data["amount"]
    if isinstance(amount, bool) or not isinstance(amount, str | int):
        return None, '"amount" must be a string or an integer'
    return str(amount), None


def _atomic(stated: str, wire: PaymentRequirements, decimals: int) -> int:
    resolved = x402HTTPServerBase.resolve_settlement_override_amount(stated, wire, decimals)
    if not resolved.isdecimal():
        raise ValueError(f"{stated[:40]!r} is not atomic units, a percentage or dollars")
    return int(resolved)


def usage(stated: str | None, problem: str | None, req: Requirement, terms: Metered) -> Usage:
    """What to settle for a response whose origin stated `stated` (None: nothing)."""
    if stated is None:
        return Usage(terms.default, problem=problem)
    try:
        amount = _atomic(stated.strip(), requirement_v2(req), req.decimals)
    except ValueError as exc:
        return Usage(terms.default, stated, problem=str(exc))
    if amount > req.amount:
        return Usage(req.amount, stated, capped=True)
    return Usage(amount, stated)


def from_header(value: str | None, req: Requirement, terms: Metered) -> Usage:
    """`usage()` of a `Settlement-Overrides` header value (None: the header is absent)."""
    stated, problem = stated_amount(value)
    return usage(stated, problem, req, terms)


def logged(used: Usage, route: RouteSettings, request_id: str) -> int:
    """`used.amount`, after logging what the operator must know: a capped or unreadable
    statement of usage (the origin's bug, paid for by nobody)."""
    if used.capped:
        log.warning(
            "usage_capped",
            route=route.name,
            request_id=request_id,
            stated=used.stated,
            settled=used.amount,
        )
    if used.problem is not None:
        log.warning(
            "usage_unreadable",
            route=route.name,
            request_id=request_id,
            stated=(used.stated or "")[:80],
            problem=used.problem,
            settled=used.amount,
        )
    return used.amount


def settle_amount(
    route: RouteSettings, req: Requirement, headers: Mapping[str, str], request_id: str
) -> int | None:
    """What to settle for a response with these headers: None for a route that is not
    metered (its price), else the origin's `Settlement-Overrides`, resolved and logged."""
    if route.metered is None:
        return None
    used = from_header(headers.get(OVERRIDES_HEADER), req, route.metered)
    return logged(used, route, request_id)
