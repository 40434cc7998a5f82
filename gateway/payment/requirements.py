"""A route's configured `Requirement`s as the SDK's wire types: v2 `PaymentRequirements`, and
v1 `PaymentRequirementsV1` for the networks and transfer methods v1 clients can pay.

Both the 402 challenge and the matching of a payment build from here, so the terms a client is
offered and the terms its payment is checked against are the same objects.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from x402.mechanisms.evm.batch_settlement import SCHEME_BATCH_SETTLEMENT
from x402.mechanisms.evm.constants import SCHEME_UPTO
from x402.schemas import PaymentRequirements, SupportedResponse
from x402.schemas.v1 import PaymentRequirementsV1

from gateway.config.settings import Requirement, RouteSettings
from gateway.payment.networks import v1_name

# v1 clients can only sign EIP-3009 (the SDK's v1 exact scheme has no Permit2 path).
_PERMIT2 = "permit2"


def thaw(value: Any) -> Any:
    """Plain dicts and lists from the frozen mappings and tuples settings are made of."""
    if isinstance(value, Mapping):
        return {str(k): thaw(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [thaw(v) for v in value]
    return value


def requirement_v2(req: Requirement) -> PaymentRequirements:
    """One requirement as the v2 wire states it."""
    return PaymentRequirements(
        scheme=req.scheme,
        network=req.network,
        asset=req.asset,
        amount=str(req.amount),
        pay_to=req.pay_to,
        max_timeout_seconds=req.max_timeout_seconds,
        extra=thaw(req.extra),
    )


def requirements_v2(route: RouteSettings) -> list[PaymentRequirements]:
    """The route's `accepts`, in configured order, as v2 wire requirements."""
    return [requirement_v2(req) for req in route.accepts]


def offered_v1(req: Requirement) -> str | None:
    """The v1 network name under which `req` is offered to v1 clients, or None if it is not
    (no v1 name for its network, or a transfer method v1 clients cannot sign)."""
    if req.extra.get("assetTransferMethod") == _PERMIT2:
        return None
    if req.scheme == SCHEME_BATCH_SETTLEMENT:
        return None  # payment channels are v2 only (the SDK has no v1 batch-settlement)
    return v1_name(req.network)


def requirement_v1(
    route: RouteSettings, req: Requirement, network: str, resource_url: str
) -> PaymentRequirementsV1:
    """One requirement in v1 form: the amount is `maxAmountRequired`, the resource is inside."""
    return PaymentRequirementsV1(
        scheme=req.scheme,
        network=network,
        max_amount_required=str(req.amount),
        resource=resource_url,
        description=route.description,
        mime_type=route.mime_type,
        pay_to=req.pay_to,
        max_timeout_seconds=req.max_timeout_seconds,
        asset=req.asset,
        extra=thaw(req.extra) or None,
    )


def requirements_v1(route: RouteSettings, resource_url: str) -> list[PaymentRequirementsV1]:
    """The route's requirements v1 clients can pay; the others are left out of the v1 body."""
    out = []
    for req in route.accepts:
        network = offered_v1(req)
        if network is not None:
            out.append(requirement_v1(route, req, network, resource_url))
    return out


def facilitator_extra(supported: SupportedResponse, scheme: str, network: str) -> dict[str, Any]:
    """What the facilitator adds to a scheme's terms on a network (its /supported `extra`):
    for `upto`, `facilitatorAddress`, the only settler the payer's signed witness allows."""
    for kind in supported.kinds:
        if kind.x402_version == 2 and (kind.scheme, kind.network) == (scheme, network):
            return dict(kind.extra or {})
    return {}


# What a scheme's terms take from the facilitator's /supported `extra`, when not configured.
_FROM_FACILITATOR = {
    SCHEME_UPTO: "facilitatorAddress",
    SCHEME_BATCH_SETTLEMENT: "receiverAuthorizer",
}


def completed(req: PaymentRequirements, supported: SupportedResponse) -> PaymentRequirements:
    """`req` completed from the facilitator's /supported, as the SDK's server schemes do: an
    `upto` one with its `facilitatorAddress`, a `batch-settlement` one without a configured
    authorizer with the facilitator's `receiverAuthorizer`; others as they are."""
    field = _FROM_FACILITATOR.get(req.scheme)
    if field is None or field in (req.extra or {}):
        return req
    address = facilitator_extra(supported, req.scheme, req.network).get(field)
    if not isinstance(address, str):
        return req  # not known yet: the payer's client cannot sign until it is
    return req.model_copy(update={"extra": {**(req.extra or {}), field: address}})


def incomplete(req: PaymentRequirements) -> bool:
    """A `batch-settlement` requirement no authorizer is known for yet: not offered."""
    return req.scheme == SCHEME_BATCH_SETTLEMENT and "receiverAuthorizer" not in (req.extra or {})


# Schemes whose requirements are completed from the facilitator's /supported `extra`.
_COMPLETED = (SCHEME_UPTO, SCHEME_BATCH_SETTLEMENT)


def for_facilitator(
    reqs: PaymentRequirements | PaymentRequirementsV1,
    supported: SupportedResponse,
    amount: int | None = None,
) -> PaymentRequirements | PaymentRequirementsV1:
    """A route's requirements for the facilitator: an `upto` one completed with the
    facilitator's address, and settled for `amount`; a `batch-settlement` one completed with
    the facilitator's receiver authorizer when the gateway has none of its own."""
    if not isinstance(reqs, PaymentRequirements) or reqs.scheme not in _COMPLETED:
        return reqs
    reqs = completed(reqs, supported)
    return reqs if amount is None else reqs.model_copy(update={"amount": str(amount)})
