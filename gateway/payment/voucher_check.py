"""A batch-settlement voucher, pure: parse, EIP-712 digest, signature check. No I/O.

The serving fast path (`gateway.payment.channel_fast`) uses it to accept a plain voucher
without the SDK's `verify_batch_settlement_voucher_typed_data`, which builds the typed data
with eth-account (~290 us a voucher); here the digest is packed directly (the voucher
struct is two 32-byte words) and recovered with coincurve, reusing the EIP-3009 module's
domain separator and recovery (low s, v in {27, 28} or {0, 1}). It only ever says "yes,
certainly valid" or "not for me": anything it does not accept goes to the SDK's own check,
which then gives its own verdict and reason (unit tests hold the two to each other). A
signature the contract would not take when the voucher is claimed (v as 0/1, a high s) never
gets here: the match refuses it first (`channel_terms.claimable`).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any, cast

from x402.mechanisms.evm.batch_settlement.constants import (
    BATCH_SETTLEMENT_ADDRESS,
    BATCH_SETTLEMENT_DOMAIN_NAME,
    BATCH_SETTLEMENT_DOMAIN_VERSION,
)
from x402.mechanisms.evm.batch_settlement.types import (
    ChannelConfig,
    is_deposit_payload,
    is_refund_payload,
    is_voucher_payload,
)

from gateway.payment.eip3009 import ADDRESS, Domain, address_of, recover_key
from gateway.payment.keccak import keccak

VOUCHER_TYPEHASH = keccak(b"Voucher(bytes32 channelId,uint128 maxClaimableAmount)")
_UINT128 = 2**128
_CHANNEL_ID = re.compile(r"0x[0-9a-fA-F]{64}")
_SIGNATURE = re.compile(r"0x[0-9a-fA-F]{130}")
_SIGNATURE_TEXT = 132  # its length: 0x + 65 bytes of hex
_DECIMAL = re.compile(r"[0-9]{1,39}")


@dataclass(frozen=True, slots=True)
class Voucher:
    """A plain voucher payload (no deposit, no refund), parsed. `config` is the payload's
    own `channelConfig`, as the SDK stores it; `config_key` its fields, hashable."""

    channel_id: str  # lower-case, as the SDK's storage keys it
    claimed_id: str  # as sent
    max_claimable: int
    signature: str  # as sent (what the SDK stores)
    config: ChannelConfig
    config_key: tuple[tuple[str, str], ...]


def _plain_parts(payload: Any) -> tuple[Mapping[str, Any], Mapping[str, Any]] | None:
    """(voucher, channelConfig) of a voucher payload that is neither deposit nor refund."""
    if not isinstance(payload, dict) or not is_voucher_payload(payload):
        return None
    if is_deposit_payload(payload) or is_refund_payload(payload):
        return None
    voucher, config = payload["voucher"], payload["channelConfig"]
    # JSON objects are dicts (an ABC check would cost two Python calls each).
    if not isinstance(voucher, dict) or not isinstance(config, dict):
        return None
    return voucher, config


def _well_formed(claimed: Any, amount: Any, signature: Any) -> bool:
    return (
        isinstance(claimed, str)
        and _CHANNEL_ID.fullmatch(claimed) is not None
        and isinstance(amount, str)
        and _DECIMAL.fullmatch(amount) is not None
        and int(amount) < _UINT128
        and isinstance(signature, str)
        and _SIGNATURE.fullmatch(signature) is not None
    )


# A channel config as parsed: the SDK's `ChannelConfig` and its fields, hashable.
Parsed = tuple[ChannelConfig, tuple[tuple[str, str], ...]]


def parse_plain(payload: Any, configs: MutableMapping[str, Parsed] | None = None) -> Voucher | None:
    """The voucher, when `payload` is a plain, well-formed one; else None (the SDK decides).
    `configs`: configs already parsed, by their `repr` (a channel's every voucher repeats
    its config; `repr` tells apart what `==` would not: 1, 1.0, True), None: parsed here."""
    parts = _plain_parts(payload)
    if parts is None:
        return None
    voucher, config = parts
    fields = voucher.get("channelId"), voucher.get("maxClaimableAmount"), voucher.get("signature")
    if not _well_formed(*fields):
        return None
    claimed, amount, signature = cast(tuple[str, str, str], fields)  # `_well_formed`: text
    text = repr(config) if configs is not None else ""
    parsed = configs.get(text) if configs is not None else None
    if parsed is None:
        parsed = parse_config(config)
        if parsed is None:
            return None
        if configs is not None:
            configs[text] = parsed
    return _voucher(claimed, int(amount), signature, parsed)


def parse_config(config: Mapping[str, Any]) -> Parsed | None:
    """A voucher payload's `channelConfig` as `parse_plain` parses it; None: it does not."""
    try:
        key = tuple(sorted((str(k), str(v)) for k, v in config.items()))
        return ChannelConfig.from_dict(dict(config)), key
    except (KeyError, TypeError, ValueError):
        return None


