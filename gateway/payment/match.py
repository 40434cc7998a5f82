"""Which of the route's own requirements a decoded payment pays, and the payment's identity.

Nothing the client echoes is trusted: the requirements handed to the facilitator are built
from the route's configuration, and the fields of the signed authorization that move money
(recipient, value, token) are checked against them before any claim or facilitator call.

Decisions (documented here, tested in tests/unit/payment/test_match.py;
the authorization's own fields are checked in `gateway.payment.terms`):
- v2 `accepted` must equal one of the route's requirements: scheme and network exactly, asset
  and payTo as addresses (case-insensitive), amount as an integer, maxTimeoutSeconds exactly
  (as the SDK's server does), and the route's `extra` (EIP-712 name/version, transfer method)
  must be contained in `accepted.extra`, so `extra` cannot move the signature's domain.
- Only the `exact`, `upto` and `batch-settlement` schemes on EVM networks are matched (`upto`
  is Permit2 only; its authorization is for the route's maximum, its spender the upto proxy;
  a channel's deposit or voucher is checked by `gateway.payment.channel_terms`). A requirement whose
  extra says `assetTransferMethod: permit2` takes a Permit2 payload; every other takes
  EIP-3009. A payload of the other shape is `unsupported_payload`. v1 has no Permit2 (nor
  does the SDK's v1 client).
- v1 names no asset: the first of the route's requirements on the payload's scheme and network
  whose recipient and amount the authorization carries is the one (a wrong guess among two
  tokens fails the facilitator's signature check; it can never pay a different amount).
- A payload that is not even shaped like its scheme's (missing field, a nonce that is not
  32 bytes, a non-decimal amount) is `MalformedPayment` (400); a well-formed one that pays the
  wrong thing is `PaymentError` (402 with a fresh challenge).
- The echoed `resource` and `extensions` bind no money and are not compared.
- An EIP-3009 signature is checked locally (`gateway.payment.eip3009`) once the terms match:
  a 65-byte signature that is not `from`'s is `invalid_exact_evm_payload_signature` (402)
  before any claim or facilitator call. Other signatures go to the facilitator.
- Identity: (chain id, asset, payer, nonce), lowercase hex; a Permit2 nonce (a uint256) is
  written as the same 32-byte hex, so both kinds of key look alike.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NoReturn

from x402.mechanisms.evm.batch_settlement import SCHEME_BATCH_SETTLEMENT
from x402.mechanisms.evm.constants import (
    ERR_INVALID_SIGNATURE,
    ERR_UNSUPPORTED_SCHEME,
    SCHEME_EXACT,
    SCHEME_UPTO,
)
from x402.schemas import PaymentPayload, PaymentRequirements
from x402.schemas.v1 import PaymentPayloadV1, PaymentRequirementsV1

from gateway.config.settings import Requirement, RouteSettings
from gateway.errors import PaymentError
from gateway.formats import chain_id, is_address
from gateway.payment.channel_terms import (
    ChannelIds,
    ChannelPayment,
    channel_payment,
    voucher_again,
)
from gateway.payment.decode import DecodedPayment
from gateway.payment.eip3009 import (
    Domain,
    Malformed,
    Sig,
    SignatureChecks,
    check_signature,
    checksummed,
    parse,
)
from gateway.payment.networks import caip_from_v1
from gateway.payment.requirements import offered_v1, requirement_v1, requirement_v2, thaw
from gateway.payment.terms import (
    UINT,
    UNSUPPORTED_PAYLOAD,
    Terms,
    check_terms,
    eip3009_terms,
    is_permit2,
    parse_terms,
)
from gateway.payment.voucher_check import parse_config
from gateway.payment.voucher_memo import Accepted, memo_key

MISMATCH = "payment_requirements_mismatch"

CLAIM_MARGIN = 60.0  # keep a claim this long past validBefore: clocks differ
CLAIM_MIN = 60.0
CLAIM_MAX = 7 * 24 * 3600.0


@dataclass(frozen=True, slots=True)
class PaymentIdentity:
    """What makes a payment one payment on chain: its signature bytes are not part of it (a
    signature can be re-encoded; the authorization nonce cannot be reused)."""

    chain_id: int
    asset: str  # lowercase 0x hex
    payer: str  # lowercase 0x hex
    nonce: str  # 0x + 64 lowercase hex

    @property
    def key(self) -> str:
        return f"x402:claim:{self.chain_id}:{self.asset}:{self.payer}:{self.nonce}"


@dataclass(frozen=True, slots=True)
class MatchedPayment:
    version: int
    payload: PaymentPayload | PaymentPayloadV1  # as the client sent it, for verify/settle
    requirements: PaymentRequirements | PaymentRequirementsV1  # built from the route
    requirement: Requirement
    identity: PaymentIdentity
    payer: str  # checksummed
    valid_before: int
    channel: ChannelPayment | None = None  # a channel deposit's, voucher's or refund's terms


def _same_address(a: str, b: str) -> bool:
    return is_address(a) and a.lower() == b.lower()


def _same_amount(text: str, amount: int) -> bool:
    return bool(UINT.fullmatch(text)) and int(text) == amount


def _contains(ours: Any, theirs: Any) -> bool:
    """Every key of our `extra` is in theirs with the same value (theirs may add keys).
    `ours` as settings keep it (frozen mappings and tuples) or as the wire has it: compared
    as its wire form (`thaw`), without building that form for each payment."""
    if isinstance(ours, Mapping):
        return isinstance(theirs, dict) and all(
            str(k) in theirs and _contains(v, theirs[str(k)]) for k, v in ours.items()
        )
    if isinstance(ours, tuple | list):
        ours = thaw(ours)
    return bool(ours == theirs and type(ours) is type(theirs))


def _differences(req: Requirement, accepted: PaymentRequirements) -> list[str]:
    checks = (
        ("scheme", accepted.scheme == req.scheme),
        ("network", accepted.network == req.network),
        ("asset", _same_address(accepted.asset, req.asset)),
        ("pay_to", _same_address(accepted.pay_to, req.pay_to)),
        ("amount", _same_amount(accepted.amount, req.amount)),
        ("max_timeout_seconds", accepted.max_timeout_seconds == req.max_timeout_seconds),
        ("extra", _contains(req.extra, accepted.extra)),
    )
    return [name for name, same in checks if not same]


def _mismatch(route: RouteSettings, accepted: PaymentRequirements) -> NoReturn:
    best: list[str] | None = None
    for req in route.accepts:
        differ = _differences(req, accepted)
        if best is None or len(differ) < len(best):
            best = differ
    raise PaymentError(
        f"the payment does not match this route's requirements ({', '.join(best or [])} "
        "differ): pay what the challenge asks",
        reason=MISMATCH,
    )


def _unsupported(route: RouteSettings, scheme: str) -> NoReturn:
    offered = sorted({r.scheme for r in route.accepts})
    raise PaymentError(
        f"scheme {scheme[:40]!r} is not accepted here (accepted: {', '.join(offered)})",
        reason=ERR_UNSUPPORTED_SCHEME,
    )


def _chain(req: Requirement) -> int:
    """The chain of a requirement this module can check: `exact` or `upto` on an EVM network."""
    cid = chain_id(req.network)
    checkable = req.scheme in (SCHEME_EXACT, SCHEME_BATCH_SETTLEMENT) or (
        req.scheme == SCHEME_UPTO and is_permit2(req)
    )
    if not checkable or cid is None:
        raise PaymentError(
            f"the gateway cannot take {req.scheme} payments on {req.network}",
            reason=ERR_UNSUPPORTED_SCHEME,
        )
    return cid


def _match_v2(
    route: RouteSettings,
    payload: PaymentPayload,
    ids: ChannelIds | None = None,
    signatures: SignatureChecks | None = None,
) -> MatchedPayment:
    accepted = payload.accepted
    if all(r.scheme != accepted.scheme for r in route.accepts):
        _unsupported(route, accepted.scheme)
    # The first requirement it pays is one on its scheme: those are tried first, and only
    # when none fits are all compared, for the closest one's differences.
    paid = (
        r for r in route.accepts if r.scheme == accepted.scheme and not _differences(r, accepted)
    )
    req = next(paid, None)
    if req is None:
        _mismatch(route, accepted)
    cid = _chain(req)
    if req.scheme == SCHEME_BATCH_SETTLEMENT:
        return _match_channel(req, cid, payload, ids, route.accepts)
    terms = parse_terms(req, payload.payload)
    check_terms(req, terms)
    if terms.token is None:
        _check_signature(req, cid, payload.payload, signatures)
    return MatchedPayment(
        version=2,
        payload=payload,
        requirements=requirement_v2(req),
        requirement=req,
        identity=PaymentIdentity(cid, req.asset.lower(), terms.payer, terms.nonce),
        payer=checksummed(terms.payer),
        valid_before=terms.valid_before,
    )


def _match_channel(
    req: Requirement,
    cid: int,
    payload: PaymentPayload,
    ids: ChannelIds | None,
    accepts: tuple[Requirement, ...] = (),
) -> MatchedPayment:
    """A channel deposit or voucher (gateway/payment/channel_terms.py); a plain voucher's
    match remembered for its channel's next ones (`_voucher_again`)."""
    paid, reqs = channel_payment(req, payload.payload, ids=ids), requirement_v2(req)
    if ids is not None and paid.kind == "voucher" and (key := memo_key(payload)) is not None:
        config = parse_config(payload.payload["channelConfig"])
        accepted = Accepted(accepts, req, cid, paid.channel_id, paid.payer, reqs, config)
        ids.vouchers.remember(key, accepted)
    return _channel_matched(req, cid, payload, paid, reqs)


