"""A SIWX proof's signature, checked without the `siwe` package.

A proof in the shape EIP-4361 and the SDK's clients give it (one line per field, an
alphanumeric nonce, a checksummed address, an `eip155:<n>` chain, a 65-byte signature) is
checked here: its EIP-4361 text is built from its fields and the EIP-191 signer recovered
from it. Anything else is refused (the `siwe` package refuses those shapes too), so no proof
can make the gateway take a slower road. The SDK's `verify_siwx_signature` costs about 9 ms
of CPU per proof in `siwe`'s URI grammar; this costs the curve operation (~70 us) and three
keccaks, and with a `Checksums` cache one keccak fewer per known address.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from cachetools import LRUCache
from coincurve import PublicKey
from eth_hash.auto import keccak
from x402.extensions.sign_in_with_x import SIWxPayload

from gateway.errors import SignInRefused

CHECKSUMS_KEPT = 10_000  # addresses whose EIP-55 answer is kept (LRU)


def is_checksummed(address: str) -> bool:
    """EIP-55: each hex letter upper-case where the keccak of the lower-case address has a
    nibble >= 8 (eth_utils' `is_checksum_address` does it behind decorators at ~10x the
    cost; the unit tests compare the two)."""
    if len(address) != 42 or not address.startswith("0x"):
        return False
    digits = address[2:]
    lower = digits.lower()
    if any(c not in "0123456789abcdef" for c in lower):
        return False
    nibbles = keccak(lower.encode()).hex()
    return all(
        d == (c.upper() if int(n, 16) >= 8 else c)
        for d, c, n in zip(digits, lower, nibbles[:40], strict=True)
    )


class Checksums:
    """`is_checksummed()` with its answers kept per address (bounded, least recently used
    out first): a wallet that signs in all day has its address hashed once. One per
    `Sessions`, built with it in the composition root."""

    def __init__(self, maxsize: int = CHECKSUMS_KEPT) -> None:
        self._known: LRUCache[str, bool] = LRUCache(maxsize=maxsize)

    def __call__(self, address: str) -> bool:
        known = self._known.get(address)
        if known is None:
            known = self._known[address] = is_checksummed(address)
        return known

    def __len__(self) -> int:
        return len(self._known)


_NONCE = re.compile(r"[A-Za-z0-9]{8,}")
_CHAIN = re.compile(r"eip155:([0-9]{1,20})")


def eip4361_message(payload: SIWxPayload, chain_id: str) -> str:
    """The EIP-4361 ("Sign-In with Ethereum") text of a proof, as the spec lays it out."""
    head = f"{payload.domain} wants you to sign in with your Ethereum account:\n{payload.address}"
    head += f"\n\n{payload.statement}" if payload.statement is not None else "\n"
    lines = [
        f"URI: {payload.uri}",
        f"Version: {payload.version}",
        f"Chain ID: {chain_id}",
        f"Nonce: {payload.nonce}",
        f"Issued At: {payload.issued_at}",
    ]
    if payload.expiration_time:
        lines.append(f"Expiration Time: {payload.expiration_time}")
    if payload.not_before:
        lines.append(f"Not Before: {payload.not_before}")
    if payload.request_id is not None:
        lines.append(f"Request ID: {payload.request_id}")
    if payload.resources is not None:
        lines.append("\n".join(["Resources:", *(f"- {r}" for r in payload.resources)]))
    return head + "\n\n" + "\n".join(lines)


def _plain(payload: SIWxPayload, checksummed: Callable[[str], bool]) -> str | None:
    """The numeric chain id when the proof has the plain shape the fast path takes."""
    chain = _CHAIN.fullmatch(payload.chain_id)
    fields = [payload.domain, payload.uri, payload.version, payload.issued_at]
    fields += [payload.statement or "", payload.expiration_time or "", payload.not_before or ""]
    fields += [payload.request_id or "", *(payload.resources or [])]
    if chain is None or payload.version != "1" or not _NONCE.fullmatch(payload.nonce):
        return None
    if any("\n" in field or "\r" in field for field in fields):
        return None
    if not checksummed(payload.address):
        return None
    return str(int(chain.group(1)))


def signer_of(payload: SIWxPayload, checksummed: Callable[[str], bool] = is_checksummed) -> str:
    """The proof's address when it signed the proof, else `SignInRefused`. `checksummed`:
    the EIP-55 check (a `Checksums` cache in the gateway)."""
    chain_id = _plain(payload, checksummed)
    signature = _signature(payload.signature)
    if chain_id is None or signature is None:
        raise SignInRefused(
            "not an EIP-4361 proof of an externally owned account", reason="invalid_siwx_message"
        )
    if not _signed_by(payload, chain_id, signature):
        raise SignInRefused("the signature is not the address's", reason="invalid_siwx_signature")
    return payload.address


def fast_eoa_check(payload: SIWxPayload) -> bool:
    """True when the proof has the plain shape and is signed by its own address."""
    chain_id = _plain(payload, is_checksummed)
    signature = _signature(payload.signature)
    return (
        chain_id is not None and signature is not None and _signed_by(payload, chain_id, signature)
    )


def _signed_by(payload: SIWxPayload, chain_id: str, signature: bytes) -> bool:
    """EIP-191 personal_sign of the proof's EIP-4361 text, recovered with coincurve:
    eth_account's `recover_message` does the same through layers of conversions that cost
    several times the curve operation."""
    text = eip4361_message(payload, chain_id).encode()
    digest = keccak(b"\x19Ethereum Signed Message:\n" + str(len(text)).encode() + text)
    try:
        public = PublicKey.from_signature_and_message(signature, digest, hasher=None)
    except ValueError:
        return False
    signer = keccak(public.format(compressed=False)[1:])[-20:]
    return signer.hex() == payload.address[2:].lower()


def _signature(text: str) -> bytes | None:
    """65 bytes r || s || v (v 27/28 or 0/1) as coincurve wants them (v as 0/1), or None."""
    try:
        raw = bytes.fromhex(text.removeprefix("0x"))
    except ValueError:
        return None
    if len(raw) != 65 or raw[64] not in (0, 1, 27, 28):
        return None
    return raw[:64] + bytes([raw[64] % 27 if raw[64] >= 27 else raw[64]])
