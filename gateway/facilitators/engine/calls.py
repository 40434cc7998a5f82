"""ABI in and out for the few contract calls the engine makes (eth-abi does the encoding).

- the token: `transferWithAuthorization` (v,r,s overload for a 65-byte signature, as the
  SDK does; the bytes overload for contract-wallet signatures), `balanceOf`,
  `authorizationState`; its `AuthorizationUsed` and `Transfer` logs.
- Multicall3 `tryAggregate(false, calls)`: per-call failure allowed, per-call (success,
  returnData) out. It is on every Multicall3 deployment (and the only entry point of the
  demo chain's stand-in), with `aggregate3`'s semantics for `allowFailure: true`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from eth_abi.abi import decode, encode
from eth_abi.exceptions import DecodingError
from eth_utils.crypto import keccak
from x402.mechanisms.evm.exact.eip3009_utils import ERC20_TRANSFER_EVENT_TOPIC

from gateway.payment.eip3009 import Authorization


def _selector(signature: str) -> bytes:
    return keccak(text=signature)[:4]


TRANSFER_VRS = _selector(
    "transferWithAuthorization(address,address,uint256,uint256,uint256,bytes32,uint8,bytes32,bytes32)"
)
TRANSFER_BYTES = _selector(
    "transferWithAuthorization(address,address,uint256,uint256,uint256,bytes32,bytes)"
)
BALANCE_OF = _selector("balanceOf(address)")
AUTHORIZATION_STATE = _selector("authorizationState(address,bytes32)")
TRY_AGGREGATE = _selector("tryAggregate(bool,(address,bytes)[])")
ERROR_STRING = _selector("Error(string)")
PANIC = _selector("Panic(uint256)")
AUTHORIZATION_USED_TOPIC = "0x" + keccak(text="AuthorizationUsed(address,bytes32)").hex()


@dataclass(frozen=True, slots=True)
class ContractCall:
    target: str  # 0x address
    data: bytes


def _address_word(address: str) -> bytes:
    return bytes(12) + bytes.fromhex(address[2:])


def _uint_word(value: int) -> bytes:
    return value.to_bytes(32, "big")


# Calls whose arguments are all static ABI words are packed directly (eth-abi costs 30 us a
# call and these run for every payment); the tests decode them with eth-abi.


def transfer_call(token: str, auth: Authorization, signature: bytes) -> ContractCall:
    """The settlement call for `auth`, `signature` being the one the token checks (an
    ERC-6492 wrapper already taken off)."""
    head = (
        _address_word(auth.payer)
        + _address_word(auth.to)
        + _uint_word(auth.value)
        + _uint_word(auth.valid_after)
        + _uint_word(auth.valid_before)
        + auth.nonce
    )
    if len(signature) == 65:
        v = signature[64]
        v = v + 27 if v < 27 else v
        return ContractCall(token, TRANSFER_VRS + head + _uint_word(v) + signature[:64])
    types = ["address", "address", "uint256", "uint256", "uint256", "bytes32", "bytes"]
    values = [auth.payer, auth.to, auth.value, auth.valid_after, auth.valid_before, auth.nonce]
    return ContractCall(token, TRANSFER_BYTES + encode(types, [*values, signature]))


def balance_of(token: str, owner: str) -> ContractCall:
    return ContractCall(token, BALANCE_OF + _address_word(owner))


def authorization_state(token: str, payer: str, nonce: bytes) -> ContractCall:
    return ContractCall(token, AUTHORIZATION_STATE + _address_word(payer) + nonce)


def try_aggregate(multicall: str, calls: Sequence[ContractCall]) -> ContractCall:
    body = encode(["bool", "(address,bytes)[]"], [False, [(c.target, c.data) for c in calls]])
    return ContractCall(multicall, TRY_AGGREGATE + body)


def decode_try_aggregate(data: bytes, count: int) -> list[tuple[bool, bytes]]:
    """Per-call (success, returnData); raises ValueError unless there are exactly `count`."""
    try:
        (results,) = decode(["(bool,bytes)[]"], data)
    except DecodingError as exc:
        raise ValueError(f"not a tryAggregate answer: {exc}") from exc
    if len(results) != count:
        raise ValueError(f"tryAggregate answered {len(results)} results for {count} calls")
    return [(bool(ok), bytes(ret)) for ok, ret in results]


def decode_uint(data: bytes) -> int:
    if len(data) < 32:
        raise ValueError("not a uint256 answer")
    return int.from_bytes(data[:32], "big")


def revert_message(data: bytes) -> str:
    """A revert's reason as text: `Error(string)`'s message, a panic code, else the hex."""
    try:
        if data[:4] == ERROR_STRING:
            (message,) = decode(["string"], data[4:])
            return str(message)
        if data[:4] == PANIC:
            (code,) = decode(["uint256"], data[4:])
            return f"panic 0x{code:x}"
    except DecodingError:
        pass
    return "0x" + data.hex() if data else "reverted without a reason"


def revert_text(message: str, data: bytes) -> str:
    """A node's revert message, with the decoded reason if the message lacks it."""
    if not data:
        return message
    decoded = revert_message(data)
    return message if decoded in message else f"{message}: {decoded}"


def _topic_address(topic: str) -> str:
    return "0x" + topic[-40:].lower()


def _event(log: Any, token: str) -> tuple[str, str, str, str] | None:
    """(topic0, topic1, topic2, data), lower-case, of a 3-topic log the token emitted."""
    if not isinstance(log, dict) or str(log.get("address", "")).lower() != token:
        return None
    topics = log.get("topics")
    if not isinstance(topics, list) or len(topics) != 3:
        return None
    t0, t1, t2 = (str(t).lower() for t in topics)
    return t0, t1, t2, str(log.get("data", "")).lower()


def authorization_used(logs: Sequence[Any], token: str, auth: Authorization) -> bool:
    """Whether these receipt logs show the token consuming exactly this authorization
    (`AuthorizationUsed(payer, nonce)`) and moving exactly its value from its payer to its
    recipient (`Transfer`)."""
    token = token.lower()
    want_value = "0x" + _uint_word(auth.value).hex()
    used = moved = False
    for log in logs:
        event = _event(log, token)
        if event is None:
            continue
        t0, t1, t2, data = event
        if t0 == AUTHORIZATION_USED_TOPIC:
            used = used or (_topic_address(t1) == auth.payer and t2 == auth.nonce_hex)
        elif t0 == ERC20_TRANSFER_EVENT_TOPIC:
            moved = moved or (
                _topic_address(t1) == auth.payer
                and _topic_address(t2) == auth.to
                and data == want_value
            )
    return used and moved