def _voucher_again(
    route: RouteSettings, payload: PaymentPayload, ids: ChannelIds | None
) -> MatchedPayment | None:
    """A plain voucher whose every part but its own amount and signature the full match
    accepted on the same route terms already (gateway/payment/voucher_memo.py): that match
    again, on this voucher's fields; None: the full match decides."""
    key = memo_key(payload) if ids is not None else None
    found = ids.vouchers.get(key, route.accepts) if ids is not None and key is not None else None
    if found is None:
        return None
    paid = voucher_again(payload.payload, found.channel_id, found.payer, config=found.config)
    if paid is None:
        return None
    return _channel_matched(found.requirement, found.chain_id, payload, paid, found.requirements)


def _channel_matched(
    req: Requirement,
    cid: int,
    payload: PaymentPayload,
    paid: ChannelPayment,
    requirements: PaymentRequirements,
) -> MatchedPayment:
    return MatchedPayment(
        version=2,
        payload=payload,
        requirements=requirements,
        requirement=req,
        identity=PaymentIdentity(cid, req.asset.lower(), paid.payer, paid.nonce),
        payer=checksummed(paid.payer),
        valid_before=paid.valid_before,
        channel=paid,
    )


def _match_v1(
    route: RouteSettings,
    payload: PaymentPayloadV1,
    resource_url: str,
    signatures: SignatureChecks | None = None,
) -> MatchedPayment:
    candidates = _v1_candidates(route, payload)
    if "permit2Authorization" in payload.payload:
        raise PaymentError("v1 payments are EIP-3009 only", reason=UNSUPPORTED_PAYLOAD)
    cid = _chain(candidates[0][0])
    terms = eip3009_terms(payload.payload)
    req, v1_network = _v1_paid(candidates, terms)
    _check_signature(req, cid, payload.payload, signatures)
    return MatchedPayment(
        version=1,
        payload=payload,
        requirements=requirement_v1(route, req, v1_network, resource_url),
        requirement=req,
        identity=PaymentIdentity(cid, req.asset.lower(), terms.payer, terms.nonce),
        payer=checksummed(terms.payer),
        valid_before=terms.valid_before,
    )


