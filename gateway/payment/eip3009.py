"""EIP-3009 `TransferWithAuthorization`, pure: parse, EIP-712 digest, recover, terms. No I/O.

Used by the engine's verify and settle, and by the gateway itself (`gateway.payment.match`)
to refuse a forged payment before any claim or facilitator call (no chain access, ~100 us).
One implementation for both: it lives here, in the pure payment layer, below the engine.

The digest is EIP-712 over a fixed struct: every field is one 32-byte ABI word, so it is
packed here directly (tests prove it equal to eth-account's `encode_typed_data` and to the
SDK's `hash_eip3009_authorization`, which are 10-20x slower); keccak is
`gateway.payment.keccak` (eth-hash on its C backend, without eth-utils' per-call checks). Recovery
is coincurve's (libsecp256k1), with the chain's own rules: v in {27, 28} (or {0, 1}, which
the settlement normalises, as the SDK does) and a low s (FiatToken and OpenZeppelin both
refuse a malleable high-s signature, so a local "match" must too).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from functools import cached_property
from typing import Any

import coincurve
from cachetools import LRUCache
from x402.mechanisms.evm.constants import (
    ERR_AUTHORIZATION_VALUE_MISMATCH,
    ERR_FACTORY_NOT_ALLOWED,
    ERR_INVALID_SIGNATURE,
    ERR_RECIPIENT_MISMATCH,
    ERR_UNDEPLOYED_SMART_WALLET,
    ERR_VALID_AFTER_FUTURE,
    ERR_VALID_BEFORE_EXPIRED,
)
from x402.mechanisms.evm.erc6492 import has_deployment_info, parse_erc6492_signature

from gateway.payment.keccak import keccak

# The gateway's own reason for a payload that cannot be read (the SDK raises instead).
ERR_INVALID_PAYLOAD = "invalid_payload"

TRANSFER_TYPEHASH = keccak(
    b"TransferWithAuthorization(address from,address to,uint256 value,"
    b"uint256 validAfter,uint256 validBefore,bytes32 nonce)"
)
DOMAIN_TYPEHASH = keccak(
    b"EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)"
)
_SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
_HALF_N = _SECP256K1_N // 2
_UINT256 = 2**256
ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}")
_BYTES32 = re.compile(r"0x[0-9a-fA-F]{64}")
_HEX = re.compile(r"0x(?:[0-9a-fA-F]{2})*")
DECIMAL = re.compile(r"[0-9]{1,78}")
MAX_SIGNATURE = 8192  # an ERC-6492 wrapper carries a factory call: bounded, not unbounded


class Malformed(ValueError):
    """The payload is not an EIP-3009 authorization with a signature."""


@dataclass(frozen=True, slots=True)
class Authorization:
    """A signed `transferWithAuthorization`, parsed. Addresses are lower-case 0x hex."""

    payer: str
    to: str
    value: int
    valid_after: int
    valid_before: int
    nonce: bytes
    signature: bytes  # as sent: may be ERC-6492-wrapped

    @property
    def nonce_hex(self) -> str:
        return "0x" + self.nonce.hex()


@dataclass(frozen=True)
class Domain:
    """The token's EIP-712 domain, as the route names it (extra.name/version, the network's
    chain id, the asset). Hashable: the engine keeps one per route and reuses its separator."""

    name: str
    version: str
    chain_id: int
    token: str

    @cached_property
    def separator(self) -> bytes:
        return keccak(
            DOMAIN_TYPEHASH
            + keccak(self.name.encode())
            + keccak(self.version.encode())
            + self.chain_id.to_bytes(32, "big")
            + _word(self.token)
        )


class Sig(Enum):
    """What the signature alone says about `from` (without asking the chain)."""

    MATCH = "match"  # a valid low-s ECDSA signature by `from`
    MISMATCH = "mismatch"  # 65 bytes, but not `from`'s valid signature
    CONTRACT = "contract"  # not an ECDSA signature: only a contract wallet can accept it
    COUNTERFACTUAL = "counterfactual"  # ERC-6492: a wallet to deploy first


def _word(address: str) -> bytes:
    return bytes(12) + bytes.fromhex(address[2:])


def _address(obj: Mapping[str, Any], key: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not ADDRESS.fullmatch(value):
        raise Malformed(f"authorization.{key}: must be a 0x address")
    return value.lower()


def _uint(obj: Mapping[str, Any], key: str) -> int:
    value = obj.get(key)
    if isinstance(value, bool):
        raise Malformed(f"authorization.{key}: must be an unsigned integer")
    if isinstance(value, int):
        number = value
    elif isinstance(value, str) and DECIMAL.fullmatch(value):
        number = int(value)
    else:
        raise Malformed(f"authorization.{key}: must be a decimal integer")
    if not 0 <= number < _UINT256:
        raise Malformed(f"authorization.{key}: out of the uint256 range")
    return number


def parse(payload: Mapping[str, Any]) -> Authorization:
    """An `exact` EVM payload's `{authorization, signature}`; raises Malformed, nothing else."""
    if not isinstance(payload, Mapping):
        raise Malformed("payload: must be an object")
    auth = payload.get("authorization")
    if not isinstance(auth, Mapping):
        raise Malformed("payload.authorization: missing (an EIP-3009 authorization)")
    nonce = auth.get("nonce")
    if not isinstance(nonce, str) or not _BYTES32.fullmatch(nonce):
        raise Malformed("authorization.nonce: must be 0x and 32 bytes of hex")
    signature = payload.get("signature")
    if (
        not isinstance(signature, str)
        or len(signature) > 2 + 2 * MAX_SIGNATURE
        or not _HEX.fullmatch(signature)
        or len(signature) == 2
    ):
        raise Malformed("payload.signature: must be 0x hex bytes")
    return Authorization(
        payer=_address(auth, "from"),
        to=_address(auth, "to"),
        value=_uint(auth, "value"),
        valid_after=_uint(auth, "validAfter"),
        valid_before=_uint(auth, "validBefore"),
        nonce=bytes.fromhex(nonce[2:]),
        signature=bytes.fromhex(signature[2:]),
    )


