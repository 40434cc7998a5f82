"""The money-moving terms of a `batch-settlement` payment (a channel deposit or voucher),
parsed and checked against the route's own requirement before any claim or SDK call.

A payload names its channel by `channelConfig` (payer, payerAuthorizer, receiver,
receiverAuthorizer, token, withdrawDelay, salt) and `voucher.channelId`, the EIP-712 hash of
that config on this chain: the id must be the config's, and the config must pay the route's
recipient in the route's token under the route's channel terms, else the voucher could be
for someone else's channel. Whether the voucher's cumulative amount is the next one, its
signature and the channel's balance are the SDK's server scheme's to judge (against the
channel state in the store), a deposit's transfer the facilitator's.

Identity: a voucher is one payment per (channel, cumulative amount): the SDK's client signs
each call's voucher for exactly the channel's charged total plus the price, so two requests
carrying the same pair are copies of one payment, whatever their signature bytes. A deposit
carries its first voucher, so it has the same identity as that voucher: a channel's call is
bought once, by a deposit or by a voucher. The pair is hashed into the 32-byte `nonce` slot
of `PaymentIdentity`, tagged so it can never equal an EIP-3009 or Permit2 nonce.

A cooperative refund (`type: refund`: the payer closes the channel, its voucher is for what
was already charged, and it may name a partial `amount`) charges nothing: its identity is
tagged apart from the vouchers' (its voucher's amount was bought already), and its claim is
kept only while it is in flight.
"""

from __future__ import annotations

import dataclasses
import operator
import re
import time
from dataclasses import dataclass
from typing import Any, NoReturn

from cachetools import LRUCache
from x402.mechanisms.evm.batch_settlement.errors import (
    ERR_CHANNEL_ID_MISMATCH,
    ERR_INVALID_PAYLOAD_TYPE,
    ERR_INVALID_VOUCHER_SIGNATURE,
    ERR_RECEIVER_AUTHORIZER_MISMATCH,
    ERR_RECEIVER_MISMATCH,
    ERR_TOKEN_MISMATCH,
    ERR_WITHDRAW_DELAY_MISMATCH,
)
from x402.mechanisms.evm.batch_settlement.types import ChannelConfig
from x402.mechanisms.evm.batch_settlement.utils import compute_channel_id

from gateway.config.settings import Requirement
from gateway.errors import PaymentError
from gateway.formats import ADDRESS
from gateway.payment.keccak import keccak
from gateway.payment.terms import malformed, text_field
from gateway.payment.voucher_check import Parsed, Voucher, plain_again
from gateway.payment.voucher_memo import VoucherMemo

KINDS = ("deposit", "voucher", "refund")
# How long a voucher's claim is kept: past any request in flight with it (the SDK holds a
# channel reservation 10 min at most). A copy arriving later meets the channel state instead
# (its amount is charged already: the corrective 402).
VOUCHER_CLAIM_SECONDS = 600

_BYTES32 = re.compile(r"0x[0-9a-fA-F]{64}")
_HEX = re.compile(r"0x(?:[0-9a-fA-F]{2})*")
_UINT = re.compile(r"[0-9]{1,39}")
_UINT128_MAX = 2**128 - 1
# secp256k1's order, halved: the highest `s` OpenZeppelin's ECDSA takes (a higher one is
# InvalidSignatureS), as the batch-settlement contract checks a payer authorizer's voucher.
_HALF_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141 // 2
_TAG = b"x402-gateway:batch-settlement:voucher"
_REFUND_TAG = b"x402-gateway:batch-settlement:refund"
CACHED_IDS = 4096  # channel configs whose id a `ChannelIds` keeps
# A config's every field, read at once (per voucher: `dataclasses.fields` walks the class).
_CONFIG_FIELDS = operator.attrgetter(*(f.name for f in dataclasses.fields(ChannelConfig)))


class ChannelIds:
    """The SDK's `compute_channel_id` (an EIP-712 hash through eth-account, ~260 us) once
    per channel config and network: a payer's every voucher repeats its channel's config.
    One per generation (its `Channels`); the config's fields are the key, so a config that
    differs in any byte is hashed anew."""

    def __init__(self, size: int = CACHED_IDS) -> None:
        self._ids: LRUCache[tuple[Any, ...], str] = LRUCache(size)
        self.vouchers = VoucherMemo(size)  # each channel's last accepted voucher match

    def of(self, config: ChannelConfig, network: str) -> str:
        """The lower-case 0x id of `config` on `network`."""
        key = (network, *_CONFIG_FIELDS(config))
        found = self._ids.get(key)
        if found is None:
            found = compute_channel_id(config, network).lower()
            self._ids[key] = found
        return found


