"""The money-moving terms of an `exact` EVM payment's signed authorization, parsed and checked.

Two shapes exist (the SDK's `x402.mechanisms.evm.types`): EIP-3009 `authorization` (the token
binds through the EIP-712 domain the route's `extra` names) and Permit2 `permit2Authorization`
(the token and the spender are in the signed message). Which one a requirement takes is its
`extra.assetTransferMethod`, as the SDK's client decides it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, NoReturn

from x402.mechanisms.evm.constants import (
    ERR_AUTHORIZATION_VALUE_MISMATCH,
    ERR_PERMIT2_AMOUNT_MISMATCH,
    ERR_PERMIT2_INVALID_SPENDER,
    ERR_PERMIT2_RECIPIENT_MISMATCH,
    ERR_PERMIT2_TOKEN_MISMATCH,
    ERR_RECIPIENT_MISMATCH,
    X402_EXACT_PERMIT2_PROXY_ADDRESS,
    X402_UPTO_PERMIT2_PROXY_ADDRESS,
)

from gateway.config.settings import Requirement
from gateway.errors import MalformedPayment, PaymentError
from gateway.formats import ADDRESS

UNSUPPORTED_PAYLOAD = "unsupported_payload"

_NONCE32 = re.compile(r"0x[0-9a-fA-F]{64}")
UINT = re.compile(r"[0-9]{1,78}")
_HEX = re.compile(r"0x(?:[0-9a-fA-F]{2})+")
_UINT256_MAX = 2**256 - 1


@dataclass(frozen=True, slots=True)
class Terms:
    """The money-moving fields of a signed authorization, parsed."""

    payer: str
    to: str
    token: str | None  # None: EIP-3009 binds the token through its EIP-712 domain only
    spender: str | None
    value: int
    valid_before: int
    nonce: str


def malformed(detail: str) -> NoReturn:
    raise MalformedPayment(detail, reason="invalid_payload")


def text_field(obj: Any, key: str, where: str, pattern: re.Pattern[str], what: str) -> str:
    value = obj.get(key) if isinstance(obj, dict) else None
    if not isinstance(value, str) or not pattern.fullmatch(value):
        malformed(f"{where}.{key}: must be {what}")
    return value


def _address(obj: Any, key: str, where: str) -> str:
    return text_field(obj, key, where, ADDRESS, "a 0x address").lower()


def _uint(obj: Any, key: str, where: str) -> int:
    value = int(text_field(obj, key, where, UINT, "a decimal integer string"))
    if value > _UINT256_MAX:
        malformed(f"{where}.{key}: larger than a uint256")
    return value


def eip3009_terms(payload: dict[str, Any]) -> Terms:
    """An EIP-3009 `{authorization, signature}` payload's terms, or `MalformedPayment`."""
    where = "payload.authorization"
    auth = payload.get("authorization")
    if not isinstance(auth, dict):
        malformed(f"{where}: missing (an EIP-3009 authorization is expected)")
    text_field(payload, "signature", "payload", _HEX, "0x hex bytes")
    _uint(auth, "validAfter", where)
    return Terms(
        payer=_address(auth, "from", where),
        to=_address(auth, "to", where),
        token=None,
        spender=None,
        value=_uint(auth, "value", where),
        valid_before=_uint(auth, "validBefore", where),
        nonce=text_field(auth, "nonce", where, _NONCE32, "0x + 32 bytes of hex").lower(),
    )


def _permit2_terms(payload: dict[str, Any]) -> Terms:
    where = "payload.permit2Authorization"
    auth = payload.get("permit2Authorization")
    if not isinstance(auth, dict):
        malformed(f"{where}: missing (a Permit2 authorization is expected)")
    text_field(payload, "signature", "payload", _HEX, "0x hex bytes")
    permitted, witness = auth.get("permitted"), auth.get("witness")
    _uint(witness, "validAfter", f"{where}.witness")
    return Terms(
        payer=_address(auth, "from", where),
        to=_address(witness, "to", f"{where}.witness"),
        token=_address(permitted, "token", f"{where}.permitted"),
        spender=_address(auth, "spender", where),
        value=_uint(permitted, "amount", f"{where}.permitted"),
        valid_before=_uint(auth, "deadline", where),
        nonce=f"0x{_uint(auth, 'nonce', where):064x}",
    )


def is_permit2(req: Requirement) -> bool:
    return req.extra.get("assetTransferMethod") == "permit2"


def parse_terms(req: Requirement, payload: dict[str, Any]) -> Terms:
    """The payload's terms in the shape `req` takes (`unsupported_payload` if the other)."""
    shape_permit2 = "permit2Authorization" in payload
    if shape_permit2 != is_permit2(req):
        want = "Permit2" if is_permit2(req) else "EIP-3009"
        raise PaymentError(f"this requirement takes a {want} payload", reason=UNSUPPORTED_PAYLOAD)
    return _permit2_terms(payload) if shape_permit2 else eip3009_terms(payload)


def check_terms(req: Requirement, terms: Terms) -> None:
    """The signed authorization pays `req`: same recipient, exactly the amount (for `upto`,
    the maximum), same token, and the spender is that scheme's x402 Permit2 proxy."""
    permit2 = terms.token is not None
    if terms.to != req.pay_to.lower():
        reason = ERR_PERMIT2_RECIPIENT_MISMATCH if permit2 else ERR_RECIPIENT_MISMATCH
        raise PaymentError(f"the authorization pays {terms.to}, not {req.pay_to}", reason=reason)
    if terms.value != req.amount:
        reason = ERR_PERMIT2_AMOUNT_MISMATCH if permit2 else ERR_AUTHORIZATION_VALUE_MISMATCH
        raise PaymentError(
            f"the authorization is for {terms.value}, the price is {req.amount}", reason=reason
        )
    if permit2 and terms.token != req.asset.lower():
        raise PaymentError(
            f"the permit is for token {terms.token}, not {req.asset}",
            reason=ERR_PERMIT2_TOKEN_MISMATCH,
        )
    proxy = (
        X402_UPTO_PERMIT2_PROXY_ADDRESS
        if req.scheme == "upto"
        else X402_EXACT_PERMIT2_PROXY_ADDRESS
    )
    if permit2 and terms.spender != proxy.lower():
        raise PaymentError(
            "the permit's spender is not the x402 Permit2 proxy",
            reason=ERR_PERMIT2_INVALID_SPENDER,
        )