def struct_hash(auth: Authorization) -> bytes:
    return keccak(
        TRANSFER_TYPEHASH
        + _word(auth.payer)
        + _word(auth.to)
        + auth.value.to_bytes(32, "big")
        + auth.valid_after.to_bytes(32, "big")
        + auth.valid_before.to_bytes(32, "big")
        + auth.nonce
    )


def digest(auth: Authorization, domain: Domain) -> bytes:
    """The EIP-712 hash the payer signed."""
    return keccak(b"\x19\x01" + domain.separator + struct_hash(auth))


def recover(message_hash: bytes, signature: bytes) -> str | None:
    """The lower-case address that made this 65-byte (r, s, v) signature, or None when it is
    not one the chain would accept (bad length, v, high s, or no point)."""
    public = recover_key(message_hash, signature)
    return None if public is None else address_of(public)


@functools.lru_cache(maxsize=4096)
def address_of(public: bytes) -> str:
    """The lower-case address of a 64-byte uncompressed public key (no 0x04 prefix).
    Memoized, bounded, as `checksummed`: a pure function of the key, and a payer pays many
    times with one key (the keccak once per payer rather than once per payment)."""
    return "0x" + keccak(public)[-20:].hex()


def recover_key(message_hash: bytes, signature: bytes) -> bytes | None:
    """`recover`, the signer's 64-byte public key instead of its address."""
    if len(signature) != 65:
        return None
    v = signature[64]
    v = v - 27 if v >= 27 else v
    s = int.from_bytes(signature[32:64], "big")
    r = int.from_bytes(signature[:32], "big")
    if v not in (0, 1) or not 0 < s <= _HALF_N or not 0 < r < _SECP256K1_N:
        return None
    try:
        public = coincurve.PublicKey.from_signature_and_message(
            signature[:64] + bytes([v]), message_hash, hasher=None
        )
    except ValueError:
        return None
    return public.format(compressed=False)[1:]


@functools.lru_cache(maxsize=4096)
def checksummed(address: str) -> str:
    """EIP-55 of a lower-case 0x address (as `parse` and `recover` give): each hex letter
    upper-case where the keccak of the lower-case hex has a nibble >= 8. eth-utils'
    `to_checksum_address` does the same behind conversion decorators at ~2x the cost, on
    every paid request (the unit tests compare the two). Memoized, bounded: a pure function
    of its argument, and a payer pays many times (the keccak and the join once per payer
    rather than once or twice per payment)."""
    digits = address[2:]
    nibbles = keccak(digits.encode()).hex()
    return "0x" + "".join(
        c.upper() if n in "89abcdef" else c for c, n in zip(digits, nibbles, strict=False)
    )


