"""EIP-3009 `TransferWithAuthorization` signatures checked locally, pure: no chain, no I/O.

A forged or mismatched signature is refused here, before the claim and before any facilitator
call, so an attacker cannot spend the operator's facilitator quota and latency for free.

The digest is EIP-712 over a fixed struct whose fields are each one 32-byte ABI word, packed
directly (tests prove it equal to eth-account's `encode_typed_data`, several times slower);
keccak is eth-utils', recovery coincurve's (libsecp256k1). The chain's own rules apply: v in
{27, 28} (or {0, 1}) and a low s (FiatToken and OpenZeppelin refuse a malleable high-s
signature, so a local "match" must too).

What cannot be told without the chain passes to the facilitator unjudged: a signature that is
not 65 bytes (an ERC-1271 smart wallet, an ERC-6492 wrapper), and a route whose `extra` names
no EIP-712 domain. (Branch `engine` has the same recovery in its settlement engine; the lead
unifies the two in this module.)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any

import coincurve
from eth_utils.crypto import keccak
from x402.mechanisms.evm.constants import ERR_INVALID_SIGNATURE

from gateway.config.settings import Requirement

TRANSFER_TYPEHASH = keccak(
    text="TransferWithAuthorization(address from,address to,uint256 value,"
    "uint256 validAfter,uint256 validBefore,bytes32 nonce)"
)
DOMAIN_TYPEHASH = keccak(
    text="EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)"
)
_SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
_HALF_N = _SECP256K1_N // 2


@dataclass(frozen=True, slots=True)
class Domain:
    """The token's EIP-712 domain: the route's extra.name/version, the chain, the asset."""

    name: str
    version: str
    chain_id: int
    token: str  # 0x address


@cache
def separator(domain: Domain) -> bytes:
    """The domain separator (a route has one domain per requirement: cached)."""
    return keccak(
        DOMAIN_TYPEHASH
        + keccak(text=domain.name)
        + keccak(text=domain.version)
        + domain.chain_id.to_bytes(32, "big")
        + _word(domain.token)
    )


def _word(address: str) -> bytes:
    return bytes(12) + bytes.fromhex(address[2:])


def digest(auth: Mapping[str, Any], domain: Domain) -> bytes:
    """The EIP-712 hash the payer signed. `auth` is an authorization `terms.eip3009_terms`
    has already accepted (addresses, decimal uint256 strings, a 32-byte nonce)."""
    struct = keccak(
        TRANSFER_TYPEHASH
        + _word(auth["from"])
        + _word(auth["to"])
        + int(auth["value"]).to_bytes(32, "big")
        + int(auth["validAfter"]).to_bytes(32, "big")
        + int(auth["validBefore"]).to_bytes(32, "big")
        + bytes.fromhex(auth["nonce"][2:])
    )
    return keccak(b"\x19\x01" + separator(domain) + struct)


def recover(message_hash: bytes, signature: bytes) -> str | None:
    """The lower-case address that made this 65-byte (r, s, v) signature, or None when it is
    not one the chain would accept (bad v, high s, r or s out of range, no point)."""
    v = signature[64]
    v = v - 27 if v >= 27 else v
    r = int.from_bytes(signature[:32], "big")
    s = int.from_bytes(signature[32:64], "big")
    if v not in (0, 1) or not 0 < s <= _HALF_N or not 0 < r < _SECP256K1_N:
        return None
    try:
        public = coincurve.PublicKey.from_signature_and_message(
            signature[:64] + bytes([v]), message_hash, hasher=None
        )
    except ValueError:
        return None
    return "0x" + keccak(public.format(compressed=False)[1:])[-20:].hex()


def domain_of(req: Requirement, chain_id: int) -> Domain | None:
    """The EIP-712 domain a requirement's payer signs under, or None if `extra` names none."""
    name, version = req.extra.get("name"), req.extra.get("version")
    if not isinstance(name, str) or not isinstance(version, str):
        return None
    return Domain(name, version, chain_id, req.asset.lower())


def signature_reason(payload: Mapping[str, Any], domain: Domain | None) -> str | None:
    """`invalid_exact_evm_payload_signature` when the signature is 65 bytes and is not
    `from`'s valid signature of this authorization under `domain`; None when it is, or when
    only the chain can tell (no domain, or not a plain ECDSA signature)."""
    signature = bytes.fromhex(payload["signature"][2:])
    if domain is None or len(signature) != 65:
        return None
    auth = payload["authorization"]
    signer = recover(digest(auth, domain), signature)
    return None if signer == auth["from"].lower() else ERR_INVALID_SIGNATURE