# (a requirement of the route, the v1 network name it is offered under)
_Offered = tuple[Requirement, str]


def _v1_candidates(route: RouteSettings, payload: PaymentPayloadV1) -> list[_Offered]:
    """The route's requirements on the payload's scheme and network that v1 clients can pay."""
    if all(r.scheme != payload.scheme for r in route.accepts):
        _unsupported(route, payload.scheme)
    network = caip_from_v1(payload.network)
    candidates = [
        (r, name)
        for r in route.accepts
        if r.scheme == payload.scheme
        and r.network == network
        and (name := offered_v1(r)) is not None
    ]
    if not candidates:
        raise PaymentError(
            f"network {payload.network[:40]!r} is not accepted here for v1 payments "
            "(network differs)",
            reason=MISMATCH,
        )
    return candidates


def _v1_paid(candidates: list[_Offered], terms: Terms) -> _Offered:
    """The first candidate whose recipient and amount the authorization carries; else the
    `PaymentError` of the closest one (the right recipient if any) says what differs."""
    fits = [c for c in candidates if c[0].pay_to.lower() == terms.to and c[0].amount == terms.value]
    if not fits:
        to_ok = [c for c in candidates if c[0].pay_to.lower() == terms.to]
        check_terms((to_ok or candidates)[0][0], terms)
    return fits[0]