def inner_signature(signature: bytes) -> tuple[bytes, bool]:
    """(the signature the token checks, whether it comes with a wallet to deploy first).
    An ERC-6492 wrapper is taken off, as the SDK does; a broken wrapper raises Malformed."""
    try:
        data = parse_erc6492_signature(signature)
    except ValueError as exc:
        raise Malformed(f"payload.signature: {exc}") from exc
    return data.inner_signature, has_deployment_info(data)


def check_signature(auth: Authorization, domain: Domain) -> Sig:
    try:
        inner, counterfactual = inner_signature(auth.signature)
    except Malformed:
        return Sig.MISMATCH
    if counterfactual:
        return Sig.COUNTERFACTUAL
    if len(inner) != 65:
        return Sig.CONTRACT
    return Sig.MATCH if recover(digest(auth, domain), inner) == auth.payer else Sig.MISMATCH


class SignatureChecks:
    """`check_signature` verdicts kept for the payloads in flight: under `verify: local` the
    matcher (before the claim) and `LocalVerify` (the verify step) judge the same signature
    of the same request; the second is answered from here, not by a second ECDSA recovery
    (~35 µs). Keyed by the whole authorization and domain, the inputs of a pure function, so
    a kept verdict is the one a fresh check would give. Bounded: a few per request in flight.
    One per facilitator, made by the composition root."""

    def __init__(self, size: int = 1024) -> None:
        self._kept: LRUCache[tuple[Authorization, Domain], Sig] = LRUCache(maxsize=size)

    def check(self, auth: Authorization, domain: Domain) -> Sig:
        key = (auth, domain)
        sig = self._kept.get(key)
        if sig is None:
            sig = self._kept[key] = check_signature(auth, domain)
        return sig


def signature_reason(sig: Sig, payer_has_code: bool | None) -> str | None:
    """The SDK's reason to refuse, or None when the signature may stand (the chain's own
    check, the simulation, is then the judge). `payer_has_code`: whether `from` is a contract
    (a smart wallet or an EIP-7702 account, checked by EIP-1271 on chain); None if unknown,
    then `from` is taken for a plain account (a gateway without chain access)."""
    if payer_has_code:
        return None  # EIP-1271 decides on chain, even for an ECDSA-looking signature
    if sig is Sig.MATCH:
        return None
    if sig is Sig.COUNTERFACTUAL:
        return ERR_FACTORY_NOT_ALLOWED  # the engine deploys no wallets (the SDK's default)
    if sig is Sig.CONTRACT:
        return ERR_UNDEPLOYED_SMART_WALLET
    return ERR_INVALID_SIGNATURE


def terms_reason(
    auth: Authorization, *, pay_to: str, amount: int, now: int, margin: int = 6
) -> str | None:
    """The SDK's reason why this authorization does not pay (pay_to, amount) now, or None."""
    if auth.to != pay_to.lower():
        return ERR_RECIPIENT_MISMATCH
    if auth.value != amount:
        return ERR_AUTHORIZATION_VALUE_MISMATCH
    if auth.valid_before < now + margin:
        return ERR_VALID_BEFORE_EXPIRED
    if auth.valid_after > now:
        return ERR_VALID_AFTER_FUTURE
    return None


@dataclass(frozen=True, slots=True)
class Inspection:
    """What can be told of a payment without the chain."""

    auth: Authorization | None
    reason: str | None  # None: nothing wrong seen
    sig: Sig | None


def inspect(  # noqa: PLR0913  the payload, its domain, and the terms keyword-only
    payload: Mapping[str, Any],
    domain: Domain,
    *,
    pay_to: str,
    amount: int,
    now: int,
    margin: int = 6,
) -> Inspection:
    """Parse, check terms, check the signature (for a plain-account payer): the whole local
    verdict in one call. Never raises."""
    try:
        auth = parse(payload)
    except Malformed:
        return Inspection(None, ERR_INVALID_PAYLOAD, None)
    reason = terms_reason(auth, pay_to=pay_to, amount=amount, now=now, margin=margin)
    if reason is not None:
        return Inspection(auth, reason, None)
    sig = check_signature(auth, domain)
    return Inspection(auth, signature_reason(sig, None), sig)