@dataclass(frozen=True, slots=True)
class ChannelPayment:
    """What the gateway needs of a checked channel payment."""

    kind: str  # deposit | voucher | refund
    channel_id: str  # 0x + 64 lowercase hex
    payer: str  # lowercase 0x hex
    cumulative: int  # the voucher's maxClaimableAmount
    nonce: str  # its identity in the claim store: 0x + 64 hex
    valid_before: int  # until when its claim is kept
    # A plain voucher as the fast path parses it (`voucher_check`), when the match read it
    # already (`voucher_again`); None: the fast path parses it itself.
    voucher: Voucher | None = None


def _config(raw: dict[str, Any]) -> ChannelConfig:
    where = "payload.channelConfig"
    cfg = raw.get("channelConfig")
    for key in ("payer", "payerAuthorizer", "receiver", "receiverAuthorizer", "token"):
        text_field(cfg, key, where, ADDRESS, "a 0x address")
    text_field(cfg, "salt", where, _BYTES32, "0x + 32 bytes of hex")
    delay = cfg.get("withdrawDelay") if isinstance(cfg, dict) else None
    if (
        isinstance(delay, bool)
        or not isinstance(delay, int | str)
        or not _UINT.fullmatch(str(delay))
    ):
        malformed(f"{where}.withdrawDelay: must be a whole number of seconds")
    assert isinstance(cfg, dict)
    return ChannelConfig.from_dict(cfg)


def _voucher(raw: dict[str, Any]) -> tuple[str, int, str]:
    """(channelId as sent, maxClaimableAmount, signature) of a well-formed voucher."""
    voucher = raw.get("voucher")
    if isinstance(voucher, dict):
        # Every voucher a client sends: its three fields checked at once (`text_field`'s
        # checks, ~6 Python calls fewer); anything else below, for its own message.
        claimed, amount, signature = (
            voucher.get("channelId"),
            voucher.get("maxClaimableAmount"),
            voucher.get("signature"),
        )
        if (
            isinstance(claimed, str)
            and isinstance(amount, str)
            and isinstance(signature, str)
            and _BYTES32.fullmatch(claimed)
            and _UINT.fullmatch(amount)
            and _HEX.fullmatch(signature)
            and (cumulative := int(amount)) <= _UINT128_MAX
        ):
            return claimed, cumulative, signature
    return _voucher_refused(voucher)


def _voucher_refused(voucher: Any) -> tuple[str, int, str]:
    """`_voucher`'s field checks one by one: `MalformedPayment` naming the first that fails."""
    where = "payload.voucher"
    claimed = text_field(voucher, "channelId", where, _BYTES32, "0x + 32 bytes of hex")
    signature = text_field(voucher, "signature", where, _HEX, "0x hex bytes")
    amount = int(
        text_field(voucher, "maxClaimableAmount", where, _UINT, "a decimal integer string")
    )
    if amount > _UINT128_MAX:
        malformed(f"{where}.maxClaimableAmount: larger than a uint128")
    return claimed, amount, signature


def _refuse(message: str, reason: str) -> NoReturn:
    raise PaymentError(message, reason=reason)


def _check_config(
    req: Requirement, config: ChannelConfig, channel_id: str, ids: ChannelIds | None
) -> None:
    """The channel pays this route's recipient in its token, on its terms, and is the one
    its id names on this chain."""
    if config.receiver.lower() != req.pay_to.lower():
        _refuse(f"the channel pays {config.receiver}, not {req.pay_to}", ERR_RECEIVER_MISMATCH)
    if config.token.lower() != req.asset.lower():
        _refuse(f"the channel holds token {config.token}, not {req.asset}", ERR_TOKEN_MISMATCH)
    if config.withdraw_delay != req.extra.get("withdrawDelay"):
        _refuse(
            f"the channel's withdraw delay is {config.withdraw_delay} s, the route's "
            f"{req.extra.get('withdrawDelay')} s",
            ERR_WITHDRAW_DELAY_MISMATCH,
        )
    authorizer = req.extra.get("receiverAuthorizer")
    if isinstance(authorizer, str) and config.receiver_authorizer.lower() != authorizer.lower():
        _refuse("the channel names another receiver authorizer", ERR_RECEIVER_AUTHORIZER_MISMATCH)
    computed = ids.of(config, req.network) if ids is not None else None
    if (computed or compute_channel_id(config, req.network).lower()) != channel_id:
        _refuse("voucher.channelId is not the id of channelConfig", ERR_CHANNEL_ID_MISMATCH)


def claimable(signature: str, config: ChannelConfig | None) -> bool:
    """Whether the contract can take `signature` when the voucher is claimed (or refunded)
    on chain. With a payer authorizer it checks `ECDSA.tryRecover`: 65 bytes, `v` 27 or 28,
    a low `s`. Off chain, the SDK's check and the fast path also recover a `v` of 0/1 and
    the SDK a high `s` to the same signer: such a voucher would be served now and never
    claimed. Without one (`config` says so) the payer's wallet decides on chain, as the
    facilitator's strict check does; `config` None: judged as with an authorizer."""
    if config is not None and int(config.payer_authorizer, 16) == 0:
        return True
    if len(signature) != 132:  # 0x + 65 bytes
        return False
    return signature[130:] in ("1b", "1B", "1c", "1C") and 0 < int(signature[66:130], 16) <= _HALF_N


