"""A SIWX proof's signature, checked without the `siwe` package.

A proof in the shape EIP-4361 and the SDK's clients give it (one line per field, an
alphanumeric nonce, a checksummed address, an `eip155:<n>` chain, a 65-byte signature) is
checked here: its EIP-4361 text is built from its fields and the EIP-191 signer recovered
from it. Anything else is refused (the `siwe` package refuses those shapes too), so no proof
can make the gateway take a slower road. The SDK's `verify_siwx_signature` costs about 9 ms
of CPU per proof in `siwe`'s URI grammar; this costs one curve operation and a few keccaks.

`Wallets` keeps, per address seen, its EIP-55 answer and the public key a proof recovered to
it (kept only once its keccak matched the address). A known wallet's next proofs are checked
with libsecp256k1's verify against that key: ~70% of a recovery's cost, and neither the
public key's keccak nor the address's. Same answer as a recovery, but for the recovery id
(`v`), which only picks which key a recovery returns: with the key known, any `v` of a
signature valid for it is taken, as the signature still proves the address's private key.
"""

from __future__ import annotations

import binascii
import json
import operator
from collections import OrderedDict
from typing import NamedTuple

from coincurve import PublicKey
from x402.extensions.sign_in_with_x import SIWxPayload

from gateway.errors import SignInRefused
from gateway.payment.eip3009 import checksummed
from gateway.payment.keccak import keccak
from gateway.payment.recent import keep