def domain_of(req: Requirement, cid: int) -> Domain | None:
    """The EIP-712 domain a requirement's payer signs under, or None if `extra` names none."""
    name, version = req.extra.get("name"), req.extra.get("version")
    if not isinstance(name, str) or not isinstance(version, str):
        return None
    return _domain(name, version, cid, req.asset.lower())


@functools.lru_cache(maxsize=1024)
def _domain(name: str, version: str, cid: int, token: str) -> Domain:
    # One Domain per route's terms: its separator (four keccaks) is computed once, not per
    # payment. Bounded; the terms come from the config, never from a client.
    return Domain(name, version, cid, token)


def local_signature_reason(
    req: Requirement,
    cid: int,
    payload: dict[str, Any],
    signatures: SignatureChecks | None = None,
) -> str | None:
    """`invalid_exact_evm_payload_signature` when the payload carries a plain ECDSA signature
    that is not `from`'s under the route's domain; None when it is, or when only the chain
    can judge it (a smart wallet's signature, ERC-6492, or no domain in `extra`)."""
    domain = domain_of(req, cid)
    if domain is None:
        return None
    try:
        auth = parse(payload)
    except Malformed:
        return None  # `terms` has read it already; anything odd is the facilitator's to judge
    sig = check_signature(auth, domain) if signatures is None else signatures.check(auth, domain)
    return ERR_INVALID_SIGNATURE if sig is Sig.MISMATCH else None


def _check_signature(
    req: Requirement, cid: int, payload: dict[str, Any], signatures: SignatureChecks | None
) -> None:
    reason = local_signature_reason(req, cid, payload, signatures)
    if reason is not None:
        raise PaymentError("the signature is not the payer's: refused locally", reason=reason)


def match_requirement(
    route: RouteSettings,
    payment: DecodedPayment,
    resource_url: str,
    channel_ids: ChannelIds | None = None,
    signatures: SignatureChecks | None = None,
) -> MatchedPayment:
    """The route's own requirement `payment` pays, or `PaymentError` (402) saying what differs;
    `MalformedPayment` (400) when the scheme payload is not shaped as its scheme requires.
    `channel_ids`: the generation's cache of channel ids (None: each computed anew);
    `signatures`: the verdicts `verify: local` shares with the facilitator (None: no sharing)."""
    if route.free:
        raise PaymentError("this route is free: it takes no payment", reason=MISMATCH)
    if isinstance(payment.payload, PaymentPayload):
        again = _voucher_again(route, payment.payload, channel_ids)
        if again is not None:
            return again
        return _match_v2(route, payment.payload, channel_ids, signatures)
    return _match_v1(route, payment.payload, resource_url, signatures)


def claim_ttl(matched: MatchedPayment, now: float) -> float:
    """How long the claim on this payment must outlive now: until the authorization can no
    longer be settled (validBefore, plus clock margin), within [1 min, 7 days]."""
    return min(max(matched.valid_before - now + CLAIM_MARGIN, CLAIM_MIN), CLAIM_MAX)