def voucher_nonce(channel_id: str, cumulative: int, refund: int | None = None) -> str:
    """The identity of the voucher (channel, cumulative amount) as a 32-byte hex nonce; of a
    refund: (channel, its voucher's amount, the amount refunded; 0 for all of it)."""
    body = bytes.fromhex(channel_id[2:]) + cumulative.to_bytes(16, "big")
    if refund is None:
        return "0x" + keccak(_TAG + body).hex()
    return "0x" + keccak(_REFUND_TAG + body + refund.to_bytes(16, "big")).hex()


def charged_voucher(raw: Any) -> tuple[str, str] | None:
    """(channel id, cumulative amount) of a matched deposit or voucher, for its payment
    record (reconciled against the channel state: gateway/payment/recovery.py); None for a
    refund (it charges nothing) or a payload that is not a channel's."""
    if not isinstance(raw, dict) or raw.get("type") not in ("deposit", "voucher"):
        return None
    claimed, cumulative, _ = _voucher(raw)
    return claimed.lower(), str(cumulative)


def is_refund(payload: dict[str, Any]) -> bool:
    """A cooperative refund: it charges nothing, and the gateway answers it itself."""
    return payload.get("type") == "refund"


def _refund_amount(raw: dict[str, Any]) -> int:
    if raw.get("amount") is None:
        return 0  # everything left in the channel
    amount = int(text_field(raw, "amount", "payload", _UINT, "a decimal integer string"))
    if amount > _UINT128_MAX:
        malformed("payload.amount: larger than a uint128")
    return amount


def channel_payment(
    req: Requirement, raw: dict[str, Any], now: float | None = None, ids: ChannelIds | None = None
) -> ChannelPayment:
    """The checked terms of a `batch-settlement` payload paying `req`; `MalformedPayment`
    (400) when it is not shaped as one, `PaymentError` (402) when it pays something else.
    `ids`: the channel ids already computed (None: computed here)."""
    kind = raw.get("type")
    if kind not in KINDS:
        shown = kind[:20] if isinstance(kind, str) else type(kind).__name__
        _refuse(
            f"payload type {shown!r} is not taken here (deposit, voucher or refund)",
            ERR_INVALID_PAYLOAD_TYPE,
        )
    config = _config(raw)
    claimed, cumulative, signature = _voucher(raw)
    channel_id = claimed.lower()
    if kind == "deposit":
        deposit = raw.get("deposit")
        text_field(deposit, "amount", "payload.deposit", _UINT, "a decimal integer string")
        if not isinstance(deposit, dict) or not isinstance(deposit.get("authorization"), dict):
            malformed("payload.deposit.authorization: missing")
    refund = _refund_amount(raw) if kind == "refund" else None
    _check_config(req, config, channel_id, ids)
    if not claimable(signature, config):
        _refuse("the voucher's signature is not one the chain takes", ERR_INVALID_VOUCHER_SIGNATURE)
    moment = int(time.time() if now is None else now)
    return ChannelPayment(
        kind=str(kind),
        channel_id=channel_id,
        payer=config.payer.lower(),
        cumulative=cumulative,
        nonce=voucher_nonce(channel_id, cumulative, refund),
        # a refund's claim lasts while it is in flight: a later one is a new refund
        valid_before=moment + (0 if refund is not None else VOUCHER_CLAIM_SECONDS),
    )


def voucher_again(
    raw: dict[str, Any],
    channel_id: str,
    payer: str,
    now: float | None = None,
    config: Parsed | None = None,
) -> ChannelPayment | None:
    """The checked terms of a plain voucher whose type, config and channel id the full
    `channel_payment` has accepted for this requirement already (`voucher_memo`): only its
    own fields are read (and refused as there when malformed). None: not that channel.
    `config`: that channel's config as the fast path parses it, to carry the voucher
    parsed (`ChannelPayment.voucher`)."""
    claimed, cumulative, signature = _voucher(raw)
    if claimed.lower() != channel_id or not claimable(signature, config and config[0]):
        return None  # not that channel, or the full match's refusal
    return ChannelPayment(
        kind="voucher",
        channel_id=channel_id,
        payer=payer,
        cumulative=cumulative,
        nonce=voucher_nonce(channel_id, cumulative),
        valid_before=int(time.time() if now is None else now) + VOUCHER_CLAIM_SECONDS,
        voucher=None if config is None else plain_again(claimed, cumulative, signature, config),
    )