WALLETS_KEPT = 10_000  # addresses whose EIP-55 answer and public key are kept (LRU)
_ORDER = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141  # secp256k1's n
_ORDER_BYTES = _ORDER.to_bytes(32, "big")
_HALF_ORDER_BYTES = (_ORDER // 2).to_bytes(32, "big")
_ZERO = bytes(32)


def is_checksummed(address: str) -> bool:
    """EIP-55: a 0x address of 40 hex digits, each letter upper-case where the keccak of the
    lower-case hex has a nibble >= 8 (`eip3009.checksummed`; the unit tests compare it with
    eth_utils' `is_checksum_address`)."""
    if len(address) != 42 or not address.startswith("0x"):
        return False
    lower = address.lower()
    if any(c not in "0123456789abcdef" for c in lower[2:]):
        return False
    return checksummed(lower) == address


class Wallets:
    """What is known of the addresses that sign in, bounded (least recently used out
    first): whether each is EIP-55 checksummed, and its public key once a proof recovered
    to it. One per `Sessions`, built with it in the composition root.

    Kept in `OrderedDict`s (a hit moved to the end, the front dropped when full), not
    cachetools' `LRUCache`: the same policy, but a lookup is C calls only where the
    cache's is four Python ones, and every sign-in looks its wallet up."""

    def __init__(self, maxsize: int = WALLETS_KEPT) -> None:
        self._checksums: OrderedDict[str, bool] = OrderedDict()
        self._keys: OrderedDict[str, PublicKey] = OrderedDict()
        self._maxsize = maxsize

    def checksummed(self, address: str) -> bool:
        """`is_checksummed(address)`, computed once per address."""
        known = self._checksums.get(address)
        if known is None:
            known = is_checksummed(address)
            keep(self._checksums, address, known, self._maxsize)
        else:
            self._checksums.move_to_end(address)
        return known

    def key(self, address: str) -> PublicKey | None:
        key = self._keys.get(address)
        if key is not None:
            self._keys.move_to_end(address)
        return key

    def remember(self, address: str, key: PublicKey) -> None:
        """`key` was recovered from a proof and its keccak is `address`."""
        keep(self._keys, address, key, self._maxsize)

    def __len__(self) -> int:
        return len(self._checksums)


_CHAIN_PREFIX = "eip155:"


class PlainProof(NamedTuple):
    """A proof's fields read straight from its header's JSON, named as the SDK's
    `SIWxPayload` names them (`read_plain`). A named tuple, not a frozen dataclass: as
    immutable, made in a third of the time (no `object.__setattr__` per field), and every
    sign-in makes one. Its fields in the order `read_plain` picks them."""

    domain: str
    address: str
    uri: str
    version: str
    chain_id: str
    nonce: str
    issued_at: str
    signature: str
    statement: str | None
    expiration_time: str | None
    not_before: str | None
    request_id: str | None
    resources: list[str] | None


Proof = SIWxPayload | PlainProof

# A plain proof's JSON keys: required (strings), optional (a string or null), the rest.
_REQUIRED = ("domain", "address", "uri", "version", "chainId", "nonce", "issuedAt", "signature")
_OPTIONAL = ("statement", "expirationTime", "notBefore", "requestId")
_KNOWN = frozenset((*_REQUIRED, *_OPTIONAL, "type", "resources", "signatureScheme"))
# The fields picked in one C call each (a missing required key raises KeyError), their types
# checked as one set: a sign-in reads every proof's dozen fields, and per-field Python
# (comprehensions, walrus tests) was most of the reading's CPU.
_REQUIRED_OF = operator.itemgetter(*_REQUIRED)
_STRINGS = frozenset((str,))
_STRINGS_OR_NULL = frozenset((str, type(None)))
_JSON = json.JSONDecoder()


def read_plain(header: str) -> PlainProof | None:
    """The proof in a SIGN-IN-WITH-X header when it is plain: canonical base64 of UTF-8
    JSON, an object of the SDK's camelCase keys only, strings where the SDK's model wants
    them, an `eip191` proof. None for anything else, which then goes the SDK's road
    (`parse_siwx_header`, a pydantic model: about twice the CPU of this in the gateway).
    Whatever this reads, the SDK's parser reads the same way (the unit tests hold them to
    it); it reads less (no snake_case aliases, no unknown keys, no other signature type, no
    whitespace around the JSON, which the SDK's clients never send)."""
    try:
        text = binascii.a2b_base64(header, strict_mode=True).decode()
        fields, end = _JSON.raw_decode(text)
        if end != len(text) or type(fields) is not dict or not fields.keys() <= _KNOWN:
            return None
        required = _REQUIRED_OF(fields)
    except (ValueError, RecursionError, KeyError):  # binascii.Error, UnicodeDecodeError, JSON
        return None
    optional = tuple(map(fields.get, _OPTIONAL))
    resources = fields.get("resources")
    if fields.get("type") != "eip191" or fields.get("signatureScheme") not in (None, "eip191"):
        return None
    if not (set(map(type, required)) <= _STRINGS and set(map(type, optional)) <= _STRINGS_OR_NULL):
        return None
    if resources is not None and (
        type(resources) is not list or not set(map(type, resources)) <= _STRINGS
    ):
        return None
    return PlainProof._make((*required, *optional, resources))  # _REQUIRED, _OPTIONAL order


def eip4361_message(payload: Proof, chain_id: str) -> str:
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
    if payload.resources is not None:  # each on a line of its own, after "- "
        lines.append("\n- ".join(["Resources:", *payload.resources]))
    return head + "\n\n" + "\n".join(lines)


def _plain(payload: Proof) -> str | None:
    """The numeric chain id when the proof has the plain shape the fast path takes (but for
    its address's EIP-55 checksum, checked by the caller)."""
    # `eip155:` and 1 to 20 ASCII digits; a nonce of 8 or more ASCII letters and digits
    # (str methods, not regexes: ASCII first, as `isdigit`/`isalnum` take any script's).
    chain, nonce = payload.chain_id.removeprefix(_CHAIN_PREFIX), payload.nonce
    if chain == payload.chain_id or not (chain.isascii() and chain.isdigit() and len(chain) <= 20):
        return None
    if payload.version != "1" or not (nonce.isascii() and nonce.isalnum() and len(nonce) >= 8):
        return None
    # One string of every free-text field: a line break in any is refused.
    text = "".join(
        (
            payload.domain,
            payload.uri,
            payload.issued_at,
            payload.statement or "",
            payload.expiration_time or "",
            payload.not_before or "",
            payload.request_id or "",
            *(payload.resources or ()),
        )
    )
    if "\n" in text or "\r" in text:
        return None
    return str(int(chain))


def signer_of(payload: Proof, wallets: Wallets | None = None) -> str:
    """The proof's address when it signed the proof, else `SignInRefused`. `wallets`: what
    is known of the addresses seen before (the gateway's; None: nothing)."""
    known = wallets.key(payload.address) if wallets is not None else None
    chain_id = _plain(payload)
    signature = _signature(payload.signature)
    # EIP-55 not checked again for a kept key: one is kept only for an address that passed.
    if chain_id is None or signature is None or not _checksummed(payload.address, known, wallets):
        raise SignInRefused(
            "not an EIP-4361 proof of an externally owned account", reason="invalid_siwx_message"
        )
    digest = _digest(payload, chain_id)
    if known is not None:
        signed = _verifies(known, signature, digest)
    else:
        recovered = _recovered(signature, digest, payload.address)
        signed = recovered is not None
        if recovered is not None and wallets is not None:
            wallets.remember(payload.address, recovered)
    if not signed:
        raise SignInRefused("the signature is not the address's", reason="invalid_siwx_signature")
    return payload.address


def _checksummed(address: str, known: PublicKey | None, wallets: Wallets | None) -> bool:
    """The address passes EIP-55: known to when its key is kept, else through `wallets`
    (each answer kept) or computed."""
    if known is not None:
        return True
    return wallets.checksummed(address) if wallets is not None else is_checksummed(address)


def fast_eoa_check(payload: Proof) -> bool:
    """True when the proof has the plain shape and is signed by its own address (by
    recovery: what a first proof of an address takes)."""
    chain_id = _plain(payload)
    signature = _signature(payload.signature)
    if chain_id is None or signature is None or not is_checksummed(payload.address):
        return False
    return _recovered(signature, _digest(payload, chain_id), payload.address) is not None


def _digest(payload: Proof, chain_id: str) -> bytes:
    """EIP-191 personal_sign's hash of the proof's EIP-4361 text."""
    text = eip4361_message(payload, chain_id).encode()
    return keccak(b"\x19Ethereum Signed Message:\n" + str(len(text)).encode() + text)


def _recovered(signature: bytes, digest: bytes, address: str) -> PublicKey | None:
    """The key the signature recovers to, when its keccak is `address` (coincurve:
    eth_account's `recover_message` does the same through layers of conversions that cost
    several times the curve operation)."""
    try:
        public = PublicKey.from_signature_and_message(signature, digest, hasher=None)
    except ValueError:
        return None
    signer = keccak(public.format(compressed=False)[1:])[-20:]
    return public if signer.hex() == address[2:].lower() else None


def _verifies(key: PublicKey, signature: bytes, digest: bytes) -> bool:
    """Whether r || s is `key`'s signature of `digest`."""
    der = _der_signature(signature)
    if der is None:
        return False
    try:
        return key.verify(der, digest, hasher=None)
    except ValueError:
        return False


def _der_signature(signature: bytes) -> bytes | None:
    """r || s (the first 64 bytes) in DER, as coincurve's verify takes it, or None when r or
    s is not in 1..n-1. A high s is taken as its low twin (n - s), as a recovery takes it;
    libsecp256k1's verify wants the low one. Worked on the bytes (same-length big-endian
    bytes order as their integers), without a round trip through integers."""
    r, s = signature[:32], signature[32:64]
    if r[0] and s[0] and r < _ORDER_BYTES and s <= _HALF_ORDER_BYTES:
        # What nearly every signature is (a leading zero byte is 1 in 256): no byte to strip,
        # s already low (< 0x80 in its first byte), r padded when its top bit is set.
        if r[0] & 0x80:
            return b"\x30\x45\x02\x21\x00" + r + b"\x02\x20" + s
        return b"\x30\x44\x02\x20" + r + b"\x02\x20" + s
    if not (_ZERO < r < _ORDER_BYTES and _ZERO < s < _ORDER_BYTES):
        return None
    if s > _HALF_ORDER_BYTES:
        s = (_ORDER - int.from_bytes(s, "big")).to_bytes(32, "big")
    # DER integers: minimal, with a leading 0 byte when the top bit is set (positive).
    r, s = r.lstrip(b"\0"), s.lstrip(b"\0")
    if r[0] & 0x80:
        r = b"\0" + r
    if s[0] & 0x80:
        s = b"\0" + s
    return b"\x30%c\x02%c%s\x02%c%s" % (len(r) + len(s) + 4, len(r), r, len(s), s)


def _signature(text: str) -> bytes | None:
    """65 bytes r || s || v (v 27/28 or 0/1) as coincurve wants them (v as 0/1), or None."""
    try:
        raw = bytes.fromhex(text.removeprefix("0x"))
    except ValueError:
        return None
    if len(raw) != 65 or raw[64] not in (0, 1, 27, 28):
        return None
    return raw[:64] + bytes([raw[64] % 27 if raw[64] >= 27 else raw[64]])