def plain_again(claimed: str, amount: int, signature: str, config: Parsed) -> Voucher | None:
    """`parse_plain`'s voucher, from a plain voucher payload whose type and `channelConfig`
    (`config`, parsed) are known already and whose own fields `channel_terms` has read and
    checked (the id 0x + 32 bytes of hex, the amount a uint128, the signature 0x + hex
    bytes; `voucher_again`): what `parse_plain` asks beyond those is a 65-byte signature.
    None: not one `parse_plain` would take. (Unit tests hold the two to each other.)"""
    if len(signature) != _SIGNATURE_TEXT:
        return None
    return _voucher(claimed, amount, signature, config)


def _voucher(claimed: str, amount: int, signature: str, parsed: Parsed) -> Voucher:
    return Voucher(
        channel_id=claimed.lower(),
        claimed_id=claimed,
        max_claimable=amount,
        signature=signature,
        config=parsed[0],
        config_key=parsed[1],
    )


def domain(chain_id: int) -> Domain:
    """The batch-settlement contract's EIP-712 domain on `chain_id` (hashable, cached
    separator: the EIP-3009 module's `Domain`, with the contract as `verifyingContract`)."""
    return Domain(
        BATCH_SETTLEMENT_DOMAIN_NAME,
        BATCH_SETTLEMENT_DOMAIN_VERSION,
        chain_id,
        BATCH_SETTLEMENT_ADDRESS,
    )


def digest(voucher: Voucher, on: Domain) -> bytes:
    """The EIP-712 hash of `Voucher(channelId, maxClaimableAmount)` the payer signed."""
    struct = keccak(
        VOUCHER_TYPEHASH
        + bytes.fromhex(voucher.channel_id[2:])
        + voucher.max_claimable.to_bytes(32, "big")
    )
    return keccak(b"\x19\x01" + on.separator + struct)


def signed_by_authorizer(voucher: Voucher, on: Domain) -> bool:
    """True only when the voucher is an ECDSA signature by its channel's (non-zero)
    `payerAuthorizer`. A zero authorizer (an ERC-1271 wallet: the chain decides) is never
    accepted here. (A channel's every voucher is signed by one key: its address, a keccak,
    is `address_of`'s, memoized in C.)"""
    authorizer = voucher.config.payer_authorizer
    signer = _signer(authorizer) if isinstance(authorizer, str) else None
    if signer is None:
        return False
    public = recover_key(digest(voucher, on), bytes.fromhex(voucher.signature[2:]))
    return public is not None and address_of(public) == signer


@functools.lru_cache(maxsize=4096)
def _signer(authorizer: str) -> str | None:
    """The lower-case address whose ECDSA signature `authorizer` stands for; None: not an
    address, or the zero one. Memoized, bounded: a channel's every voucher names it."""
    if not ADDRESS.fullmatch(authorizer) or int(authorizer, 16) == 0:
        return None
    return authorizer.lower()
